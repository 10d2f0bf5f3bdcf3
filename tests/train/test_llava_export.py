"""A LLaVA checkpoint exported as a Hugging Face folder: transformers loads the LM and its
tokenizer from it and gives our logits, and the projector and vision tower beside it, put
together as llava.json says, give our logits on real images too."""

import json

import open_clip
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from curate.cli import main
from curate.models.clip import MODEL_CONFIGS
from curate.models.llava.config import CAPTION_PROMPT
from curate.models.llava.model import load_checkpoint, pixel_shuffle


def test_an_exported_llava_loads_in_transformers_with_our_logits(llava_checkpoint, pool_images, tmp_path):
    out = tmp_path / "hf"
    result = CliRunner().invoke(main, ["train", "export-llava", str(llava_checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "llava.json",
                                                      "model.safetensors", "projector.safetensors", "tokenizer.json",
                                                      "tokenizer_config.json", "vision.safetensors"]
    ours, _ = load_checkpoint(llava_checkpoint)
    ours.eval()
    lm = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = f"<im_start>user\n{CAPTION_PROMPT}<im_end>\n<im_start>assistant\n"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert ids[0].tolist() == ours.tokenizer(prompt).input_ids
    assert (ids == tokenizer.convert_tokens_to_ids("<im_end>")).any()
    with torch.no_grad():
        assert torch.equal(lm(ids).logits, ours.lm(ids).logits)

    manifest = json.loads((out / "llava.json").read_text())
    open_clip.add_model_config(MODEL_CONFIGS)  # clip-tiny is this project's config
    visual = open_clip.create_model(manifest["vision"]["open_clip_model"]).visual
    visual.prune_intermediate_layers([manifest["vision"]["layer"]])
    visual.load_state_dict(load_file(out / "vision.safetensors"))
    visual.eval()
    projection = manifest["projector"]
    width = projection["out_features"]
    projector = torch.nn.Sequential(torch.nn.Linear(projection["in_features"], width), torch.nn.GELU(),
                                    torch.nn.Linear(width, width))
    projector.load_state_dict(load_file(out / "projector.safetensors"))
    fmt = ours.input_format()
    turn = [{"from": "human", "value": f"<image>\n{CAPTION_PROMPT}"}]
    batch = fmt.collate([fmt.encode(turn, [image], generation=True) for image in pool_images[:2]])
    with torch.no_grad():
        expected = ours(batch).logits
        patches = visual.forward_intermediates(batch["pixel_values"], indices=[manifest["vision"]["layer"]],
                                               intermediates_only=True, output_fmt="NLC")["image_intermediates"][0]
        features = projector(pixel_shuffle(patches, projection["pixel_shuffle"])).reshape(-1, width)
        embeds = lm.get_input_embeddings()(batch["input_ids"])
        slots = batch["input_ids"] == manifest["tokens"]["image_token_id"]
        assert int(slots.sum()) == len(features) == batch["pixel_values"].shape[0] * manifest["image_tokens_per_view"]
        embeds[slots] = features
        got = lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"]).logits
    assert torch.equal(got, expected)
    text_only = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits.detach()
    assert not torch.allclose(got, text_only, atol=1e-3)  # the images count


def test_export_refuses_a_folder_that_holds_files(llava_checkpoint, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["train", "export-llava", str(llava_checkpoint),
                                       "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "exists and is not an empty folder" in result.output
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
