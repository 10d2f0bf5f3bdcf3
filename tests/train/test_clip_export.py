"""The ecosystem opens a curate CLIP checkpoint: `open_clip.create_model_and_transforms(model,
pretrained=last.pt)` (a weights-only load) builds the trained model, weights and features alike."""

import io

import open_clip
import torch
from PIL import Image

from curate.models.clip import MODEL_CONFIGS, load_checkpoint
from tests.train.shard_fixtures import write_shards
from train.clip.config import ClipTrainConfig
from train.clip.train import train_clip


def test_open_clip_loads_a_trained_checkpoint_with_pretrained(pool_table, tmp_path):
    data = write_shards(tmp_path / "data", pool_table.slice(0, 64).select(["uid", "url", "text", "image"]), 16)
    config = ClipTrainConfig(model="clip-tiny", batch_size=16, samples_seen=32, warmup_steps=1, shuffle_block=16,
                             data=str(data))
    train_clip(config, tmp_path / "run", progress=False)
    checkpoint = tmp_path / "run" / "last.pt"
    open_clip.add_model_config(MODEL_CONFIGS)  # clip-tiny is this project's config
    model, _, preprocess = open_clip.create_model_and_transforms("clip-tiny", pretrained=str(checkpoint))
    ours, state = load_checkpoint(checkpoint)
    assert state["step"] == 2
    theirs, trained = model.state_dict(), ours.model.state_dict()
    assert theirs.keys() == trained.keys() and all(torch.equal(theirs[k], trained[k]) for k in theirs)
    fresh = open_clip.create_model("clip-tiny").state_dict()
    assert not all(torch.equal(fresh[k], trained[k]) for k in fresh)  # trained weights, not an initialisation
    image = preprocess(Image.open(io.BytesIO(pool_table["image"][0].as_py())).convert("RGB"))[None]
    with torch.no_grad():
        assert torch.equal(model.eval().encode_image(image), ours.model.eval().encode_image(image))
