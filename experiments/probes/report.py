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


def positive_section(p: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    casts, size = settings["casts"], settings["size"]
    lines = [
        "## 1. Positive control: ground-truth renders of the probe layouts",
        "",
        "`render_layout` of every probe record (the runner's default counts × all six layouts × "
        f"{casts} casts: cast 0 is the runner's `characters: auto`, cast s > 0 rotates the "
        f"roster by s), {size} px, "
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
        "| identity kept (named on the original, matched to a reconstructed face: the ceiling "
        f"of probe/identity/char_acc) | {fmt_rate(v['identity_kept'])} |",
        "| identity kept at the true box (named on the original, detected or not) | "
        f"{fmt_rate(v['identity_kept_at_true_box'])} |",
        "| same `identify_character` answer, all faces (unnamed ones: None = None counts) | "
        f"{fmt_rate(v['same_answer_all_faces'])} |",
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


def value(r: dict[str, Any] | None) -> str:
    """A rate's value and n, short."""
    if not r or r.get("value") is None:
        return "— (n=0)"
    lo, hi = r["ci95"]
    return f"{r['value']:.3f} [{lo:.2f}, {hi:.2f}] (n={r['n']})"


def reading_section(result: dict[str, Any]) -> list[str]:
    """The findings in a few bullets, every number read from the result."""
    p, neg = result["positive"], result["negative"]
    rows, chance = neg["rows"], neg["chance"]
    worst = min(p["by_layout"].items(), key=lambda kv: kv[1]["identity_acc"]["value"])
    shuffled = rows["shuffled_targets"]
    lines = [
        "## Reading",
        "",
        "- **The instruments are right on ground truth**: count exact "
        f"{value(p['all']['count_acc'])}, "
        f"cell {value(p['all']['cell_acc'])}, identity {value(p['all']['identity_acc'])} over "
        f"{p['all']['n_images']} renders of the probe layouts; the runner's default set (row + "
        "scatter, `characters: auto`) scores identity "
        f"{value(p['runner_default']['identity_acc'])}. "
        f"Identity is lowest in layout `{worst[0]}` ({value(worst[1]['identity_acc'])})"
        + (
            ": in a column of 5-6 faces the hair zone of a face takes in the outfit of the face "
            "above and the bottom face's outfit is cut by the image edge, so "
            "`identify_character` reads the upper neighbour or nothing; the runner's default "
            "layouts (row, scatter) are not affected."
            if worst[0] == "column"
            else "."
        ),
        "- **Shuffled targets fall to chance, or to the probe set's own prior**: count "
        f"{value(shuffled['count_acc'])} "
        f"(chance {chance['count_acc']:.3f}); cell {value(shuffled['cell_acc'])} "
        f"vs uniform chance {chance['cell_acc']:.2f}: the excess is the probe layouts' own "
        "position prior (rows at y = 0.3 / 0.5 / 0.7), so read face-grid accuracy against "
        "this shuffled baseline (the face-grid probe's `shuffled_cell_acc`, images rolled by "
        "one, is the same idea), not against 0.04; "
        f"identity {value(shuffled['identity_acc'])} vs "
        f"{chance['identity_acc']:.3f} (within a cast the first faces keep their characters "
        "whatever the count, another prior of the probe set).",
    ]
    free = [k for k in ("blank", "noise", "empty_scene", "hands") if k in rows]
    lines.append(
        "- **No faces where there are none**: images with a detected face — "
        + "; ".join(f"{NEGATIVE_LABELS[k]} {value(rows[k]['any_face'])}" for k in free)
        + ". A flat colour within the detector's tolerance of the skin colour reads as one "
        "face (the blank row's hits)."
    )
    if "empty_prompt" in rows:
        e = rows["empty_prompt"]
        lines.append(
            f"- **Empty-prompt samples** of the §3 model score count {value(e['count_acc'])} "
            f"against the probe requests (independence chance {e['independence_chance']:.3f}), "
            f"cell {value(e['cell_acc'])}, identity {value(e['identity_acc'])}."
        )
    v = result["vae_ceiling"]
    if v["status"] == "pending":
        lines.append(f"- **VAE ceiling: pending** ({v['reason']}).")
    else:
        stale = " (old 8x base; the new base's row is pending)" if v["status"] == "stale" else ""
        lines.append(
            f"- **VAE ceiling**{stale}: the face count survives the round trip in "
            f"{value(v['count_kept'])} of fresh scenes, identity in {value(v['identity_kept'])} "
            f"of named faces; {value(v['same_answer_all_faces'])} when unnamed faces reading "
            "None on both sides count as kept (the lenient reading)."
        )
    r = result["robustness"]
    by_n, by_b = r["noise_tolerated_by_metric"], r["blur_tolerated_by_metric"]
    lines += [
        f"- **Detector robustness** (probe faces are {round(0.12 * result['settings']['size'])} "
        f"px): count stays ≥ 0.95 up to noise σ {by_n['count_acc']} and blur radius "
        f"{by_b['count_acc']} px, identity up to σ {by_n['identity_acc']} and "
        f"{by_b['identity_acc']} px. Past that the skin blob breaks into pieces below the "
        "detector's minimum area and faces vanish: soft or noisy samples read as *fewer* "
        "faces, and part of what the VAE ceiling loses is this instrument limit.",
    ]
    c = result["colour_precision"]["characters"]
    tolerated = {name: entry["tolerated"] for name, entry in c.items()}
    strictest = min(tolerated, key=lambda name: tolerated[name] or 0)
    lines += [
        "- **Colour precision** (§5): a look stays named when its colours are drawn up to "
        + ", ".join(f"{name} {delta}" for name, delta in tolerated.items())
        + f" RGB units off (random directions); {strictest} is the strictest, its nearest "
        "palette colours being "
        + " and ".join(
            f"{v['nearest']} {v['distance']} away from its {part}"
            for part, v in c[strictest]["nearest"].items()
        )
        + ". A base's look reading demands that precision of each character.",
        "",
    ]
    return lines


def colour_section(c: dict[str, Any]) -> list[str]:
    shifts = c["shifts"]
    lines = [
        "## 5. Colour precision: how far off a look may be drawn",
        "",
        f"The first {c['per_character']} one-person scenes of each roster character (fresh "
        "seed, natural casting), the character's hair and outfit colours moved δ RGB units, "
        "each colour in its own seeded random direction; the share still named as the "
        "character by `identify_character` at the true face box (moves are clipped to "
        "0-255, which shortens some of a white's). A pixel is read as the nearest palette "
        "colour, so a colour that errs by half the distance to its nearest neighbour, towards "
        "it, is read as that neighbour: the worst case sits at half the distances listed "
        "(`other`: a drawing colour that is no look's, e.g. a background's). Tolerated: the "
        "largest δ with the share ≥ 0.95.",
        "",
        "| character | hair: nearest colour (distance) | outfit: nearest colour (distance) | "
        + " | ".join(f"δ {d}" for d in shifts)
        + " | tolerated δ |",
        "|---|---|---|" + "---|" * len(shifts) + "---|",
    ]
    for name, entry in c["characters"].items():
        near = entry["nearest"]
        cells = [
            f"{row['identity_acc']['value']:.2f} ({row['identity_acc']['k']}/"
            f"{row['identity_acc']['n']})"
            for row in entry["rows"]
        ]
        lines.append(
            f"| {name} | {near['hair']['nearest']} ({near['hair']['distance']}) | "
            f"{near['outfit']['nearest']} ({near['outfit']['distance']}) | "
            + " | ".join(cells)
            + f" | {entry['tolerated']} |"
        )
    lines.append("")
    return lines


def dirty(result: dict[str, Any]) -> str:
    """A note on code that differed from the commit when the numbers were made."""
    paths = result.get("uncommitted_code") or []
    if not paths:
        return ""
    return f" plus uncommitted changes in {len(paths)} tracked files (listed in the JSON)"


def write_markdown(result: dict[str, Any]) -> str:
    """The whole report."""
    head = [
        "# Probe instrument validation",
        "",
        f"Generated by `{result.get('command', 'python -m experiments.probes.validation')}` "
        f"at commit {result.get('git_commit', 'unknown')[:10]}{dirty(result)} in "
        f"{result['wall_seconds']} s; "
        "numbers in `validation.json`. Rates: value [95% CI] (n). Intervals: Wilson on "
        "images; per-face rates take the envelope of Wilson on faces and a bootstrap over "
        "images (faces of one image are not independent).",
        "",
    ]
    return (
        "\n".join(
            head
            + reading_section(result)
            + positive_section(result["positive"], result["settings"])
            + negative_section(result["negative"])
            + vae_section(result["vae_ceiling"])
            + robustness_section(result["robustness"])
            + colour_section(result["colour_precision"])
        )
        + "\n"
    )
