"""How a path is written into a shared record (ymn.paths.shareable_path)."""

from __future__ import annotations

from pathlib import Path

from experiments.study.spec import load_study
from ymn.paths import shareable_path


def test_a_path_inside_the_root_is_relative_and_one_outside_is_its_name(
    tmp_path, monkeypatch
) -> None:
    inside = tmp_path / "runs" / "base-out"
    monkeypatch.chdir(tmp_path)
    assert shareable_path(inside) == "runs/base-out"
    assert shareable_path(Path("runs/base-out")) == "runs/base-out"
    assert shareable_path(Path("/elsewhere/OLD_BASE")) == "OLD_BASE"
    assert shareable_path(inside, root=tmp_path / "runs") == "base-out"
    assert shareable_path(inside, root=tmp_path / "other") == "base-out"


def test_a_packaged_study_records_its_package_path_from_any_directory(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_study("count").source == "ymn/conf/study/count.yaml"
