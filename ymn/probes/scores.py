"""One probe image's additive scores, from its record in a probe JSON (`probes/step_*.json`).

Sums of these give every probe rate over any set of images (a run, an arm pooled over seeds, a
bootstrap resample): count exact accuracy, face-grid cell accuracy and Chebyshev distance,
identity accuracy and bleed, attention mass in the target cell. The matching is the probes' own
(`match_cells`, `identity_metrics`), so a score here is what the training-time probe reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ymn.probes.facegrid import chebyshev, grid_cell, match_cells
from ymn.probes.identity import identity_metrics

GRID = 5
Scores = dict[str, float]


def cell_scores(record: Mapping[str, Any]) -> Scores:
    """cell_hits of cell_targets faces in their asked cell; cheb_sum over cheb_n matched."""
    targets = [tuple(c) for c in record.get("cells") or []]
    found = [grid_cell(box, GRID) for box in record.get("detected_boxes") or []]
    hits, distance, matched = 0.0, 0.0, 0.0
    for target, match in match_cells(targets, found):
        if match is not None:
            matched += 1
            distance += chebyshev(target, match)
            hits += chebyshev(target, match) == 0
    return {"cell_hits": hits, "cell_targets": float(len(targets)), "cheb_sum": distance,
            "cheb_n": matched}  # fmt: skip


def identity_scores(record: Mapping[str, Any]) -> Scores:
    """id_correct and id_bleed of id_matched requested faces (0 of 0 without identities)."""
    names, boxes = record.get("characters") or [], record.get("detected_boxes") or []
    identities = record.get("identities")
    if not names or identities is None or len(record.get("cells") or []) != len(names):
        return {"id_matched": 0.0, "id_correct": 0.0, "id_bleed": 0.0}
    scores = identity_metrics(
        [names],
        [boxes],
        target_cells_per_image=[record["cells"]],
        identified_per_image=[identities],
    )
    matched = float(scores["n_matched"])
    correct = 0.0 if not matched else scores["char_acc"] * matched
    bleed = 0.0 if not matched else scores["bleed_rate"] * matched
    return {"id_matched": matched, "id_correct": correct, "id_bleed": bleed}


def attention_scores(record: Mapping[str, Any]) -> Scores:
    """attn_mass summed over attn_n faces (the sampled image's cross-attention in the cell)."""
    faces = (record.get("attention") or {}).get("faces") or []
    return {"attn_mass": float(sum(f["mass"] for f in faces)), "attn_n": float(len(faces))}


def record_scores(record: Mapping[str, Any]) -> Scores:
    """Every additive score of one probe image, plus its asked and detected counts."""
    asked, seen = int(record["count"]), int(record.get("detected_count", 0))
    scores: Scores = {"asked": float(asked), "detected": float(seen), "exact": float(asked == seen)}
    return scores | cell_scores(record) | identity_scores(record) | attention_scores(record)


def headline_readings(records: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The readings a person checks first, each with k, n and a 95 % interval (ymn.probes.rates):
    the named lead drawn in `1person, <name>` images, exact count, face-grid cell, identity."""
    from ymn.probes.rates import clustered_rate, rate

    rows = [record_scores(r) for r in records]
    solo = [r for r in rows if r["asked"] == 1]
    return {
        "lead drawn (1person, <name>)": rate(int(sum(r["id_correct"] for r in solo)), len(solo)),
        "count exact": rate(int(sum(r["exact"] for r in rows)), len(rows)),
        "face-grid cell": clustered_rate(
            [int(r["cell_hits"]) for r in rows], [int(r["cell_targets"]) for r in rows]
        ),
        "identity (every named face)": clustered_rate(
            [int(r["id_correct"]) for r in rows], [int(r["id_matched"]) for r in rows]
        ),
    }


def format_reading(reading: Mapping[str, Any]) -> str:
    """`0.62 [0.48, 0.74] (31/50)`, or `– (0/0)` without trials."""
    if not reading["n"]:
        return "– (0/0)"
    low, high = reading["ci95"]
    return f"{reading['value']:.2f} [{low:.2f}, {high:.2f}] ({reading['k']}/{reading['n']})"
