"""Hierarchical folder weights: anime_screenshot_pipeline's WeightTree, and multiply.txt.

Faithful to ASP's `generate_multiply.py` (Dec 2022 – Apr 2023):

- Weights CSV: rows `pattern,weight`, no header. A folder's weight is the row whose pattern
  equals the folder's basename, else the first row whose pattern `fnmatch`-es the folder's
  path, else 1. ASP matched against the path it walked, i.e. the root as given joined with the
  relative path (`str(root / rel)`); we also try the root-relative path (`rel`, "/"-separated),
  so rows written relative to the dataset root work wherever the root lives. Duplicate
  patterns behave as in ASP's dict: the last weight wins, at the first row's position.
- Folders holding no image anywhere below them are ignored. From the root (p = 1) each child
  gets `p_parent * w_child / sum(w_siblings)`; a folder that holds images itself adds one
  extra sibling for those images whose weight is the folder's own weight.
- per-image weight = p / n_images; multiply = per-image weight / min(per-image weight) *
  min_multiply, rounded half-to-even (numpy) to an int (Dec 2022) or to 2 decimals (later),
  then capped at max_multiply. multiply.txt holds `str(int)` or `str(float)` of that value.

Extension: a folder whose weights make its probability 0 gets multiply 0 (ASP divided by 0).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

# The files ymn reads as images (suffix, any case) and the shard member each is packed as.
IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
MULTIPLY_FILE = "multiply.txt"
Rounding = Literal["int", "2"]


@dataclass(frozen=True)
class FolderWeight:
    """Sampling probability, image count and multiply of one image folder."""

    prob: float
    n_images: int
    multiply_raw: float
    multiply: float


@dataclass
class _Node:
    rel: str  # root-relative path with "/" separators; "." for the root itself
    n_images: int
    children: list[_Node] = field(default_factory=list)


def is_image(path: str | Path) -> bool:
    """True for the files ymn weighs and packs as images: by suffix (never decoded), not hidden."""
    name = Path(path).name
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")


def read_weights_csv(path: Path) -> list[tuple[str, float]]:
    """Read an ASP weights CSV (`pattern,weight` rows, no header); blank lines are skipped."""
    rows: list[tuple[str, float]] = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            try:
                if len(row) != 2:
                    raise ValueError(f"expected 2 columns, got {len(row)}")
                weight = float(row[1])
                if not math.isfinite(weight) or weight < 0:
                    raise ValueError(f"weight must be a finite number >= 0, got {row[1]!r}")
            except ValueError as err:
                raise ValueError(
                    f"{path}:{line_no}: bad weights row {row!r} ({err}); "
                    "each row must be `pattern,weight` with no header"
                ) from None
            rows.append((row[0], weight))
    return rows


def _scan(folder: Path, rel: str) -> _Node | None:
    """Walk `folder`, keeping only sub-folders with images somewhere below them."""
    node = _Node(rel=rel, n_images=0)
    subdirs: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):  # as ymn-pack skips them
                subdirs.append(entry.name)
            elif entry.is_file() and is_image(entry.name):
                node.n_images += 1
    for name in sorted(subdirs):
        child = _scan(folder / name, name if rel == "." else f"{rel}/{name}")
        if child is not None:
            node.children.append(child)
    return node if node.n_images or node.children else None


class _WeightLookup:
    """ASP's `modify_weight`: basename match, else first fnmatch-ing pattern, else 1."""

    def __init__(self, root: Path, weights: Sequence[tuple[str, float]]) -> None:
        self.root = str(root)
        self.mapping = {pattern: float(w) for pattern, w in weights}

    def __call__(self, rel: str) -> float:
        full = self.root if rel == "." else os.path.join(self.root, *rel.split("/"))
        basename = os.path.basename(full)
        if basename in self.mapping:
            return self.mapping[basename]
        for pattern, weight in self.mapping.items():
            if fnmatch.fnmatch(full, pattern) or (rel != "." and fnmatch.fnmatch(rel, pattern)):
                return weight
        return 1.0


def _assign_probs(
    node: _Node, prob: float, weight_of: _WeightLookup, own_weight: float, out: list
) -> None:
    """ASP's `compute_sampling_prob`: split `prob` over children (+ own images)."""
    weights = [weight_of(child.rel) for child in node.children]
    if node.n_images:
        weights.append(own_weight)
    total = float(np.sum(weights))
    shares = np.asarray(weights, dtype=float) / total if total > 0 else np.zeros(len(weights))
    if node.n_images:
        out.append((node.rel, prob * shares[-1], node.n_images))
    for child, share, weight in zip(node.children, shares, weights, strict=False):
        _assign_probs(child, prob * share, weight_of, weight, out)


