"""One answer to "which checkpoint / which export" of a run directory (ymn.run_dir)."""

from __future__ import annotations

import os

from ymn.callbacks.carry_optimizer import previous_phase_checkpoint
from ymn.reliability.resume import resolve_ckpt_path
from ymn.run_dir import diffusers_export, latest_checkpoint


def _touch(path, mtime: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_highest_step_wins_never_best_or_a_newer_stray_file(tmp_path):
    folder = tmp_path / "checkpoints"
    _touch(folder / "step9.ckpt", 100)
    step10 = _touch(folder / "step10.ckpt", 50)  # older on disk, later in training
    _touch(folder / "best.ckpt", 200)
    _touch(folder / "nan_step11.ckpt", 300)
    assert latest_checkpoint(tmp_path) == step10
    last = _touch(folder / "last.ckpt", 10)
    assert latest_checkpoint(tmp_path) == last


def test_every_consumer_asks_the_same_helper(tmp_path):
    (tmp_path / "config_resolved.yaml").write_text("model: {}\n")
    step = _touch(tmp_path / "checkpoints" / "step3.ckpt", 10)
    _touch(tmp_path / "checkpoints" / "best.ckpt", 99)
    assert resolve_ckpt_path("last", tmp_path) == str(step)
    assert resolve_ckpt_path(str(tmp_path), "elsewhere") == str(step)
    assert previous_phase_checkpoint(tmp_path) == step
    assert latest_checkpoint(tmp_path / "nothing") is None
    assert diffusers_export(tmp_path) is None
    (tmp_path / "export" / "diffusers").mkdir(parents=True)
    (tmp_path / "export" / "diffusers" / "model_index.json").write_text("{}")
    assert diffusers_export(tmp_path) == tmp_path / "export" / "diffusers"


def test_probe_pass_files_are_the_passes_in_step_order(tmp_path) -> None:
    from ymn.run_dir import probe_pass_files, probe_paths

    for step in (1200, 300, 0):
        json_path, png_path = probe_paths(tmp_path, step)
        json_path.parent.mkdir(exist_ok=True)
        json_path.write_text("{}")
        png_path.write_bytes(b"")
    (tmp_path / "probes" / "step_notes.json").write_text("{}")  # not a pass
    assert probe_pass_files(tmp_path) == [probe_paths(tmp_path, s)[0] for s in (0, 300, 1200)]
    assert probe_pass_files(tmp_path / "elsewhere") == []


def test_each_launch_records_its_thread_count_and_a_resume_keeps_the_first(tmp_path) -> None:
    """Training matches bit for bit only at a fixed thread count, so every launch says its own."""
    import json

    import torch
    from omegaconf import OmegaConf

    from ymn.run_record import record_run

    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            record_run(tmp_path, OmegaConf.create({"seed": 0}))
    finally:
        torch.set_num_threads(threads)
    lines = (tmp_path / "launches.jsonl").read_text().splitlines()
    assert [json.loads(line)["torch_threads"] for line in lines] == [1, 2]
    assert json.loads(lines[0])["torch"] == torch.__version__


def test_the_commit_label_is_head_marked_dirty_by_tracked_edits_and_unknown_outside_git(
    tmp_path, monkeypatch
) -> None:
    import subprocess

    from ymn.run_record import commit_label

    # git must not find a repository above tmp_path (e.g. a checkout holding the temp folder)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    assert commit_label(tmp_path) == "unknown"  # not a repository yet
    git("init", "-q")
    (tmp_path / "code.py").write_text("a = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    (tmp_path / "scratch.txt").write_text("untracked files do not count\n")
    assert commit_label(tmp_path) == head
    (tmp_path / "code.py").write_text("a = 2\n")
    assert commit_label(tmp_path) == head + "+dirty"
