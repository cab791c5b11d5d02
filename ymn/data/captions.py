"""Build ASP (Jan 2023) captions from metadata, per draw, with the failure ablations' variants.

Caption parts, joined by ", " and each kept with its own probability: count, characters,
`from {copyright}`, general, `by {artist}`, `explicit`, face-position tokens, tags; finally
`_` becomes a space. Conditional dropout replaces the whole caption by " " (one space).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ymn.data.caption_tags import apply_tag_controls
from ymn.data.caption_tokens import CUT_MARK, mark_cut
from ymn.data.metadata import IMAGE_SUFFIXES, MetadataError, load_metadata, normalize_metadata

DROPOUT_CAPTION = " "
UNKNOWN_CHARACTERS = ("unknown", "ood")
MAX_COUNT = 5  # ASP writes "many" from 6 people on

# Face-position token names per grid, (horizontal left→right, vertical top→bottom).
# asp5: ASP's own tokens. asp3: ours, a 3x3 grid (left/centre/right, up/centre/down), spelt so
# CLIP splits each into `fh`/`fv` + one piece as it does the asp5 tokens; no overlap with asp5.
# words5: plain single English words, so a face reads "{h} {v}" like ASP's tokens do.
GRID_TOKENS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "asp5": (("fhll", "fhml", "fhmd", "fhmr", "fhri"), ("fvtp", "fvmt", "fvmd", "fvmb", "fvbt")),
    "asp3": (("fhlt", "fhce", "fhrd"), ("fvup", "fvce", "fvdn")),
    "words5": (
        ("leftmost", "left", "center", "right", "rightmost"),
        ("top", "upper", "middle", "lower", "bottom"),
    ),
}
NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()


@dataclass
class CaptionConfig:
    """How captions are built from metadata (Hydra config group `caption`).

    keep_*: probability of keeping each part (ASP's `--use_*_prob`; ASP's defaults: 1, and 0
    for copyright). max_tags <= 0 keeps every tag. dropout: probability of the " " caption.
    fixed_first / shuffle_parts / tag_dropout / protected_tags / prefix: tag-level controls
    on the comma-separated parts (`ymn.data.caption_tags`; off by default).
    """

    keep_count: float = 1.0
    keep_characters: float = 1.0
    keep_copyright: float = 0.0
    keep_general: float = 1.0
    keep_artist: float = 1.0
    keep_explicit: float = 1.0
    keep_facepos: float = 1.0
    keep_tags: float = 1.0
    count_position: Literal["first", "last", "absent"] = "first"
    count_spelling: Literal["asp", "words"] = "asp"
    grid: Literal["asp5", "asp3", "words5"] = "asp5"
    tag_shuffle: bool = True
    max_tags: int = 15
    drop_hair_tags: bool = False
    drop_eye_tags: bool = False
    # whose captions the two drops above apply to: "all", or "named" (scenes with a roster name
    # only: people without a name keep their colour tags, so an untagged colour is a name's)
    look_tags_dropped_for: Literal["all", "named"] = "all"
    dropout: float = 0.15
    fixed_first: int = 0  # kohya keep_tokens / ED2 keep_tags: parts never moved or dropped
    shuffle_parts: bool = False  # kohya shuffle_caption: shuffle the parts after those
    tag_dropout: float = 0.0  # kohya caption_tag_dropout_rate: per part, protected ones kept
    protected_tags: tuple[str, ...] = ()  # never dropped (names, counts, grid tokens always)
    prefix: str = ""  # kohya caption_prefix: always first

    def __post_init__(self) -> None:
        self.protected_tags = tuple(str(t) for t in self.protected_tags or ())
        if not isinstance(self.fixed_first, int) or self.fixed_first < 0:
            raise ValueError(
                f"CaptionConfig.fixed_first must be an int >= 0, got {self.fixed_first}"
            )
        for f in fields(self):
            if f.name.startswith("keep_") or f.name in ("dropout", "tag_dropout"):
                value = getattr(self, f.name)
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"CaptionConfig.{f.name} must be in [0, 1], got {value}")
        choices = {
            "count_position": ("first", "last", "absent"),
            "count_spelling": ("asp", "words"),
            "grid": tuple(GRID_TOKENS),
            "look_tags_dropped_for": ("all", "named"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"CaptionConfig.{name} must be one of {allowed}")


def caption_config(caption: CaptionConfig | Mapping[str, Any] | None) -> CaptionConfig:
    """A CaptionConfig from one, a (Hydra) mapping (`_target_` and other `_` keys ignored), or
    None (ASP's defaults)."""
    if caption is None:
        return CaptionConfig()
    if isinstance(caption, CaptionConfig):
        return caption
    return CaptionConfig(**{k: v for k, v in dict(caption).items() if not k.startswith("_")})


def load_caption_config(path: Path) -> CaptionConfig:
    """Read a `ymn/conf/caption/*.yaml` file (its `_target_` key is ignored)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a caption config must be a mapping")
    values.pop("_target_", None)
    known = {f.name for f in fields(CaptionConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown CaptionConfig keys {unknown}; known: {sorted(known)}")
    return CaptionConfig(**values)


def count_token(n_people: int | str, spelling: str = "asp") -> str:
    """`3people`, `1person`, `manypeople`, `0people` (asp); `three people`, `one person` (words)."""
    if n_people == "many":
        number = "many"
    elif isinstance(n_people, int) and not isinstance(n_people, bool) and n_people >= 0:
        if spelling == "words" and n_people < len(NUMBER_WORDS):
            number = NUMBER_WORDS[n_people]
        else:
            number = str(n_people)
    else:
        raise ValueError(f"n_people must be an int >= 0 or 'many', got {n_people!r}")
    noun = "person" if n_people == 1 else "people"
    if spelling == "asp":
        return f"{number}{noun}"
    if spelling == "words":
        return f"{number} {noun}"
    raise ValueError(f"count spelling must be 'asp' or 'words', got {spelling!r}")


def _cell(centre: float, grid_size: int) -> int:
    # ASP's strict `<` cuts at k/grid_size: a centre exactly on a cut goes to the next cell.
    return sum(centre >= k / grid_size for k in range(1, grid_size))


def grid_cell(facebox: Sequence[float], grid_size: int = 5) -> tuple[int, int]:
    """(col, row) of a face box's centre on a grid_size x grid_size grid; box = [l, t, r, b]."""
    left, top, right, bottom = facebox
    return _cell((left + right) / 2, grid_size), _cell((top + bottom) / 2, grid_size)


def face_grid_tokens(facepos: Sequence[Sequence[float]], grid: str = "asp5") -> str:
    """One `"{h} {v}"` per face, in face order, joined by a space (ASP's parse_facepos)."""
    if grid not in GRID_TOKENS:
        raise ValueError(f"unknown grid {grid!r}; choose one of {sorted(GRID_TOKENS)}")
    horizontal, vertical = GRID_TOKENS[grid]
    words = []
    for box in facepos:
        col, row = grid_cell(box, len(horizontal))
        words.append(f"{horizontal[col]} {vertical[row]}")
    return " ".join(words)


def order_tags(
    tags: Sequence[str], cfg: CaptionConfig, rng: random.Random, *, drop_look: bool = True
) -> list[str]:
    """Tags containing boy/girl/solo first (kept in order), the rest optionally shuffled; cut.
    Hair and eye tags go as `cfg` says, unless `drop_look` is false."""
    people, rest = [], []
    for tag in tags:
        if "boy" in tag or "girl" in tag or "solo" in tag:
            people.append(tag)
        elif "hair" in tag or "ponytail" in tag or "twintail" in tag:
            if not (cfg.drop_hair_tags and drop_look):
                rest.append(tag)
        elif "eye" in tag:
            if not (cfg.drop_eye_tags and drop_look):
                rest.append(tag)
        else:
            rest.append(tag)
    if cfg.tag_shuffle:
        rng.shuffle(rest)
    ordered = people + rest
    return ordered[: cfg.max_tags] if cfg.max_tags > 0 else ordered


def _parts(meta: Mapping[str, Any], cfg: CaptionConfig, rng: random.Random) -> list[str]:
    """The caption parts in ASP's order; one rng draw per part, as ASP does."""
    parts: list[str] = []
    count = None
    if rng.random() < cfg.keep_count and meta.get("n_people") is not None:
        count = count_token(meta["n_people"], cfg.count_spelling)
    keep_characters = rng.random() < cfg.keep_characters
    names = [c for c in meta.get("characters") or [] if c not in UNKNOWN_CHARACTERS]
    if keep_characters and names:
        parts.append(" ".join(names))
    if rng.random() < cfg.keep_copyright and meta.get("copyright"):
        parts.append(f"from {meta['copyright']}")
    if rng.random() < cfg.keep_general and meta.get("general"):
        parts.append(meta["general"])
    if rng.random() < cfg.keep_artist and meta.get("artist"):
        parts.append(f"by {meta['artist']}")
    if rng.random() < cfg.keep_explicit and meta.get("rating") == "explicit":
        parts.append("explicit")
    if rng.random() < cfg.keep_facepos and meta.get("facepos"):
        parts.append(face_grid_tokens(meta["facepos"], cfg.grid))
    if rng.random() < cfg.keep_tags:
        drop_look = cfg.look_tags_dropped_for == "all" or bool(names)
        tags = order_tags(meta.get("tags") or [], cfg, rng, drop_look=drop_look)
        if tags:
            parts.append(", ".join(tags))
    if count is not None and cfg.count_position == "first":
        parts.insert(0, count)
    elif count is not None and cfg.count_position == "last":
        parts.append(count)
    return parts


def build_caption(
    meta: Mapping[str, Any], cfg: CaptionConfig, rng: random.Random, *, dropout: bool = True
) -> str:
    """The caption of one draw of `meta` (normalised metadata); " " when dropped out.

    Caption-only metadata (a `caption` string) returns that caption unchanged.
    """
    if dropout and rng.random() < cfg.dropout:
        return DROPOUT_CAPTION
    text = meta["caption"] if meta.get("caption") is not None else ", ".join(_parts(meta, cfg, rng))
    if cfg.shuffle_parts or cfg.tag_dropout > 0 or cfg.prefix:
        text = apply_tag_controls(text, meta, rng, **_tag_settings(cfg), dropout=dropout)
    return text if meta.get("caption") is not None else text.replace("_", " ")


def _tag_settings(cfg: CaptionConfig) -> dict[str, Any]:
    """The tag-control keyword arguments of `apply_tag_controls` for `cfg`."""
    return {
        "fixed_first": cfg.fixed_first,
        "shuffle_parts": cfg.shuffle_parts,
        "tag_dropout": cfg.tag_dropout,
        "protected_tags": cfg.protected_tags,
        "prefix": cfg.prefix,
        "number_words": NUMBER_WORDS,
        "grid_words": [*GRID_TOKENS[cfg.grid][0], *GRID_TOKENS[cfg.grid][1]],
    }


def control_tokens() -> list[str]:
    """Count tokens (`0people`…`5people`, `manypeople`) and every grid token of every grid."""
    counts = [count_token(n) for n in range(MAX_COUNT + 1)] + [count_token("many")]
    grids = [tok for h, v in GRID_TOKENS.values() for tok in (*h, *v)]
    return counts + grids


def control_token_report(tokenizer: Any) -> str:
    """How `tokenizer` (a CLIP tokenizer) splits each control token, one line per token."""
    lines = ["control-token tokenization (token -> BPE pieces):"]
    for token in control_tokens():
        pieces = tokenizer.tokenize(token)
        lines.append(f"  {token:<10} -> {' | '.join(pieces)}  ({len(pieces)} pieces)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command line


def _iter_tar(path: Path) -> Iterator[tuple[str, dict]]:
    """(`shard.tar:key`, metadata) for each sample's `json` member of a webdataset shard."""
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                name = member.name
                base = name.rsplit("/", 1)[-1]
                if not member.isfile() or "." not in base:
                    continue
                key, ext = base.split(".", 1)  # webdataset: extension = after the first dot
                if ext != "json":
                    continue
                source = f"{path}:{name}"
                try:
                    raw = json.loads(tar.extractfile(member).read().decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    raise MetadataError(f"{source}: cannot read sample JSON ({err})") from err
                yield f"{path}:{key}", normalize_metadata(raw, source)
    except tarfile.TarError as err:
        raise MetadataError(f"{path}: not a readable tar shard ({err})") from err


def iter_metadata(path: Path) -> Iterator[tuple[str, dict]]:
    """(name, metadata) for a metadata JSON, an image, a folder (recursive) or a `.tar` shard."""
    path = Path(path)
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            yield str(item), load_metadata(item)
    elif path.suffix == ".tar":
        yield from _iter_tar(path)
    elif path.is_file():
        yield str(path), load_metadata(path)
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")


def _load_tokenizer(max_token_length: int = 77) -> tuple[Any, str | None]:
    """(CLIP tokenizer, None), or (None, why not) when it cannot be loaded here."""
    try:
        from ymn.data.tokenizer import load_clip_tokenizer, set_max_token_length

        tokenizer = load_clip_tokenizer()
        set_max_token_length(tokenizer, max_token_length)
        return tokenizer, None
    except (ImportError, FileNotFoundError) as err:
        return None, str(err)


def _caption_line(name: str, caption: str, tokenizer: Any) -> str:
    """`name<TAB>caption` and, with a tokenizer, `<TAB>N tokens` (the cut marked when over)."""
    if tokenizer is None:
        return f"{name}\t{caption}"
    from ymn.data.tokenizer import token_limit

    limit = token_limit(tokenizer)  # 77, or model.max_token_length + 2
    marked, n_tokens = mark_cut(tokenizer, caption, limit)
    over = f" ({n_tokens - limit} lost after{CUT_MARK.rstrip()})" if n_tokens > limit else ""
    return f"{name}\t{marked}\t{n_tokens}/{limit} tokens{over}"


def _with_overrides(
    cfg: CaptionConfig, pairs: Sequence[str], parser: argparse.ArgumentParser
) -> CaptionConfig:
    """`cfg` with `--set key=value` pairs applied (values parsed as YAML: 2, true, [a, b])."""
    import yaml

    values = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in values:
            parser.error(f"--set {pair!r}: use KEY=VALUE with KEY one of {sorted(values)}")
        values[key] = yaml.safe_load(value) if value else ""
    try:
        return CaptionConfig(**values)
    except (TypeError, ValueError) as err:
        parser.error(str(err))


def main(argv: Sequence[str] | None = None) -> int:
    """`ymn-caption PATH`: print `path<TAB>caption<TAB>N/77 tokens` per image (CLIP's cut
    marked `<|cut|>` in captions over the limit), then the control-token report."""
    parser = argparse.ArgumentParser(prog="ymn-caption", description=main.__doc__)
    parser.add_argument("path", type=Path, help="metadata JSON, image, folder, or shard .tar")
    parser.add_argument("--config", type=Path, help="a ymn/conf/caption/*.yaml (default: asp)")
    parser.add_argument("--all-parts", action="store_true", help="keep every part (p = 1)")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the tag order")
    parser.add_argument("--no-dropout", action="store_true", help="never return ' '")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=1, help="captions per image (redraws)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a CaptionConfig key"
    )
    parser.add_argument("--no-report", action="store_true", help="skip the tokenizer report")
    parser.add_argument("--no-tokens", action="store_true", help="print captions only")
    parser.add_argument("--max-token-length", type=int, default=77, help="model.max_token_length")
    args = parser.parse_args(argv)

    cfg = load_caption_config(args.config) if args.config else CaptionConfig()
    cfg = _with_overrides(cfg, args.set, parser)
    if args.all_parts:
        for f in fields(cfg):
            if f.name.startswith("keep_"):
                setattr(cfg, f.name, 1.0)
    if args.no_shuffle:
        cfg.tag_shuffle = False
    tokenizer, why = (
        (None, None)
        if args.no_tokens and args.no_report
        else _load_tokenizer(args.max_token_length)
    )
    if why is not None:
        print(f"ymn-caption: no token counts ({why})", file=sys.stderr)
    rng = random.Random(args.seed)
    try:
        for name, meta in iter_metadata(args.path):
            for _ in range(max(args.draws, 1)):
                caption = build_caption(meta, cfg, rng, dropout=not args.no_dropout)
                print(_caption_line(name, caption, None if args.no_tokens else tokenizer))
    except (MetadataError, FileNotFoundError) as err:
        print(f"ymn-caption: {err}", file=sys.stderr)
        return 2
    if not args.no_report and tokenizer is not None:
        print(control_token_report(tokenizer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
