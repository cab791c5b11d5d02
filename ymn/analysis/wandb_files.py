"""wandb runs without the wandb server: the offline `run-*.wandb` log, and the API when online.

An offline run (`<run dir>/wandb/offline-run-*/`) keeps everything it logged in `run-<id>.wandb`,
a leveldb-style record log of protobuf `Record`s. The framing is read here in plain Python; the
protobuf messages need wandb's own `wandb_internal_pb2`, so without wandb installed only the
files beside the log (`files/config.yaml`, `files/wandb-summary.json`, written by `wandb sync`)
are read. Nothing here is required: every reader returns empty results instead of failing.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HEADER_LEN = 7  # file header: ident ":W&B", magic uint16, version uint8; record header: same size
BLOCK_LEN = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
STEP_KEYS = ("trainer/global_step", "_step")  # Lightning's step first, wandb's own as fallback

Scalars = dict[str, dict[int, float]]


def read_records(path: str | Path) -> Iterator[bytes]:
    """The payloads of a leveldb-log file (records never cross a 32 KiB block; short tails pad).

    A truncated last record (a run still writing, or killed) ends the iteration quietly.
    """
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a wandb run log (no ':W&B' header)")
    pos, pending = HEADER_LEN, b""
    while pos + HEADER_LEN <= len(data):
        left = BLOCK_LEN - pos % BLOCK_LEN
        if left < HEADER_LEN:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER_LEN])
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += left
            continue
        end = pos + HEADER_LEN + length
        if end > len(data):
            return
        payload, pos = data[pos + HEADER_LEN : end], end
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload
            pending = b""


def _number(value_json: str) -> float | None:
    try:
        value = json.loads(value_json)
    except ValueError:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _history_row(record: Any) -> dict[str, str]:
    return {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}


def _media(row: dict[str, str], offline_dir: Path) -> dict[str, list[Path]]:
    """Image keys of one history row → their files (`<key>/filenames`, relative to files/)."""
    media = {}
    for key, value_json in row.items():
        if key.endswith("/filenames"):
            names = json.loads(value_json)
            media[key.removesuffix("/filenames")] = [offline_dir / "files" / n for n in names]
    return media


def parse_offline_log(path: Path) -> dict[str, Any] | None:
    """Config, scalar history (key → step → value) and image files (key → step → paths).

    None when wandb (for its protobuf messages) is not importable.
    """
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError:
        log.info("wandb is not installed: %s is skipped (the run dir files are read)", path)
        return None
    config: dict[str, Any] = {}
    scalars: Scalars = {}
    images: dict[str, dict[int, list[Path]]] = {}
    for payload in read_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            row = _history_row(record)
            step_json = next((row[k] for k in STEP_KEYS if k in row), None)
            if step_json is None:
                continue
            step = int(float(step_json))
            # media (images, tables) are nested: `<key>/_type`, `<key>/width`, ... are no metrics
            media_keys = tuple(k.removesuffix("_type") for k in row if k.endswith("/_type"))
            for key, value_json in row.items():
                if key.startswith("_") or key in STEP_KEYS or key.startswith(media_keys):
                    continue
                value = _number(value_json)
                if value is not None:
                    scalars.setdefault(key, {})[step] = value
            for key, files in _media(row, path.parent).items():
                images.setdefault(key, {})[step] = files
    config.pop("_wandb", None)
    return {"config": config, "scalars": scalars, "images": images}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    # wandb's config.yaml wraps each key as {value: ..., desc: ...}
    return {k: v.get("value", v) if isinstance(v, dict) else v for k, v in data.items()}


def load_offline_run(offline_dir: str | Path) -> dict[str, Any]:
    """One `offline-run-*` folder: {"dir", "config", "summary", "scalars", "images"}."""
    offline_dir = Path(offline_dir)
    out: dict[str, Any] = {"dir": offline_dir, "config": {}, "summary": {}, "scalars": {}}
    out["images"] = {}
    config_file = offline_dir / "files" / "config.yaml"
    summary_file = offline_dir / "files" / "wandb-summary.json"
    if config_file.is_file():
        out["config"] = _read_yaml(config_file)
    if summary_file.is_file():
        out["summary"] = json.loads(summary_file.read_text())
    for log_file in sorted(offline_dir.glob("run-*.wandb")):
        try:
            parsed = parse_offline_log(log_file)
        except Exception as error:  # a damaged log must not hide the rest of the run
            log.warning("Could not read %s (%s); skipping it", log_file, error)
            continue
        if parsed:
            out["config"] = parsed["config"] | out["config"]
            out["scalars"] |= parsed["scalars"]
            out["images"] |= parsed["images"]
    return out


def offline_run_dirs(run_dir: str | Path) -> list[Path]:
    """The `wandb/offline-run-*` (and synced `run-*`) folders of a run directory, oldest first."""
    wandb_dir = Path(run_dir) / "wandb"
    dirs = [*wandb_dir.glob("offline-run-*"), *wandb_dir.glob("run-*")]
    return sorted(d for d in dirs if d.is_dir())


def fetch_online_runs(path: str, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Runs of `entity/project` from the wandb API as plain dicts; [] when offline or failing.

    Each: {"name", "config", "scalars"}. Never raises: the API is optional for ymn.
    """
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled"):
        log.info("WANDB_MODE=%s: the wandb API is not queried", os.environ["WANDB_MODE"])
        return []
    try:
        import wandb

        runs = wandb.Api(timeout=30).runs(path, filters=filters or {})
        return [_online_run(run) for run in runs]
    except Exception as error:  # no wandb, no network, no API key, no such project
        log.warning("wandb API: could not load %s (%s); using local runs only", path, error)
        return []


def _online_run(run: Any) -> dict[str, Any]:
    scalars: Scalars = {}
    for row in run.scan_history():
        step = row.get("trainer/global_step", row.get("_step"))
        if step is None:
            continue
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                if not key.startswith("_") and key not in STEP_KEYS:
                    scalars.setdefault(key, {})[int(step)] = float(value)
    config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
    return {
        "name": f"{run.group or ''}/{run.name}".strip("/"),
        "config": config,
        "scalars": scalars,
    }
