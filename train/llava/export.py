"""A LLaVA checkpoint as a Hugging Face folder (`curate train export-llava`).

The folder is the language model as `save_pretrained` writes it (config.json, model.safetensors,
generation_config.json) with its tokenizer (the format's special tokens included), so
`AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load it
as any causal LM. Beside it: `projector.safetensors` (the MLP as a torch Sequential's state
dict: 0 Linear, 1 GELU, 2 Linear, applied after the pixel shuffle), `vision.safetensors` (the
open_clip tower's `visual` state dict, cut after block `vision_layer` as the model runs it) and
`llava.json`, which says how the three fit together: image token, tokens per view, the tower's
layer, size, mean and std, the input format's settings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file

from curate.io.writers import atomic
from curate.models.llava.model import load_checkpoint
from curate.models.llava.tokens import GLOBAL_IMAGE, IM_END, IM_START, IMAGE

MANIFEST = "llava.json"
PROJECTOR, VISION = "projector.safetensors", "vision.safetensors"


def export_llava(checkpoint: str | Path, out: str | Path) -> dict:
    """Write the model of LLaVA `checkpoint` to the folder `out` (created; refused when it holds
    anything) as described above; returns the contents of llava.json."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder: choose another --out")
    model, rest = load_checkpoint(checkpoint)
    fmt, mlp = model.input_format(), model.projector.mlp
    manifest = {
        "format": "curate-llava",
        "checkpoint": str(checkpoint),
        "step": rest.get("step"),
        "language_model": ".",
        "projector": {"file": PROJECTOR, "layers": ["Linear", "GELU", "Linear"],
                      "pixel_shuffle": model.projector.shuffle, "in_features": mlp[0].in_features,
                      "out_features": mlp[2].out_features},
        "vision": {"file": VISION, "open_clip_model": model.spec["vision_model"], "layer": model.vision.index,
                   "blocks_kept": model.vision.index + 1, "output": "patch tokens of that block, no CLS (NLC)",
                   "image_size": model.vision.image_size, "mean": list(model.vision.mean),
                   "std": list(model.vision.std)},
        "tokens": {"image": IMAGE, "image_token_id": model.image_token_id, "global_image": GLOBAL_IMAGE,
                   "turn_start": IM_START, "turn_end": IM_END, "pad": fmt.tokenizer.convert_ids_to_tokens(fmt.pad_id)},
        "image_tokens_per_view": model.tokens_per_region,
        "prefix_lm": model.prefix_lm,
        "model": model.spec["model"],
    }
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    model.lm.save_pretrained(work)
    model.tokenizer.save_pretrained(work)
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, work / PROJECTOR)
    save_file({k: v.contiguous() for k, v in model.vision.visual.state_dict().items()}, work / VISION)
    with atomic(work / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        out.rmdir()
    work.rename(out)  # the folder appears whole or not at all
    return manifest
