"""Exact resume: a run SIGKILLed at an arbitrary step and resumed with `ckpt_path=last` ends
bitwise identical to the same run uninterrupted (weights and optimizer state); checkpoints are
atomic; SIGTERM saves a checkpoint and exits cleanly."""

from __future__ import annotations

import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import AtStep, run_training, small_train_command, start_training, wait_for

# 60 synthetic images: enough batches for a kill at an arbitrary step.
train_args = partial(small_train_command, synth_n=60)

# 24 images, one copy each: an epoch of 10 batches of 2 (8 with 4 workers: 2 per worker).
SHORT_EPOCHS = ("data.prepare.tree=null", "data.prepare.pack.max_multiply=1")
short_train_args = partial(small_train_command, synth_n=24)
EPOCH_BATCHES = {0: 10, 1: 10, 2: 10, 4: 8}


class KillAt(AtStep):
    """SIGKILL this process when `step` steps are done (their checkpoint written), as a
    preempted job dies: no exception handler, no final save."""

    def act(self, batch: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a, b, where: str = "") -> None:
    """Every tensor in two nested structures is bitwise equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("workers", [2])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, tiny_model, workers):
    """A SIGKILL wherever the run is after its second checkpoint; the resume crosses the end of
    the first epoch."""
    steps = EPOCH_BATCHES[workers] + 2
    common = (
        *SHORT_EPOCHS,
        f"trainer.max_steps={steps}",
        "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.checkpoint.keep_last=2",  # the newest two: last and the step a test loads
        f"data.num_workers={workers}",
    )
    run_training(short_train_args(tmp_path, tiny_model, tmp_path / "A", *common))
    uninterrupted = load(tmp_path / "A" / "checkpoints" / f"step{steps:07d}.ckpt")

    run_b = tmp_path / "B"
    proc = start_training(
        short_train_args(tmp_path, tiny_model, run_b, *common), tmp_path / "B.log"
    )
    try:
        wait_for(run_b / "checkpoints" / "step0000002.ckpt", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = os.path.realpath(run_b / "checkpoints" / "last.ckpt")
    assert not killed_at.endswith(f"step{steps:07d}.ckpt"), "killed too late to test resume"

    resumed = run_training(short_train_args(tmp_path, tiny_model, run_b, *common, "ckpt_path=last"))
    assert "Resuming from" in resumed.stdout + resumed.stderr
    final = load(run_b / "checkpoints" / f"step{steps:07d}.ckpt")
    assert final["global_step"] == uninterrupted["global_step"] == steps
    assert_same_tensors(uninterrupted["state_dict"], final["state_dict"], "state_dict")
    assert_same_tensors(
        uninterrupted["optimizer_states"], final["optimizer_states"], "optimizer_states"
    )


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert_same_tensors(a["state_dict"], b["state_dict"], "state_dict")
    assert_same_tensors(a["optimizer_states"], b["optimizer_states"], "optimizer_states")


@pytest.mark.parametrize(
    ("workers", "kills"),
    # kill steps relative to the end of the first epoch; not at the epoch end with 4 workers:
    # Lightning defers the save of an epoch's last step to a validation that runs only at 10
    [(0, (-1, 0)), (4, (-2, 1))],
)
def test_killed_twice_near_epoch_ends_resumes_bitwise_identical(
    tmp_path, tiny_model, workers, kills
):
    """Killed in the last batches of epoch 0, resumed, killed at its end or in the next epoch,
    resumed: the end state equals the uninterrupted run's. A resume with another num_workers
    is refused, naming the setting."""
    steps = EPOCH_BATCHES[workers] + 3
    common = (
        *SHORT_EPOCHS,
        f"trainer.max_steps={steps}",
        "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.checkpoint.keep_last=2",  # the newest two: last and the step a test loads
    )
    args = partial(short_train_args, tmp_path, tiny_model)
    run_training(args(tmp_path / "A", *common, f"data.num_workers={workers}"))
    uninterrupted = load(tmp_path / "A" / "checkpoints" / f"step{steps:07d}.ckpt")
    assert uninterrupted["epoch"] == 1, "the reference run should end in its second epoch"

    run_b = partial(args, tmp_path / "B", *common)
    for i, kill in enumerate(EPOCH_BATCHES[workers] + k for k in kills):
        resume = ("ckpt_path=last",) if i else ()
        killed = run_training(
            run_b(f"data.num_workers={workers}", *resume, *KillAt.overrides(kill)), ok=False
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        assert load(tmp_path / "B" / "checkpoints" / "last.ckpt")["global_step"] == kill
    refused = run_training(run_b("data.num_workers=2", "ckpt_path=last"), ok=False)
    assert f"saved with data.num_workers={workers}, this run has 2" in refused.stderr
    run_training(run_b(f"data.num_workers={workers}", "ckpt_path=last"))
    final = load(tmp_path / "B" / "checkpoints" / f"step{steps:07d}.ckpt")
    assert_same_training_state(uninterrupted, final)


def test_a_checkpoint_between_epochs_records_no_consumed_batches():
    """The save at the end of training (or of an epoch) starts the next epoch from its first
    batch: Lightning's batch counter still holds the finished epoch's count there."""
    from types import SimpleNamespace

    from ymn.reliability.checkpointing import ResumeState

    def saved(started: int, completed: int) -> int:
        epochs = SimpleNamespace(started=started, completed=completed)
        batches = SimpleNamespace(processed=7)
        loop = SimpleNamespace(epoch_progress=SimpleNamespace(current=epochs))
        loop.epoch_loop = SimpleNamespace(batch_progress=SimpleNamespace(current=batches))
        trainer = SimpleNamespace(datamodule=SimpleNamespace(), fit_loop=loop)
        checkpoint = {"SimpleNamespace": {"epoch": completed, "batches_consumed": 99}}
        ResumeState().on_save_checkpoint(trainer, None, checkpoint)
        return checkpoint["SimpleNamespace"]["batches_consumed"]

    assert saved(started=2, completed=1) == 7  # inside the second epoch
    assert saved(started=2, completed=2) == 0  # both epochs done


# ---------------------------------------------------------------------------------------------
# Atomic writes, signals, safe loading
# ---------------------------------------------------------------------------------------------

DIE_DURING_SAVE = """
import os, signal, sys, torch
from pathlib import Path
import ymn.reliability.checkpointing as c

