"""trainer=ddp: two CPU processes (gloo) through ymn-train; ranks draw disjoint samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from lightning import Callback, LightningModule, Trainer

from tests.conftest import run_training, small_train_command
from tests.test_resume import SHORT_EPOCHS, KillAt, assert_same_training_state, load
from ymn.paths import CONFIG_DIR

REPO = Path(__file__).resolve().parent.parent


class RecordKeys(Callback):
    """Test-only: write the sample keys each rank trained on to out_dir/keys_rank<R>.json."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.keys: list[str] = []
        self.epochs: list[int] = []  # the epoch of each batch
        self.by_epoch: dict[str, list[str]] = {}

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.keys.extend(batch.get("keys", []))
        self.epochs.append(trainer.current_epoch)
        self.by_epoch.setdefault(str(trainer.current_epoch), []).extend(batch.get("keys", []))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        info = {"rank": trainer.global_rank, "world": trainer.world_size, "keys": self.keys}
        info.update(epochs=self.epochs, by_epoch=self.by_epoch)
        (self.out_dir / f"keys_rank{trainer.global_rank}.json").write_text(json.dumps(info))


def test_ddp_config_parses() -> None:
    """The DDP trainer and the SLURM launcher files are valid YAML with the documented keys."""
    ddp = yaml.safe_load((CONFIG_DIR / "trainer/ddp.yaml").read_text())
    assert ddp["strategy"]["_target_"].endswith("DDPStrategy")
    assert ddp["use_distributed_sampler"] is False
    slurm = yaml.safe_load((CONFIG_DIR / "hydra/launcher/submitit_slurm.yaml").read_text())
    assert slurm["_target_"].endswith("SlurmLauncher")
    for key in ("partition", "gpus_per_node", "tasks_per_node", "timeout_min", "nodes"):
        assert key in slurm


def test_ddp_composes() -> None:
    from hydra import compose, initialize_config_dir

    from ymn.train import CONFIG_DIR

    overrides = ["experiment=smoke", "trainer=ddp", "trainer.devices=2", "trainer.num_nodes=1"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    assert cfg.trainer.strategy._target_ == "lightning.pytorch.strategies.DDPStrategy"
    assert cfg.trainer.max_steps == 5  # the experiment still applies on top of trainer=ddp
    assert cfg.trainer.devices == 2


def test_two_cpu_ranks_train_and_draw_disjoint_keys(tmp_path: Path) -> None:
    run_dir, keys_dir = tmp_path / "run", tmp_path / "keys"
    env = {
        **os.environ,
        "YMN_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    cmd = [
        str(Path(sys.executable).with_name("ymn-train")),
        "experiment=smoke",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "probes=off",
        "~callbacks.samples",
        "logger=csv",
        "callbacks.checkpoint=null",
        "+trainer.enable_checkpointing=false",
        "data.shuffle_buffer=16",
        "+callbacks.record_keys._target_=tests.test_ddp.RecordKeys",
        f"+callbacks.record_keys.out_dir={keys_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((keys_dir / f"keys_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    keys0, keys1 = set(ranks[0]["keys"]), set(ranks[1]["keys"])
    assert len(ranks[0]["keys"]) == len(ranks[1]["keys"]) == 3 * 4  # 3 steps × batch 4 each
    assert keys0 and keys1 and not keys0 & keys1, "a sample was drawn by both ranks"
    exports = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("export"))
    assert exports == ["export"] and (run_dir / "export" / "model.safetensors").is_file()
    console = done.stdout + done.stderr
    assert console.count("Run directory:") == 2  # both ranks log to this console ...
    assert console.count("Exported model:") == 1  # ... and only rank 0 exports
    assert (run_dir / "export" / "diffusers" / "model_index.json").is_file()


def test_uneven_shards_two_epochs_then_kill_and_exact_resume(tmp_path: Path, tiny_model) -> None:
    """3 shards over 2 ranks (one rank holds half the other's data): both ranks run the same
    5 batches per epoch, two full epochs end with exit 0, and a run killed in the last batches
    of epoch 0 resumes across the epoch boundary to the uninterrupted end state."""
    keys_dir = tmp_path / "keys"
    common = (
        *SHORT_EPOCHS,
        "data.prepare.pack.shard_size=8",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.max_steps=-1",
        "trainer.max_epochs=2",
        "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.checkpoint.keep_last=2",  # the newest two: last and the step a test loads
    )
    args = partial(small_train_command, tmp_path, tiny_model, synth_n=24)
    record = ("+callbacks.record_keys._target_=tests.test_ddp.RecordKeys",
              f"+callbacks.record_keys.out_dir={keys_dir}")  # fmt: skip
    run_training(args(tmp_path / "A", *common, *record), timeout=600)
    assert len(list((tmp_path / "data" / "smoke" / "shards").glob("*.tar"))) == 3
    ranks = [json.loads((keys_dir / f"keys_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["epochs"] for r in ranks] == [[0] * 5 + [1] * 5] * 2
    for epoch in ("0", "1"):
        keys = [set(r["by_epoch"][epoch]) for r in ranks]
        assert keys[0] and keys[1] and not keys[0] & keys[1], "a sample was drawn by both ranks"
    uninterrupted = load(tmp_path / "A" / "checkpoints" / "step0000010.ckpt")

    killed = run_training(
        args(tmp_path / "B", *common, *KillAt.overrides(4)), ok=False, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_training(args(tmp_path / "B", *common, "ckpt_path=last"), timeout=600)
    assert_same_training_state(
        uninterrupted, load(tmp_path / "B" / "checkpoints" / "step0000010.ckpt")
    )
