"""The demo's closing readings: per-image probe scores, rates with intervals, the table."""

from __future__ import annotations

import json

from ymn.demo import readings_table
from ymn.probes.scores import format_reading, headline_readings, record_scores


def box(col: int, row: int) -> list[float]:
    return [col / 5 + 0.05, row / 5 + 0.05, col / 5 + 0.15, row / 5 + 0.15]


def record(count: int, found: list[tuple[int, int]], identities: list, cells=None) -> dict:
    cells = cells or [[2, 2]] * count
    names = ["SaitoMio", "KonoRina", "OnoHaru"][:count]
    return {"count": count, "detected_count": len(found), "cells": cells, "characters": names,
            "detected_boxes": [box(*c) for c in found], "identities": identities}  # fmt: skip


def test_record_scores_read_count_cell_and_identity():
    scores = record_scores(record(1, [(2, 2)], ["SaitoMio"]))
    assert scores["exact"] == 1 and scores["cell_hits"] == 1 and scores["id_correct"] == 1
    wrong = record_scores(record(1, [(0, 0), (4, 4)], ["KonoRina", None]))
    assert wrong["exact"] == 0 and wrong["cell_hits"] == 0 and wrong["id_bleed"] == 0
    assert wrong["id_correct"] == 0 and wrong["id_matched"] == 1


def test_headline_readings_count_the_lead_only_in_one_person_images():
    records = [record(1, [(2, 2)], ["SaitoMio"])] * 3 + [record(1, [], [])]
    records.append(record(2, [(1, 2), (3, 2)], ["SaitoMio", "KonoRina"], [[1, 2], [3, 2]]))
    readings = headline_readings(records)
    lead = readings["lead drawn (1person, <name>)"]
    assert (lead["k"], lead["n"]) == (3, 4)
    assert lead["ci95"][0] < 0.75 < lead["ci95"][1]
    assert (readings["count exact"]["k"], readings["count exact"]["n"]) == (4, 5)
    assert readings["identity (every named face)"]["k"] == 5
    assert format_reading(lead).endswith("(3/4)") and format_reading(lead).startswith("0.75 [")


def test_readings_table_has_the_base_and_each_phase(tmp_path):
    for phase, steps in (("p1", (0, 10)), ("p2", (10,))):
        probes = tmp_path / phase / "probes"
        probes.mkdir(parents=True)
        for step in steps:
            hit = step > 0
            payload = {
                "step": step,
                "records": [record(1, [(2, 2)], ["SaitoMio" if hit else None])],
            }
            (probes / f"step_{step:06d}.json").write_text(json.dumps(payload))
    text, payload = readings_table({"phase 1": tmp_path / "p1", "phase 2": tmp_path / "p2"})
    assert list(payload) == ["base (step 0)", "phase 1 (step 10)", "phase 2 (step 10)"]
    assert payload["base (step 0)"]["lead drawn (1person, <name>)"]["k"] == 0
    assert payload["phase 2 (step 10)"]["lead drawn (1person, <name>)"]["k"] == 1
    assert "value [95% CI] (k/n)" in text
