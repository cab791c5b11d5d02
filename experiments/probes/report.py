"""VALIDATION.md from the result of `experiments.probes.validation` (tables, no new numbers)."""

from __future__ import annotations

from typing import Any

NEGATIVE_LABELS = {
    "shuffled_targets": "renders, targets shuffled across records",
    "blank": "flat random colour",
    "noise": "uniform pixel noise",
    "empty_scene": "synthetic scene, people removed",
    "hands": "synthetic hand close-up (no face)",
    "empty_prompt": "model sample of the empty prompt",
}


def fmt_rate(r: dict[str, Any] | None) -> str:
    """value [lo, hi] (n) of a rate; — when it has no trials."""
    if not r or r.get("value") is None:
        return "— (n=0)"
    lo, hi = r["ci95"]
    return f"{r['value']:.3f} [{lo:.3f}, {hi:.3f}] (n={r['n']})"


def score_row(label: str, s: dict[str, Any], extra: str = "") -> str:
    cells = [
        label,
        str(s["n_images"]),
        fmt_rate(s["count_acc"]),
        fmt_rate(s["cell_acc"]),
        fmt_rate(s["identity_acc"]),
        fmt_rate(s["any_face"]),
        f"{s['mean_faces']:.2f}",
    ]
    return "| " + " | ".join(cells + ([extra] if extra else [])) + " |"


SCORE_HEADER = (
    "| set | images | count exact acc | cell acc (per face) | identity acc (per matched face) "
    "| images with a face | mean faces |"
)
SCORE_RULE = "|---|---|---|---|---|---|---|"


def positive_section(p: dict[str, Any]) -> list[str]:
    lines = [
        "## 1. Positive control: ground-truth renders of the probe layouts",
        "",
        "`render_layout` of every probe record (default counts × all six layouts × 8 casts: "
        "cast 0 is the runner's `characters: auto`, casts 1-7 rotate the roster), 128 px, "
        "faces 0.12 of the side as `build_probe_prompts` asks → `SyntheticFaceDetector` → "
        "the probe's own metrics.",
        "",
        SCORE_HEADER,
        SCORE_RULE,
        score_row("all records", p["all"]),
        score_row("runner default set (cast 0, row + scatter)", p["runner_default"]),
    ]
    lines += [score_row(f"count {c}", s) for c, s in p["by_count"].items()]
    lines += [score_row(f"layout {lay}", s) for lay, s in p["by_layout"].items()]
    return lines + [""]


def negative_section(neg: dict[str, Any]) -> list[str]:
    chance = neg["chance"]
    lines = [
        "## 2. Negative controls",
        "",
        "Analytic chance of a guesser: count exact "
        f"{chance['count_acc']:.3f} (a count drawn from the requested distribution, Σ p_c²; "
        f"{chance['count_acc_uniform']:.3f} uniform over the counts), cell "
        f"{chance['cell_acc']:.3f} (1/25), identity {chance['identity_acc']:.3f} "
        "(1 / roster size). Content-free images are scored against shuffled probe records "
        "(image i ↔ record i); a detector that finds no face there scores 0, below chance.",
        "",
        SCORE_HEADER + " chance (count) |",
        SCORE_RULE + "---|",
    ]
    for name, s in neg["rows"].items():
        note = (
            f"{s['independence_chance']:.3f} (independence)"
            if "independence_chance" in s
            else f"{chance['count_acc']:.3f}"
        )
        lines.append(score_row(NEGATIVE_LABELS.get(name, name), s, note))
    if "empty_prompt" not in neg["rows"]:
        lines += ["", "Empty-prompt samples: pending (the model did not load, see §3)."]
    return lines + [""]


def vae_section(v: dict[str, Any]) -> list[str]:
    lines = ["## 3. VAE ceiling: fresh scenes through the model's VAE", ""]
    if v["status"] == "pending":
        return lines + [f"**Pending** — {v['model']} did not load: {v['reason']}", ""]
    if v["status"] == "stale":
        lines += [f"**New base pending.** {v['reason']}.", ""]
    vae = v["vae"]
    lines += [
        f"Model: {v['model']}; VAE blocks {vae['block_out_channels']}, "
        f"{vae['downsampling']}x downsampling, {vae['latent_channels']} latent channels. "
        f"{v['n_images']} scenes of seed {v['seed']} at {v['size']} px (the base trains on "
        "seed 0), encode → posterior mode → decode → detector.",
        "",
        "| measure | value [95% CI] (n) |",
        "|---|---|",
        f"| face count kept (images) | {fmt_rate(v['count_kept'])} |",
        f"| face in its cell (true faces) | {fmt_rate(v['cell_kept'])} |",
        f"| identity kept (faces named on the original) | {fmt_rate(v['identity_kept'])} |",
        f"| count right on the originals (instrument) | {fmt_rate(v['original_count_acc'])} |",
        f"| reconstruction L1 ([-1, 1] units) | {v['l1']:.4f} |",
        "",
    ]
    return lines


def robustness_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "## 4. Detector robustness: degraded renders",
        "",
        f"{r['n_images']} positive-control renders (a seeded subset), each scored against its "
        "own record. Tolerated: the largest level with count, cell and identity accuracy "
        "all ≥ 0.95 (point estimates).",
        "",
    ]
    for kind, unit in (
        ("noise", "Gaussian noise σ (0-255)"),
        ("blur", "Gaussian blur radius (px)"),
    ):
        lines += [
            f"**{unit}** — tolerated up to {r[f'{kind}_tolerated']}",
            "",
            "| level | count exact acc | cell acc | identity acc | mean faces |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['level']} | {fmt_rate(row['count_acc'])} | {fmt_rate(row['cell_acc'])} "
            f"| {fmt_rate(row['identity_acc'])} | {row['mean_faces']:.2f} |"
            for row in r[kind]
        ]
        lines.append("")
    return lines


def write_markdown(result: dict[str, Any]) -> str:
    """The whole report."""
    head = [
        "# Probe instrument validation",
        "",
        f"Generated by `{result.get('command', 'python -m experiments.probes.validation')}` "
        f"at commit {result.get('git_commit', 'unknown')[:10]} in {result['wall_seconds']} s; "
        "numbers in `validation.json`. Rates: value [95% CI] (n). Intervals: Wilson on "
        "images; per-face rates take the envelope of Wilson on faces and a bootstrap over "
        "images (faces of one image are not independent).",
        "",
    ]
    return (
        "\n".join(
            head
            + positive_section(result["positive"])
            + negative_section(result["negative"])
            + vae_section(result["vae_ceiling"])
            + robustness_section(result["robustness"])
        )
        + "\n"
    )
