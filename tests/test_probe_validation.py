"""experiments/probes: the instrument-validation controls (small n, CPU, seconds)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from experiments.probes import controls, validation
from experiments.probes.report import vae_section, write_markdown
from experiments.probes.vae_ceiling import vae_round_trip_agreement
from ymn.data.synthetic import render_layout
from ymn.probes.detectors import SyntheticFaceDetector
from ymn.probes.rates import clustered_rate, rate, wilson

DETECTOR = SyntheticFaceDetector()


@pytest.fixture(scope="module")
def probe_set():
    records = controls.probe_layout_records(casts=1)
    images = controls.render_records(records)
    return records, images, controls.read_images(images, DETECTOR)


def test_wilson_matches_the_textbook_interval() -> None:
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert rate(0, 0)["value"] is None


def test_clustered_rate_widens_when_faces_cluster_in_images() -> None:
    # 10 images of 5 faces: all right or all wrong per image (strongly clustered)
    hits, totals = [5, 0] * 5, [5] * 10
    clustered = clustered_rate(hits, totals, seed=0)
    independent = rate(25, 50)
    assert clustered["value"] == 0.5 and clustered["n"] == 50 and clustered["n_images"] == 10
    width = clustered["ci95"][1] - clustered["ci95"][0]
    assert width > independent["ci95"][1] - independent["ci95"][0] + 0.1


def test_probe_layout_records_cover_the_runner_default_set() -> None:
    records = controls.probe_layout_records(casts=2)
    default = [r for r in records if r["default_probe"]]
    defaults = controls.probe_defaults()
    assert len(default) == len(defaults["counts"]) * len(defaults["layouts"])
    assert {r["layout"] for r in records} == set(controls.LAYOUTS)
    for record in records:
        assert len(record["boxes"]) == len(record["cells"]) == len(record["characters"])
    # cast 1 rotates the roster: its first face is cast 0's second character
    first = {r["cast"]: r["characters"][0] for r in records if r["count"] == 2}
    second = next(r for r in records if r["count"] == 2 and r["cast"] == 0)["characters"][1]
    assert first[1] == second


def test_positive_control_reads_ground_truth_renders_right(probe_set) -> None:
    records, _, readings = probe_set
    result = controls.score(records, readings)
    assert result["count_acc"]["value"] == 1.0
    assert result["cell_acc"]["value"] == 1.0
    assert result["identity_acc"]["value"] >= 0.9
    assert result["count_acc"]["ci95"][0] > 0.85  # n = 36 images: the interval says so


def test_score_sees_a_character_swap_and_a_missing_face() -> None:
    record = next(r for r in controls.probe_layout_records(1) if r["count"] == 2)
    swapped = render_layout(record["characters"][::-1], record["boxes"], 128)
    one_face = render_layout(record["characters"][:1], record["boxes"][:1], 128)
    result = controls.score([record, record], controls.read_images([swapped, one_face], DETECTOR))
    assert result["count_acc"]["k"] == 1  # the one-face image fails the count
    assert result["cell_acc"]["k"] == 3 and result["cell_acc"]["n"] == 4
    assert result["identity_acc"]["k"] == 1  # only the kept face of one_face is right


def test_shuffled_targets_fall_to_chance(probe_set) -> None:
    records, _, readings = probe_set
    result = controls.score(controls.shuffled(records, seed=3), readings)
    chance = controls.analytic_chance(records)
    assert chance["cell_acc"] == 0.04 and chance["count_acc"] == pytest.approx(1 / 6)
    assert result["count_acc"]["ci95"][0] < chance["count_acc"] < result["count_acc"]["ci95"][1]
    assert result["cell_acc"]["value"] < 0.5


@pytest.mark.parametrize("kind", ["noise", "empty_scene", "hands"])
def test_content_free_images_have_no_faces(kind) -> None:
    images = controls.NEGATIVE_IMAGES[kind](6, 1, 128)
    assert all(DETECTOR.detect(image) == [] for image in images)


def test_independence_chance_from_the_marginals() -> None:
    assert controls.independence_chance([1, 1, 2, 2], [1, 1, 1, 1]) == 0.5
    assert controls.independence_chance([1, 2], [3, 3]) == 0.0


def test_degradations_are_seeded_and_heavy_blur_breaks_the_detector(probe_set) -> None:
    records, images, _ = probe_set
    a = controls.degraded(images[:2], "noise", 8, seed=0)
    b = controls.degraded(images[:2], "noise", 8, seed=0)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(images[0]))
    clean = controls.score(records, controls.read_images(images, DETECTOR))
    blurred = controls.score(
        records, controls.read_images(controls.degraded(images, "blur", 3.0), DETECTOR)
    )
    assert blurred["count_acc"]["value"] < clean["count_acc"]["value"]
    with pytest.raises(ValueError, match="unknown degradation"):
        controls.degraded(images[:1], "jpeg", 1)


def test_tolerance_is_the_last_level_above_the_floor() -> None:
    def row(level, *values):
        return {
            "level": level,
            **{
                k: {"value": v}
                for k, v in zip(("count_acc", "cell_acc", "identity_acc"), values, strict=True)
            },
        }

    rows = [row(0, 1, 1, 1), row(4, 1, 0.96, 1), row(8, 1, 0.9, 1), row(16, 1, 1, 1)]
    assert controls.tolerance(rows) == 4
    assert controls.tolerance([row(0, 0.5, 1, 1)]) is None
    assert controls.tolerance(rows, keys=("count_acc",)) == 16


class IdentityVAE(torch.nn.Module):
    """A perfect autoencoder: latents are the pixels."""

    config = SimpleNamespace(block_out_channels=[8], latent_channels=3)

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x))

    def decode(self, z):
        return SimpleNamespace(sample=z)


def test_vae_ceiling_of_a_perfect_vae_is_one() -> None:
    result = vae_round_trip_agreement(IdentityVAE(), n=6, seed=12345, size=128, batch_size=4)
    assert result["count_kept"]["value"] == 1.0
    assert result["original_count_acc"]["value"] == 1.0
    assert result["identity_kept"]["n"] > 0 and result["identity_kept"]["value"] == 1.0
    assert result["identity_kept_at_true_box"]["value"] == 1.0
    assert result["same_answer_all_faces"]["value"] == 1.0
    assert result["l1"] == 0.0


def test_vae_ceiling_of_a_random_vae_is_low(tiny_components) -> None:
    result = vae_round_trip_agreement(tiny_components.vae, n=4, seed=12345, size=64)
    assert result["n_images"] == 4 and result["vae"]["downsampling"] == 4
    assert result["original_count_acc"]["value"] == 1.0  # the instrument is fine
    assert result["identity_kept"]["value"] in (0.0, None)
    assert result["l1"] > 0.1
    assert tiny_components.vae.training  # train mode restored


def test_cli_writes_json_and_markdown_for_a_model_folder(tiny_model, tmp_path) -> None:
    argv = [
        "--model",
        str(tiny_model),
        "--n",
        "3",
        "--samples",
        "1",
        "--sample-steps",
        "1",
        "--casts",
        "1",
        "--size",
        "64",
        "--colour-scenes",
        "2",
        "--out-dir",
        str(tmp_path),
    ]
    assert validation.main(argv) == 0
    result = json.loads((tmp_path / "validation.json").read_text())
    assert result["vae_ceiling"]["status"] == "measured"
    assert result["vae_ceiling"]["n_images"] == 3
    assert result["positive"]["all"]["count_acc"]["value"] == 1.0
    assert "empty_prompt" in result["negative"]["rows"]
    assert {row["level"] for row in result["robustness"]["blur"]} >= {0, 3.0}
    assert result["robustness"]["blur_tolerated_by_metric"]["count_acc"] is not None
    markdown = (tmp_path / "VALIDATION.md").read_text()
    assert "## 3. VAE ceiling" in markdown and "Pending" not in markdown
    assert "## 5. Colour precision" in markdown
    assert result["colour_precision"]["characters"]["Tamaki"]["rows"][0]["identity_acc"]["n"] == 2
    (tmp_path / "VALIDATION.md").unlink()
    assert validation.main(["--markdown-only", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "VALIDATION.md").read_text() == markdown


def test_a_model_that_does_not_load_is_marked_pending(tmp_path) -> None:
    entry, images = validation.model_controls(str(tmp_path / "missing"), 2, 64, 1, 1)
    assert entry["status"] == "pending" and images is None
    assert "FileNotFoundError" in entry["reason"]
    assert "**Pending**" in "\n".join(vae_section(entry))


def test_committed_report_is_the_committed_json_rendered() -> None:
    folder = validation.OUT_DIR
    result = json.loads((folder / "validation.json").read_text())
    assert result["command"].startswith("python -m experiments.probes.validation")
    assert write_markdown(result) == (folder / "VALIDATION.md").read_text()


def test_paired_vae_difference_finds_a_real_gain_and_none_between_equals():
    from experiments.probes.vae_ceiling import paired_difference

    n = 40
    worse = {"count": ([0] * n, [1] * n), "identity": ([1] * n, [2] * n)}
    better = {"count": ([1] * n, [1] * n), "identity": ([2] * n, [2] * n)}
    gain = paired_difference(worse, better)
    assert gain["count"]["difference"] == 1.0 and gain["count"]["p_permutation"] < 0.01
    assert gain["identity"]["difference"] == 0.5 and gain["identity"]["ci95"] == [0.5, 0.5]
    same = paired_difference(worse, worse)
    assert same["count"]["difference"] == 0.0 and same["count"]["p_permutation"] == 1.0
    assert gain["count"]["n_images"] == n


def test_paired_interaction_finds_a_change_that_does_more_in_one_setting_and_none_when_equal():
    from experiments.probes.vae_ceiling import paired_interaction

    n = 40
    never, half, always = [0] * n, [1, 0] * (n // 2), [1] * n
    ones = [1] * n

    def arm(hits: list[int]) -> dict[str, tuple[list[int], list[int]]]:
        return {"look": (hits, ones)}

    larger = paired_interaction(arm(never), arm(half), arm(never), arm(always))  # +0.5 then +1
    assert larger["look"]["interaction"] == 0.5 and larger["look"]["n_images"] == n
    assert larger["look"]["p_permutation"] < 0.01 and larger["look"]["ci95"][0] > 0.3
    smaller = paired_interaction(arm(never), arm(always), arm(never), arm(half))
    assert smaller["look"]["interaction"] == -0.5
    added = paired_interaction(arm(never), arm(half), arm(half), arm(always))  # +0.5 in both
    assert added["look"]["interaction"] == 0.0 and added["look"]["p_permutation"] == 1.0


def test_a_shifted_look_moves_only_the_characters_colours_by_delta() -> None:
    scenes = controls.solo_scenes_by_character(2, seed=5)
    image, meta = scenes["Tamaki"][0]
    assert meta["characters"] == ["Tamaki"] and len(scenes["Natsume"]) == 2
    assert controls.shift_look(image, "Tamaki", 0, np.random.default_rng(0)) is image
    shifted = controls.shift_look(image, "Tamaki", 10, np.random.default_rng(0))
    before = np.asarray(image, dtype=np.float32)
    after = np.asarray(shifted, dtype=np.float32)
    moved = np.any(before != after, axis=-1)
    look = controls.CHARACTERS["Tamaki"]
    own = np.all(before == look.hair, axis=-1) | np.all(before == look.outfit, axis=-1)
    assert moved.any() and not (moved & ~own).any()  # only her colours moved
    distance = np.linalg.norm(after[moved] - before[moved], axis=-1)
    assert np.all(np.abs(distance - 10) < 1.0)  # δ, up to rounding to whole RGB units


def test_colour_precision_names_every_look_undisturbed_and_none_far_off(monkeypatch) -> None:
    monkeypatch.setattr(validation, "COLOUR_SHIFTS", (0, 80))
    result = validation.colour_precision(per_character=3, size=128)
    for name, entry in result["characters"].items():
        exact, far = (row["identity_acc"] for row in entry["rows"])
        assert exact["k"] == exact["n"] == 3, name
        assert far["value"] < 0.5, name
        assert entry["tolerated"] == 0
        assert entry["nearest"]["hair"]["distance"] > 0