path = Path(sys.argv[1])
c.atomic_torch_save({"step": 1, "w": torch.ones(4)}, path)

def half_then_die(obj, handle):
    handle.write(b"PK\\x03\\x04 half a checkpoint")
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)

c.torch.save = half_then_die
c.atomic_torch_save({"step": 2, "w": torch.zeros(4)}, path)
"""


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    from ymn.reliability.checkpointing import remove_stale_temps

    path = tmp_path / "checkpoints" / "last.ckpt"
    done = run_training([sys.executable, "-c", DIE_DURING_SAVE, str(path)], ok=False, timeout=120)
    assert done.returncode == -signal.SIGKILL
    state = load(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(4))
    stale = remove_stale_temps(path.parent)
    assert len(stale) == 1 and not stale[0].exists()


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_model):
    run_b = tmp_path / "run"
    log = tmp_path / "run.log"
    proc = start_training(
        train_args(
            tmp_path,
            tiny_model,
            run_b,
            "trainer.max_steps=500",
            "trainer.val_check_interval=1000",
            "callbacks.checkpoint.every_n_train_steps=3",
        ),
        log,
    )
    try:
        wait_for(run_b / "checkpoints" / "step0000003.ckpt", proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    state = load(run_b / "checkpoints" / "last.ckpt")
    assert 3 <= state["global_step"] < 500
    assert f"Stopped at step {state['global_step']}; resume with ckpt_path=" in output


def test_ckpt_path_resolution_and_pickle_opt_in(tmp_path):
    from ymn.reliability.resume import UnsafeCheckpointError, resolve_ckpt_path

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    assert resolve_ckpt_path("last", run_dir) is None  # nothing yet: start fresh
    folder = run_dir / "checkpoints"
    folder.mkdir()
    for step in (2, 10):
        torch.save({"global_step": step}, folder / f"step{step:07d}.ckpt")
    assert resolve_ckpt_path("last", run_dir) == str(folder / "step0000010.ckpt")
    (folder / "last.ckpt").symlink_to("step0000002.ckpt")
    assert resolve_ckpt_path("last", run_dir) == str(folder / "last.ckpt")
    assert resolve_ckpt_path(str(run_dir), tmp_path / "other") == str(folder / "last.ckpt")
    own = folder / "step0000002.ckpt"
    assert resolve_ckpt_path(str(own), tmp_path / "other") == str(own)

    foreign = tmp_path / "downloaded.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle_ckpt=true"):
        resolve_ckpt_path(str(foreign), run_dir)
    assert resolve_ckpt_path(str(foreign), run_dir, allow_pickle=True) == str(foreign)
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_ckpt_path(str(tmp_path / "missing.ckpt"), run_dir)


def test_pickle_model_file_is_refused_without_opt_in(tmp_path):
    from ymn.model.components import resolve_model_path

    pickle_file = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, pickle_file)
    with pytest.raises(ValueError, match="pickle checkpoint.*allow_pickle=true"):
        resolve_model_path(pickle_file)
    assert resolve_model_path(pickle_file, allow_pickle=True) == pickle_file


def test_checkpoints_load_with_weights_only(tmp_path):
    """Our checkpoint contents (RNG states included) need no pickle beyond weights_only."""
    from ymn.reliability.checkpointing import atomic_torch_save
    from ymn.reliability.rng import capture_rng, restore_rng

    path = tmp_path / "rng.ckpt"
    atomic_torch_save({"rng": capture_rng()}, path)
    expected = (torch.rand(3), float(torch.randn(())))
    restore_rng(load(path)["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and float(torch.randn(())) == expected[1]
