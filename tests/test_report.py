"""`ymn-report`: the dataset report's numbers against the metadata, its files, its command line
and the training-start callback that logs its figures to wandb."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from tests.conftest import subprocess_env
from ymn.callbacks.dataset_report import DatasetReportLogger
from ymn.data.captions import grid_cell
from ymn.data.datamodule import YmnDataModule
from ymn.data.decode import resolve_shards
from ymn.data.multiply import epoch_size, plan_epoch
from ymn.data.pack import pack_folder
from ymn.data.report import ReportSettings, build_report, known_characters, main, people_label
from ymn.data.report_figures import cooccurrence, write_report
from ymn.data.synthetic import generate_dataset

LONG = " ".join(["word"] * 100)  # 102 CLIP tokens with start and end: over 77
# folder: (images, caption, multiply.txt, size); "zero" gets 0 copies in ED1
CRAFTED = {
    "long": (3, LONG, "2", (32, 16)),
    "short": (5, "a short caption", None, (16, 16)),
    "zero": (2, "dropped", "0.5", (16, 16)),
}
SETTINGS = ReportSettings(resolution=64, batch_size=2, val_fraction=0.0, seed=0)


def shard_metadata(folder: Path) -> list[dict]:
    """Every sample's json, read straight from the tars (the report's reference)."""
    metas = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            metas += [json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")]
    return metas


@pytest.fixture(scope="module")
def synthetic(module_tmp) -> Path:
    root = module_tmp.mktemp("report-synth")
    generate_dataset(root / "images", 24, seed=1, size=64)
    pack_folder(root / "images", root / "shards", shard_size=8, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def crafted(module_tmp) -> Path:
    """Caption-only folders: one with 102-token captions, one short, one ED1 drops."""
    root = module_tmp.mktemp("report-crafted")
    for folder, (n, caption, multiply, size) in CRAFTED.items():
        (root / "images" / folder).mkdir(parents=True)
        for j in range(n):
            Image.new("RGB", size, (j * 40, 0, 0)).save(root / "images" / folder / f"{j}.png")
            (root / "images" / folder / f"{j}.txt").write_text(caption)
        if multiply is not None:
            (root / "images" / folder / "multiply.txt").write_text(multiply)
    pack_folder(root / "images", root / "shards", shard_size=4, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def tokenizer():
    return pytest.importorskip("ymn.data.tokenizer").load_clip_tokenizer()


def report_of(folder: Path, settings: ReportSettings = SETTINGS, **kwargs):
    return build_report(*resolve_shards(str(folder)), settings, **kwargs)


def test_people_faces_and_characters_match_the_metadata(synthetic: Path) -> None:
    metas = shard_metadata(synthetic)
    report = report_of(synthetic)
    assert report.n_images == len(metas) == 24 and report.shard_problems == []
    assert report.people == Counter(people_label(m["n_people"]) for m in metas)
    n_faces = sum(len(m["facepos"]) for m in metas)
    assert sum(map(sum, report.face_cells)) == report.n_faces == n_faces > 0
    cells = Counter(grid_cell(box, 5) for m in metas for box in m["facepos"])
    assert all(report.face_cells[row][col] == n for (col, row), n in cells.items())
    characters = Counter(name for m in metas for name in known_characters(m))
    assert report.characters == characters
    names, matrix = cooccurrence(report)
    assert [matrix[i][i] for i in range(len(names))] == [characters[n] for n in names]
    assert all(matrix[i][j] == matrix[j][i] for i in range(len(names)) for j in range(i))
    assert report.tags == Counter(t for m in metas for t in set(m["tags"]))


def test_draws_shares_and_buckets_follow_the_plan(synthetic: Path) -> None:
    shards, manifest = resolve_shards(str(synthetic))
    report = build_report(shards, manifest, SETTINGS)
    categories = {n: (c["n_images"], c["multiply"]) for n, c in manifest["categories"].items()}
    assert report.draws == report.planned_draws == epoch_size(plan_epoch(categories, "ed1"))
    for row in report.categories:
        assert row.draws == row.n_images * int(row.multiply)
        assert row.drawn == pytest.approx(row.draws / report.draws)
    assert sum(r.configured for r in report.categories) == pytest.approx(1.0)
    assert sum(r.drawn for r in report.category_groups(1)) == pytest.approx(1.0)
    assert sum(b.draws for b in report.buckets) == report.draws
    assert sum(b.images for b in report.buckets) == report.n_images
    assert all(b.remainder == b.draws % 2 and b.batches == b.draws // 2 for b in report.buckets)


def test_held_out_keys_count_as_images_not_draws(synthetic: Path) -> None:
    settings = ReportSettings(resolution=64, batch_size=2, val_fraction=0.5, seed=0)
    report = report_of(synthetic, settings)
    assert 0 < report.n_val < report.n_images
    assert sum(report.people.values()) == report.n_images
    assert sum(b.images for b in report.buckets) == report.n_images - report.n_val
    assert report.draws < report.planned_draws


def test_share_over_77_ed1_drops_and_buckets_on_crafted_captions(crafted: Path, tokenizer):
    report = report_of(crafted, tokenizer=tokenizer)
    assert report.dropped == {"zero": 2} and report.n_undrawn == 2
    # long: 3 images x 2 copies, short: 5 x 1; the dropped folder is never drawn
    assert report.token_limit == 77 and report.captions_measured == 8
    assert report.share_over_limit("draws") == pytest.approx(6 / 11)
    assert report.share_over_limit("images") == pytest.approx(3 / 8)
    assert max(report.token_lengths) == 102
    by_bucket = {b.bucket: (b.images, b.draws) for b in report.buckets}
    assert sorted(by_bucket.values()) == [(3, 6), (5, 5)] and len(by_bucket) == 2


def test_report_md_and_pictures_are_written(crafted: Path, tokenizer, tmp_path: Path) -> None:
    path, figures = write_report(report_of(crafted, tokenizer=tokenizer), tmp_path / "out")
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) >= 5 and set(figures.values()) == set(pngs)
    assert all(Image.open(p).size[0] > 100 for p in pngs)
    text = path.read_text()
    for name in figures:
        assert f"![]({name}.png)" in text
    assert "54.55% of draws" in text and "| zero | 2 |" in text


def run_report(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "ymn-report"
    assert script.is_file(), f"{script} is missing: install the package (`make install`)"
    return subprocess.run(
        [str(script), *args], env=subprocess_env(), capture_output=True, text=True
    )


def test_command_writes_the_report(synthetic: Path, tmp_path: Path) -> None:
    result = run_report(str(synthetic), "--out", str(tmp_path / "r"), "--resolution", "64")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (tmp_path / "r" / "REPORT.md").is_file()
    assert len(list((tmp_path / "r").glob("*.png"))) >= 5


@pytest.mark.parametrize("make", ["missing", "no_manifest"])
def test_missing_or_unpacked_folder_is_one_line(tmp_path: Path, make: str) -> None:
    folder = tmp_path / "shards"
    if make == "no_manifest":
        folder.mkdir()
    result = run_report(str(folder), "--out", str(tmp_path / "r"))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    reasons = [line for line in output.splitlines() if str(folder) in line]
    assert reasons and reasons[-1].startswith("ymn-report:"), output


def test_damaged_shard_is_reported_and_fails(crafted: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "shards"
    copy.mkdir()
    for f in crafted.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    first = sorted(copy.glob("*.tar"))[0]
    first.write_bytes(first.read_bytes()[:3000])
    status = main([str(copy), "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1 and f"{first}" in err and "ymn-pack --verify" in err
    assert first.name in (tmp_path / "r" / "REPORT.md").read_text()


class RecordingWandb(WandbLogger):
    """A WandbLogger that records `log_image` calls instead of starting wandb."""

    def __init__(self) -> None:
        self.logged: list[tuple[str, list[str]]] = []

    def log_image(self, key: str, images: list, step: int | None = None, **kwargs) -> None:
        self.logged.append((key, images))


def test_callback_logs_figures_to_wandb_only(synthetic: Path, tmp_path: Path) -> None:
    datamodule = YmnDataModule(str(synthetic), resolution=64, batch_size=2, val_fraction=0.0)
    wandb = RecordingWandb()

    def trainer(loggers):
        return SimpleNamespace(
            loggers=loggers, is_global_zero=True, datamodule=datamodule, default_root_dir=tmp_path
        )

    idle = DatasetReportLogger(out_dir=str(tmp_path / "no-wandb"))
    idle.on_fit_start(trainer([]), None)
    assert idle.figures == {} and not (tmp_path / "no-wandb").exists()
    DatasetReportLogger(enabled=False).on_fit_start(trainer([wandb]), None)
    assert wandb.logged == []

    callback = DatasetReportLogger(out_dir=str(tmp_path / "run"))
    callback.on_fit_start(trainer([wandb]), None)
    assert len(wandb.logged) >= 5
    assert {key for key, _ in wandb.logged} == {f"data_report/{n}" for n in callback.figures}
    assert (tmp_path / "run" / "dataset_report" / "REPORT.md").is_file()
