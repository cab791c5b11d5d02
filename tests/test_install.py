"""ymn is self-contained: the wheel carries its configs and assets, an installed copy composes
the recipe's config from any directory, and no file points outside the repository."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import subprocess_env

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ymn"
# A relative path that climbs out of the repository (`../name` from the repo root), and the
# absolute folders around this clone (its parent, the user's home): a user's clone has neither.
# A clone in the temp folder or at the root does not make every /tmp/... or /... suspect.
RELATIVE_ESCAPE = re.compile(r"(?<![\w.])(?:\.\./)+[\w-]+")
GENERIC_FOLDERS = {Path("/"), Path(tempfile.gettempdir()).resolve()}
AROUND_THE_CLONE = tuple(
    str(p) + "/" for p in (REPO.parent, Path.home()) if p.resolve() not in GENERIC_FOLDERS
)


def points_outside(line: str) -> bool:
    """True when the line names a path outside the repository."""
    if any(prefix in line for prefix in AROUND_THE_CLONE):
        return True
    return any(
        not (REPO / m.group(0)).resolve().is_relative_to(REPO)
        for m in RELATIVE_ESCAPE.finditer(line)
    )


def _run(*args: str | Path, cwd: Path, **env: str) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=subprocess_env(**env)
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(module_tmp) -> Path:
    """A wheel built offline from a copy of the sources (the shared checkout stays clean)."""
    tmp = module_tmp.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(PACKAGE, source / "ymn", ignore=shutil.ignore_patterns("__pycache__"))
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", ".", "-w", tmp, cwd=source)
    (built,) = tmp.glob("ymn-*.whl")
    return built


def _package_files(folder: str, pattern: str) -> set[str]:
    return {
        p.relative_to(REPO).as_posix()
        for p in (PACKAGE / folder).glob(pattern)
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_wheel_holds_every_config_and_asset(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs, assets = _package_files("conf", "**/*.yaml"), _package_files("assets", "**/*")
    assert "ymn/conf/config.yaml" in configs and "ymn/conf/experiment/phase1_640.yaml" in configs
    assert assets, "ymn/assets is empty: the embedded tiny model is missing"
    assert sorted(configs - names) == [] and sorted(assets - names) == []


def test_installed_copy_composes_the_recipe_from_elsewhere(wheel: Path, tmp_path: Path) -> None:
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "install", "-q", "--no-deps", "--no-compile", "--target", site, wheel, cwd=tmp_path)
    # --cfg all = the job config (--cfg job) plus hydra's, which names the config folder used
    text = _run(
        sys.executable,
        "-m",
        "ymn.train",
        "experiment=phase1_640",
        "--cfg",
        "all",
        cwd=elsewhere,
        PYTHONPATH=str(site),
    )
    cfg = yaml.safe_load(text)
    assert cfg["name"] == "phase1_640" and cfg["data"]["resolution"] == 640
    main_source = next(
        s for s in cfg["hydra"]["runtime"]["config_sources"] if s["provider"] == "main"
    )
    assert Path(main_source["path"]) == site / "ymn" / "conf"  # not the repo's copy
    assert list(elsewhere.iterdir()) == []  # composing writes nothing


def _text_files(*folders: Path) -> list[Path]:
    files = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                if b"\0" not in path.read_bytes()[:8192]:
                    files.append(path)
    return files


def test_the_outside_path_check_catches_what_it_should() -> None:
    assert AROUND_THE_CLONE, "neither the clone's parent nor the home folder is checked"
    assert points_outside(f"FIXTURE = Path({AROUND_THE_CLONE[0] + 'shared/fixtures'!r})")
    escape = "/".join(["..", "shared", "DESIGN.md"])  # built, so this file reads nothing outside
    assert points_outside(f'read("{escape}")')
    assert not points_outside("init_from=multirun/ablation_phase2/.../N")
    assert not points_outside('Path(__file__).parent / "fixtures"')


def test_no_file_points_outside_the_repo() -> None:
    files = [p for p in _text_files(PACKAGE, REPO / "tests") if p != Path(__file__).resolve()]
    assert len(files) > 50
    hits = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
            if points_outside(line):
                hits.append(f"{path.relative_to(REPO)}:{n + 1}: {line.strip()}")
    assert hits == [], "paths outside the repository (use ymn.paths or tmp_path):\n" + "\n".join(
        hits
    )
