"""Writing a packed folder: tar shards with their checksums, the manifest, the up-to-date check.

`ymn-pack` (`ymn.data.pack`) decides what goes into the shards; this module puts it on disk
so that the bytes depend only on the samples: tar entries carry a fixed mtime and owner, each
shard is written under a temporary name and renamed when complete, and `manifest.json` is
replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

TAR_MTIME = 946684800.0  # 2000-01-01: a fixed mtime keeps re-packs byte-identical
SHARD_NAME = "shard-{:06d}.tar"


class ShardSink:
    """Write samples into `OUT/shard-NNNNNN.tar`, `shard_size` per shard, recording checksums."""

    def __init__(self, out: Path, shard_size: int) -> None:
        import webdataset as wds

        self._wds = wds
        self.out, self.shard_size = out, shard_size
        self.shards: list[dict[str, Any]] = []
        self._writer: Any = None
        self._count = 0

    def write(self, sample: dict[str, Any]) -> None:
        """Append one sample dict (`__key__` plus bytes values), opening a new shard when full."""
        if self._writer is None:
            name = SHARD_NAME.format(len(self.shards))
            self._tmp = self.out / (name + ".tmp")
            self._writer = self._wds.TarWriter(
                str(self._tmp), mtime=TAR_MTIME, user="ymn", group="ymn", encoder=False
            )
            self.shards.append({"name": name, "n_samples": 0, "sha256": "", "size": 0})
        self._writer.write(sample)
        self.shards[-1]["n_samples"] += 1
        if self.shards[-1]["n_samples"] >= self.shard_size:
            self._finish()

    def close(self) -> None:
        """Finish the open shard, if any."""
        if self._writer is not None:
            self._finish()

    def _finish(self) -> None:
        self._writer.close()
        self._writer = None
        final = self.out / self.shards[-1]["name"]
        os.replace(self._tmp, final)
        self.shards[-1]["sha256"] = file_sha256(final)
        self.shards[-1]["size"] = final.stat().st_size


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inputs_fingerprint(root: Path, options: dict[str, Any]) -> str:
    """sha256 over every file's relative path, size and mtime under ROOT, plus the options."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            rel = Path(dirpath, name).relative_to(root).as_posix()
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def up_to_date(out: Path, fingerprint: str) -> dict[str, Any] | None:
    """The existing manifest when it was built from identical inputs and its shards exist."""
    path = out / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("inputs", {}).get("fingerprint") != fingerprint:
        return None
    if not all((out / s["name"]).is_file() for s in manifest.get("shards", [])):
        return None
    return manifest


def remove_stale_shards(out: Path, keep: set[str]) -> None:
    """Delete shards of an earlier, larger pack so the folder matches the new manifest."""
    for path in out.glob("shard-*.tar*"):
        if path.name not in keep:
            path.unlink()


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write `OUT/manifest.json` (sorted keys, UTF-8) through a temporary file and a rename."""
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    tmp = out / "manifest.json.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "manifest.json")
