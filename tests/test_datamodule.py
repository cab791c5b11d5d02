"""YmnDataModule: loaders, tokenizer hand-off, synthetic prepare, Hydra config, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from test_stream import make_tree

from ymn.data.captions import CaptionConfig
from ymn.data.datamodule import YmnDataModule
from ymn.data.decode import ShardSetupError
from ymn.data.pack import pack_folder
from ymn.paths import CONFIG_DIR

CONF = CONFIG_DIR


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "root", {"a": 10, "b": 8}, {"a": 2})
    out = tmp_path / "shards"
    pack_folder(root, out, shard_size=5, progress=False)
    return out


def module(shards: Path, **kw) -> YmnDataModule:
    args = dict(resolution=64, batch_size=2, val_fraction=0.2, seed=1, shuffle_buffer=8)
    args.update(kw)
    return YmnDataModule(str(shards), **args)


def test_loaders_give_bucketed_batches_with_token_ids(shards: Path) -> None:
    from ymn.data.tokenizer import load_clip_tokenizer

    dm = module(
        shards, caption={"dropout": 0.0, "_target_": "ignored"}, tokenizer=load_clip_tokenizer()
    )
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert train
    for batch in train:
        assert batch["input_ids"].shape == (2, 77) and batch["input_ids"].dtype == torch.long
        assert batch["pixel_values"].shape[0] == 2 and " " not in batch["captions"]
        dm.on_before_batch_transfer(batch, 0)
        assert "skipped" not in batch
    assert dm.skipped_total == {}
    val = list(dm.val_dataloader())
    val_keys = {k for b in val for k in b["keys"]}
    assert val_keys and not val_keys & {k for b in train for k in b["keys"]}
    assert all(b["input_ids"].shape[1] == 77 for b in val)


def batches(dm: YmnDataModule) -> list[tuple[int, list[str], list[str]]]:
    return [(b["slot"], b["keys"], b["captions"]) for b in dm.train_dataloader()]


def test_epochs_differ_and_state_records_the_stream_settings(shards: Path) -> None:
    dm = module(shards)
    loader = dm.train_dataloader()
    epoch0 = [b["keys"] for b in loader]
    assert dm.train_stream.epoch == 0
    dm._epoch = 1  # what trainer.current_epoch says during the second epoch
    assert [b["keys"] for b in loader] != epoch0
    state = {"batches_consumed": 0, "num_workers": 0, "batch_size": 2, "world_size": 1}
    assert module(shards).state_dict() == {"epoch": 0, **state}


@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_resume_after_any_batch_continues_the_exact_order(shards: Path, workers: int) -> None:
    """Every worker yields the same count, so a resume after k batches (the last ones of the
    epoch included) replays batches k.. of the uninterrupted epoch, in order."""
    dm = module(shards, num_workers=workers)
    full = batches(dm)
    slots = max(workers, 1)
    assert len(full) == slots * dm.train_stream.batches_per_slot(slots)
    for consumed in range(len(full) + 1):
        resumed = module(shards, num_workers=workers)
        resumed.load_state_dict({"epoch": 0, "batches_consumed": consumed})
        assert batches(resumed) == full[consumed:], f"resumed after {consumed}"


@pytest.mark.parametrize(
    ("key", "saved", "setting"),
    [
        ("num_workers", 2, "data.num_workers=2"),
        ("batch_size", 4, "data.batch_size=4"),
        ("world_size", 2, r"the world size \(trainer.devices × trainer.num_nodes\)=2"),
    ],
)
def test_resume_with_changed_stream_settings_is_refused(
    shards: Path, key: str, saved: int, setting: str
) -> None:
    state = {**module(shards).state_dict(), "batches_consumed": 3, key: saved}
    with pytest.raises(ValueError, match=f"saved with {setting}, this run has .*set it back"):
        module(shards).load_state_dict(state)
    module(shards).load_state_dict({"epoch": 0, "batches_consumed": 3})  # older checkpoints


def test_missing_shards_fail_at_setup_naming_the_pattern(tmp_path: Path) -> None:
    dm = module(tmp_path / "none" / "shard-{000000..000002}.tar")
    with pytest.raises(ShardSetupError, match="ymn-pack") as err:
        dm.setup("fit")
    assert "shard-{000000..000002}.tar" in str(err.value)


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _synthetic_40(data_dir: Path, *extra: str):
    """`data=synthetic` shrunk to 40 images of 64 px in `data_dir`."""
    return _compose(
        [
            "data=synthetic",
            f"paths.data_dir={data_dir}",
            "paths.run_dir=/tmp/ymn-compose",
            "data.prepare.synth.n=40",
            "data.prepare.synth.size=64",
            *extra,
        ]
    )


def test_synthetic_config_prepares_and_packs(tmp_path: Path) -> None:
    cfg = _synthetic_40(tmp_path, "data.resolution=64", "data.num_workers=0")
    dm = instantiate(cfg.data)
    assert isinstance(dm, YmnDataModule) and isinstance(dm.config.caption, CaptionConfig)
    assert dm.config.seed == cfg.seed
    dm.prepare_data()
    manifest = json.loads((tmp_path / "synthetic" / "shards" / "manifest.json").read_text())
    assert manifest["total_images"] + len(manifest["skipped"]) == 40
    tops: dict[str, float] = {}
    for category, entry in manifest["categories"].items():
        top = category.split("/")[0]
        tops[top] = tops.get(top, 0.0) + entry["prob"]
    for top, target in cfg.data.prepare.tree.items():
        if top in tops:  # a 40-image draw may lack a branch; present ones get their target
            assert tops[top] == pytest.approx(target / sum(
                v for k, v in cfg.data.prepare.tree.items() if k in tops
            ), abs=1e-6)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape[0] == cfg.data.batch_size


def test_face_cell_layout_shares_each_folder_equally_among_its_cells(tmp_path: Path) -> None:
    cfg = _synthetic_40(tmp_path, "data.prepare.layout=face_cell")
    instantiate(cfg.data).prepare_data()
    assert (tmp_path / "synthetic" / "images_by_face_cell" / "cell_layout.json").is_file()
    manifest = json.loads((tmp_path / "synthetic" / "shards" / "manifest.json").read_text())
    assert manifest["total_images"] + len(manifest["skipped"]) == 40
    by_folder: dict[str, list[float]] = {}
    for category, entry in manifest["categories"].items():
        folder, cell = category.rsplit("/", 1)
        assert cell == "noface" or cell.startswith("cell_r")
        by_folder.setdefault(folder, []).append(entry["prob"])
    assert any(len(probs) > 1 for probs in by_folder.values())
    for probs in by_folder.values():
        assert probs == pytest.approx([probs[0]] * len(probs))


@pytest.mark.parametrize("name", ["yamanosusume", "folder"])
def test_user_data_configs_compose(name: str) -> None:
    cfg = _compose([f"data={name}", "data.shards=/somewhere/shards", "paths.run_dir=/tmp/x"])
    assert cfg.data._target_ == "ymn.data.datamodule.YmnDataModule"
    assert cfg.data.shards == "/somewhere/shards" and cfg.data.multiply_mode == "ed1"
    if name == "yamanosusume":
        tree = cfg.data.prepare.tree
        assert tree["regularization"] == 0.5 and tree["regularization/hands"] == 0.05


def test_pipe_shards_set_up_and_train(shards: Path) -> None:
    """`data.shards` as a `pipe:` brace pattern: the manifest read beside it, batches as from
    the folder, no local manifest path (nothing to prepare or copy), no local-tar checks."""
    dm = module(f"pipe:cat {shards}/shard-{{000000..000003}}.tar")
    assert dm.manifest_path is None
    dm.prepare_data()
    assert batches(dm) == batches(module(shards)) and dm.preflight is None


def test_the_data_module_logs_skips_when_their_total_changes(shards: Path) -> None:
    """Skip counters come off each batch (workers' only channel back); the data module itself
    logs `data/skipped`, once per change, at the trainer's step."""
    from types import SimpleNamespace

    logged: list[tuple[dict, int]] = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((metrics, step)))
    dm = module(shards)
    dm.trainer = SimpleNamespace(loggers=[logger], global_step=7, current_epoch=0)
    for slot, counts in [
        (0, {"bad_image": 1}),
        (1, {}),
        (0, {"bad_image": 1}),
        (1, {"bad_json": 2}),
    ]:
        batch = dm.on_before_batch_transfer({"skipped": counts, "slot": slot, "keys": []}, 0)
        assert "skipped" not in batch and "slot" not in batch
    assert logged == [({"data/skipped": 1.0}, 7), ({"data/skipped": 3.0}, 7)]
    assert dm.skipped_total == {"bad_image": 1, "bad_json": 2}


def test_setup_warns_about_shards_packed_folder_by_folder(tmp_path: Path, caplog) -> None:
    root = make_tree(tmp_path / "root", {"a": 10, "b": 8}, {"a": 2})
    by_folder, permuted = tmp_path / "by_folder", tmp_path / "permuted"
    pack_folder(root, by_folder, shard_size=5, progress=False, shuffle_seed=None)
    pack_folder(root, permuted, shard_size=5, progress=False)
    with caplog.at_level("WARNING", logger="ymn.data.datamodule"):
        module(permuted).setup()
        assert "folder by folder" not in caplog.text
        module(by_folder).setup()
    assert "shards packed folder by folder" in caplog.text and "--force" in caplog.text


def test_a_manifest_without_pack_options_warns_instead_of_failing(tmp_path: Path, caplog) -> None:
    """Hand-written or older manifests may lack `weights`: the order is then unknown."""
    out = tmp_path / "shards"
    pack_folder(make_tree(tmp_path / "root", {"a": 10, "b": 8}, {"a": 2}), out, shard_size=5,
                progress=False)  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["weights"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="ymn.data.datamodule"):
        module(out).setup()
    assert "shards packed folder by folder" in caplog.text
