"""Face-grid metrics: do generated faces land in the requested grid cells? (pure numpy/scipy)

Targets are (col, row) cells; detections are face boxes [l, t, r, b] as fractions, mapped to
the cell of their centre with the caption code's own cuts. Targets and detections of one image
are paired by Hungarian matching on Chebyshev (king-move) distance; a target with no detection
left over counts as a miss. Chance cell accuracy on a 5x5 grid is 0.04.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ymn.data.captions import grid_cell

Cell = tuple[int, int]
Box = Sequence[float]


def chebyshev(a: Cell, b: Cell) -> int:
    """max(|Δcol|, |Δrow|): 0 in the cell, 1 in a neighbouring one."""
    return max(abs(a[0] - b[0]), abs(a[1] - b[1]))


def match_cells(targets: Sequence[Cell], found: Sequence[Cell]) -> list[tuple[Cell, Cell | None]]:
    """Pair each target cell with a found cell (Hungarian, min total Chebyshev); None if none."""
    targets = [tuple(t) for t in targets]
    found = [tuple(f) for f in found]
    if not targets or not found:
        return [(t, None) for t in targets]
    cost = np.array([[chebyshev(t, f) for f in found] for t in targets])
    rows, cols = linear_sum_assignment(cost)
    pairs: dict[int, Cell] = {int(r): found[int(c)] for r, c in zip(rows, cols, strict=True)}
    return [(t, pairs.get(i)) for i, t in enumerate(targets)]


def _score(
    targets_per_image: Sequence[Sequence[Cell]], found_per_image: Sequence[Sequence[Cell]]
) -> tuple[float, float, int]:
    """(cell accuracy over all targets, mean Chebyshev over matched pairs, n matched)."""
    hits, distances, n_targets = 0, [], 0
    for targets, found in zip(targets_per_image, found_per_image, strict=True):
        for target, match in match_cells(targets, found):
            n_targets += 1
            if match is not None:
                distance = chebyshev(target, match)
                distances.append(distance)
                hits += distance == 0
    accuracy = hits / n_targets if n_targets else float("nan")
    mean_distance = float(np.mean(distances)) if distances else float("nan")
    return accuracy, mean_distance, len(distances)


def facegrid_metrics(
    target_cells_per_image: Sequence[Sequence[Cell]],
    detected_boxes_per_image: Sequence[Sequence[Box]],
    grid: int = 5,
) -> dict[str, Any]:
    """cell_acc, mean_chebyshev, matched_frac, and two baselines.

    most_frequent_cell_baseline: the accuracy of putting every face in the single most frequent
    target cell (what a model that ignores the grid tokens but learnt the layout prior scores).
    shuffled_cell_acc / shuffled_chebyshev: detections scored against the next image's targets
    (images rolled by one), i.e. the score with the image-to-prompt binding broken.
    """
    if len(target_cells_per_image) != len(detected_boxes_per_image):
        raise ValueError(
            f"{len(target_cells_per_image)} target lists but "
            f"{len(detected_boxes_per_image)} detection lists"
        )
    targets = [[tuple(c) for c in cells] for cells in target_cells_per_image]
    found = [[grid_cell(box, grid) for box in boxes] for boxes in detected_boxes_per_image]
    accuracy, mean_distance, n_matched = _score(targets, found)
    all_targets = [c for cells in targets for c in cells]
    baseline = float("nan")
    if all_targets:
        baseline = Counter(all_targets).most_common(1)[0][1] / len(all_targets)
    shuffled = found[1:] + found[:1]
    shuffled_acc, shuffled_distance, _ = _score(targets, shuffled)
    return {
        "cell_acc": accuracy,
        "mean_chebyshev": mean_distance,
        "matched_frac": n_matched / len(all_targets) if all_targets else float("nan"),
        "most_frequent_cell_baseline": baseline,
        "shuffled_cell_acc": shuffled_acc,
        "shuffled_chebyshev": shuffled_distance,
        "chance": 1.0 / grid**2,
        "n_targets": len(all_targets),
    }