def _round_multiply(raw: np.ndarray, rounding: Rounding, max_multiply: float) -> np.ndarray:
    if rounding == "int":
        return np.minimum(np.around(raw).astype(int), max_multiply)
    if rounding == "2":
        return np.minimum(np.around(raw, 2), max_multiply)
    raise ValueError(f"rounding must be 'int' or '2', got {rounding!r}")


def compute_weights(
    root: Path,
    weights: Sequence[tuple[str, float]] = (),
    min_multiply: float = 1.0,
    max_multiply: float = 250.0,
    rounding: Rounding = "int",
) -> dict[str, FolderWeight]:
    """Sampling probability and multiply of every image folder under `root` (ASP WeightTree).

    Keys are folder paths relative to `root` with "/" separators ("." for `root` itself);
    only folders holding at least one image appear. `weights` are `(pattern, weight)` rows.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a folder")
    tree = _scan(root, ".")
    if tree is None:
        return {}
    weight_of = _WeightLookup(root, weights)
    rows: list[tuple[str, float, int]] = []
    _assign_probs(tree, 1.0, weight_of, weight_of("."), rows)
    probs = np.array([r[1] for r in rows], dtype=float)
    counts = np.array([r[2] for r in rows], dtype=float)
    per_image = probs / counts
    positive = per_image[per_image > 0]
    if positive.size == 0:
        raise ValueError(f"every folder under {root} has weight 0; give some folder a weight > 0")
    raw = per_image / positive.min() * min_multiply
    final = _round_multiply(raw, rounding, max_multiply)
    return {
        rel: FolderWeight(float(p), n, float(m_raw), float(m))
        for (rel, p, n), m_raw, m in zip(rows, raw, final, strict=True)
    }


def format_multiply(value: float, rounding: Rounding = "int") -> str:
    """multiply.txt text as ASP wrote it: `str(int)` for "int", `str(float)` for "2"."""
    return str(int(value)) if rounding == "int" else str(float(value))


def write_multiply_files(
    root: Path, folder_weights: Mapping[str, FolderWeight], rounding: Rounding = "int"
) -> None:
    """Write `multiply.txt` into every folder of `folder_weights` (relative to `root`)."""
    for rel, fw in folder_weights.items():
        folder = Path(root) if rel == "." else Path(root, *rel.split("/"))
        (folder / MULTIPLY_FILE).write_text(format_multiply(fw.multiply, rounding))


# --- category tree (data config) -> weight rows ------------------------------------------------


def _escape(rel: str) -> str:
    """fnmatch pattern matching exactly `rel`; top-level names get their first character
    bracketed so the row can never be an exact basename match for a deeper folder."""
    escaped = "".join(f"[{c}]" if c in "*?[" else c for c in rel)
    if "/" not in rel and not escaped.startswith("["):
        escaped = f"[{escaped[0]}]{escaped[1:]}"
    return escaped


def _parent(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _complete_tree(tree: Mapping[str, Any]) -> dict[str, float]:
    """Validate the targets and add implied ancestors (target = sum of their named children)."""
    targets: dict[str, float] = {}
    for key, value in tree.items():
        rel = str(key).strip("/")
        if not rel or "//" in rel or not isinstance(value, int | float) or value < 0:
            raise ValueError(
                f"category tree entry {key!r}: {value!r} must map a folder path relative to "
                "the dataset root to a probability >= 0"
            )
        targets[rel] = float(value)
    full = dict(targets)
    implied = {anc for rel in targets for anc in _ancestors(rel)} - set(targets)
    for rel in sorted(implied, key=lambda r: r.count("/"), reverse=True):  # bottom-up
        full[rel] = sum(v for k, v in full.items() if _parent(k) == rel)
    return full


def _unnamed_children(root: Path | None, parent: str, named: set[str]) -> int:
    """How many image-holding children of `parent` are not named (1 when `root` is unknown)."""
    if root is None:
        return 1
    folder = Path(root, *parent.split("/")) if parent else Path(root)
    if not folder.is_dir():
        return 0
    with os.scandir(folder) as entries:
        subdirs = [e.name for e in entries if e.is_dir()]
    unnamed = 0
    for name in subdirs:
        rel = f"{parent}/{name}" if parent else name
        if rel not in named and _scan(folder / name, rel) is not None:
            unnamed += 1
    return unnamed


def weights_from_category_tree(
    tree: Mapping[str, Any], root: Path | None = None
) -> list[tuple[str, float]]:
    """Weight rows that make named subtrees come out at configured absolute probabilities.

    `tree` maps root-relative folder paths to target probabilities of their whole subtree,
    e.g. `{"yamanosusume/screenshots": 0.3, "yamanosusume/fanart": 0.2, "regularization": 0.5,
    "regularization/hands": 0.05}`. Unnamed ancestors of named folders get the sum of their
    named children. Under a parent with named children, what is left of its probability goes
    to its unnamed children, shared equally among those holding images (counted when `root`
    is given; without `root` one unnamed sibling is assumed). Unnamed folders below that share
    their parent's probability equally (all get the same catch-all row). Not corrected for: a
    named folder's parent holding images itself (its images form an extra sibling).
    Rows come named-first, then catch-alls deepest first, so first-match order is right.
    """
    full = _complete_tree(tree)
    targets = {"": 1.0, **full}
    named_rows = [
        (_escape(rel), value)
        for rel, value in sorted(full.items(), key=lambda kv: (-kv[0].count("/"), kv[0]))
    ]
    catch_all: list[tuple[int, str, float]] = []
    for parent, target in targets.items():
        children = [rel for rel in full if _parent(rel) == parent]
        pattern = f"{_escape(parent)}/*" if parent else "*"
        if not children:
            catch_all.append((parent.count("/") + 1, pattern, 1.0))
            continue
        left = target - sum(full[c] for c in children)
        if left < -1e-9:
            raise ValueError(
                f"category tree: the children of {parent or 'the root'!r} sum to "
                f"{target - left:.6g}, more than its probability {target:.6g}; lower them"
            )
        n_unnamed = _unnamed_children(root, parent, set(full))
        depth = parent.count("/") + 1 if parent else 0
        catch_all.append((depth, pattern, max(left, 0.0) / max(n_unnamed, 1)))
    catch_all.sort(key=lambda row: -row[0])
    return named_rows + [(pattern, weight) for _, pattern, weight in catch_all]


# --- CLI ---------------------------------------------------------------------------------------


def _summary(folder_weights: Mapping[str, FolderWeight]) -> str:
    n_images = sum(fw.n_images for fw in folder_weights.values())
    virtual = sum(fw.n_images * fw.multiply for fw in folder_weights.values())
    lines = [f"{'folder':<70} {'images':>7} {'prob':>9} {'multiply':>8}"]
    ranked = sorted(folder_weights.items(), key=lambda kv: kv[1].multiply_raw)
    shown = ranked if len(ranked) <= 10 else ranked[:5] + ranked[-5:]
    for i, (rel, fw) in enumerate(shown):
        if len(ranked) > 10 and i == 5:
            lines.append(f"... ({len(ranked) - 10} more folders)")
        name = rel if len(rel) <= 70 else "..." + rel[-67:]
        lines.append(f"{name:<70} {fw.n_images:>7} {fw.prob:>9.5f} {fw.multiply:>8g}")
    lines.append(
        f"folders: {len(folder_weights)}  images: {n_images}  "
        f"sum multiply (virtual dataset size): {virtual:g}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: `ymn-balance ROOT [--weights CSV] [--min-multiply X] [--max-multiply N]
    [--round int|2] [--write-multiply] [--json OUT]`."""
    parser = argparse.ArgumentParser(
        prog="ymn-balance", description="ASP WeightTree: folder probabilities and multiply.txt"
    )
    parser.add_argument("root", type=Path, help="dataset root folder")
    parser.add_argument("--weights", type=Path, help="CSV of `pattern,weight` rows, no header")
    parser.add_argument("--min-multiply", type=float, default=1.0)
    parser.add_argument("--max-multiply", type=float, default=250.0)
    parser.add_argument("--round", dest="rounding", choices=["int", "2"], default="int")
    parser.add_argument("--write-multiply", action="store_true", help="write multiply.txt files")
    parser.add_argument("--json", type=Path, help="write {folder: {prob, n_images, multiply}}")
    args = parser.parse_args(argv)

    try:
        rows = read_weights_csv(args.weights) if args.weights else []
        result = compute_weights(
            args.root, rows, args.min_multiply, args.max_multiply, args.rounding
        )
    except (FileNotFoundError, ValueError) as error:  # a user's path or CSV: no traceback
        raise SystemExit(f"ymn-balance: {error}") from error
    if args.write_multiply:
        write_multiply_files(args.root, result, args.rounding)
    if args.json:
        payload = {
            rel: {"prob": fw.prob, "n_images": fw.n_images, "multiply": fw.multiply}
            for rel, fw in result.items()
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    else:
        print(_summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
