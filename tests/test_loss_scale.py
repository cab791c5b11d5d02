"""Per-category loss weight (ED2 loss_scale.txt, OneTrainer loss_weight), apart from sampling."""

from __future__ import annotations

import json
import tarfile
from types import SimpleNamespace

import pytest
import torch

from ymn.data.loss_scales import (
    category_loss_scale,
    check_loss_scale_tree,
    loss_scale_meta,
    read_loss_scale_txt,
)
from ymn.data.tokenizer import tokenize
from ymn.model.loss_scale import sample_loss_scales, weighted_mean
from ymn.model.module import DiffusionModule


class Recorder:
    """What weighted_mean needs from the LightningModule: trainer.datamodule and log()."""

    def __init__(self, tree=None):
        self.trainer = SimpleNamespace(datamodule=SimpleNamespace(loss_scale=tree or {}))
        self.logged: dict[str, float] = {}

    def log(self, name, value, **_):
        self.logged[name] = float(value)


def test_loss_scale_txt_is_read_and_checked(tmp_path):
    assert read_loss_scale_txt(tmp_path) is None and loss_scale_meta(tmp_path) == {}
    (tmp_path / "loss_scale.txt").write_text("0.5\n")
    assert loss_scale_meta(tmp_path) == {"loss_scale": 0.5}
    (tmp_path / "loss_scale.txt").write_text("lots")
    with pytest.raises(ValueError, match="loss_scale.txt"):
        read_loss_scale_txt(tmp_path)


def test_config_tree_deepest_named_folder_wins_over_the_shard_value():
    tree = {"regularization": 0.5, "regularization/hands": 2.0}
    assert category_loss_scale("regularization/hands/left", tree) == 2.0
    assert category_loss_scale("regularization/artists", tree) == 0.5
    assert category_loss_scale("fanart", tree) is None
    metas = [
        {"category": "regularization/hands"},
        {"category": "fanart", "loss_scale": 3.0},
        {"category": "screenshots"},
    ]
    assert sample_loss_scales(metas, tree) == [2.0, 3.0, 1.0]
    assert sample_loss_scales([{"category": "a"}, {"category": "b", "loss_scale": 1}]) is None
    with pytest.raises(ValueError, match="data.loss_scale.hands"):
        check_loss_scale_tree({"hands": -1})


def test_default_weight_1_is_todays_mean_bit_for_bit():
    per_sample = torch.rand(4, dtype=torch.float32)
    metas = [{"category": "fanart"}] * 4
    recorder = Recorder()
    out = weighted_mean(recorder, {"meta": metas}, per_sample)
    assert torch.equal(out, per_sample.mean()) and recorder.logged == {}
    assert torch.equal(weighted_mean(recorder, {}, per_sample), per_sample.mean())


def test_weights_are_applied_and_logged_per_category():
    per_sample = torch.tensor([1.0, 2.0, 3.0, 4.0])
    metas = [{"category": "hands/a"}, {"category": "hands/b"}, {"category": "fanart"}, {}]
    recorder = Recorder({"hands": 0.0, "fanart": 2.0})
    out = weighted_mean(recorder, {"meta": metas}, per_sample)
    assert out.item() == pytest.approx((0 + 0 + 6 + 4) / 4)
    assert recorder.logged == {
        "train/loss_scale": pytest.approx(0.75),
        "train/loss/hands": 0.0,
        "train/loss/fanart": 6.0,
        "train/loss/root": 4.0,
    }


def test_weight_0_gives_zero_gradient_from_its_samples(tiny_components):
    module = DiffusionModule(tiny_components, torch.optim.AdamW)
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    ids = tokenize(module.tokenizer, ["1person, fhml fvmd", "2people, mountain"])
    steps = torch.tensor([10, 900])
    params = module.trainable_parameters()

    def grads(metas, rows=slice(None)) -> list[torch.Tensor]:
        module.zero_grad()
        per_sample = module.diffusion_loss(latents[rows], ids[rows], noise[rows], steps[rows])
        weighted_mean(Recorder({"hands": 0.0}), {"meta": metas}, per_sample).backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    both_zero = grads([{"category": "hands"}, {"category": "hands/x"}])
    assert all(torch.count_nonzero(g) == 0 for g in both_zero)
    mixed = grads([{"category": "hands"}, {"category": "fanart"}])
    alone = grads([{"category": "fanart"}], slice(1, 2))  # sample 2 alone, mean over 1
    assert all(
        torch.allclose(m * 2, a, rtol=1e-4, atol=1e-5) for m, a in zip(mixed, alone, strict=True)
    )
    assert any(torch.count_nonzero(a) for a in alone)


def test_pack_carries_loss_scale_txt_into_the_shards(tmp_path):
    from ymn.data.pack import pack_folder
    from ymn.data.synthetic import generate_dataset

    root = tmp_path / "images"
    generate_dataset(root, n=12, seed=0, size=64)
    folders = sorted({p.parent for p in root.rglob("*.png")})
    (folders[0] / "loss_scale.txt").write_text("0.25")
    pack_folder(root, tmp_path / "shards", progress=False)
    scales = {}
    for shard in sorted((tmp_path / "shards").glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    scales[meta["category"]] = meta.get("loss_scale")
    first = folders[0].relative_to(root).as_posix()
    assert scales[first] == 0.25
    assert all(value is None for category, value in scales.items() if category != first)


def test_the_data_config_carries_the_loss_scale_tree_to_the_data_module():
    from hydra import compose, initialize_config_dir
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from ymn.paths import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["data.loss_scale={hands:2}", "paths.run_dir=unused"])
        bad = compose("config", overrides=["++data.loss_scale.hands=-1", "paths.run_dir=unused"])
    assert instantiate(cfg.data).loss_scale == {"hands": 2.0}
    with pytest.raises((ValueError, InstantiationException), match="data.loss_scale.hands"):
        instantiate(bad.data)
