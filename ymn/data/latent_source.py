"""The cached-latent sample source: reading a latent cache made by `ymn-cache-latents`.

A cache folder holds `index.json` (settings, VAE fingerprint, categories, shards) and, per source
shard, `<name>.safetensors` (`{i}/{view}/mean` and `{i}/{view}/std`, view 1 = flipped) and
`<name>.json` (key, category, category_index, bucket and the cropped metadata of each view).
`LatentSource` serves the stream's draws from it: the same draw plan, shard split and shuffle
as pixels, `latents` (4, h, w) sampled as `mean + std * eps` per draw (`sample_posterior`) or
the mean, the flipped view by `flip_p`, a caption built per draw. Combinations that cannot be
right raise `LatentCacheError`: a random or jittered crop, flips the cache does not hold,
another resolution, another VAE.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ymn.data.captions import build_caption
from ymn.data.decode import Sample, SkipCounter, manifest_categories
from ymn.data.sample_source import Example, StreamConfig
from ymn.data.slots import slot_share

INDEX = "index.json"


class LatentCacheError(ValueError):
    """A latent cache that cannot serve the requested training configuration."""


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """A hash of the VAE's config and weights: a cache only serves the VAE that made it.
    Diffusers' private config keys (`_name_or_path`: where it was loaded from) are left out,
    so the same VAE matches wherever it lies (another checkout, a run's export)."""
    digest = hashlib.blake2b(digest_size=16)
    config = {k: v for k, v in dict(getattr(vae, "config", {})).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_index(cache: str | Path) -> dict[str, Any]:
    """The cache's index; LatentCacheError naming the folder and the fix when absent."""
    path = Path(cache) / INDEX
    if not path.is_file():
        raise LatentCacheError(
            f"no latent cache at {cache} (missing {INDEX}): run `ymn-cache-latents SHARDS {cache}`"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def check_cache(
    index: Mapping[str, Any], *, resolution: int, crop: str, flip_p: float,
    vae: Any = None, where: str = "latent cache",
) -> None:  # fmt: skip
    """Raise LatentCacheError if the cache cannot serve this configuration."""
    if crop == "random" or (crop != index["crop"]):
        raise LatentCacheError(
            f"{where}: data.crop={crop!r} but the cache holds {index['crop']!r} crops fixed at "
            f"cache time. Random or jittered crops cannot come from cached latents: set "
            f"data.crop={index['crop']!r}, or train from pixels (data=synthetic)."
        )
    if flip_p > 0 and not index["flip"]:
        raise LatentCacheError(
            f"{where}: data.flip_p={flip_p} but the cache has no flipped latents; "
            "re-run ymn-cache-latents with --flip, or set data.flip_p=0."
        )
    if int(resolution) != int(index["resolution"]):
        raise LatentCacheError(
            f"{where}: data.resolution={resolution} but the cache was made at "
            f"{index['resolution']}; re-run ymn-cache-latents --resolution {resolution}."
        )
    if vae is not None:
        check_vae(index, vae, where)


def check_vae(index: Mapping[str, Any], vae: Any, where: str = "latent cache") -> None:
    """Raise LatentCacheError if another VAE encoded the cache's latents."""
    if vae_fingerprint(vae) != index["vae"]:
        raise LatentCacheError(
            f"{where}: the model's VAE is not the VAE the latents were encoded with; re-run "
            "ymn-cache-latents with this model (--model PATH)."
        )


class CacheShard:
    """One cached shard: entries from its JSON, tensors read lazily from its safetensors."""

    def __init__(self, folder: Path, name: str) -> None:
        from safetensors import safe_open

        self.entries = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        self.file = safe_open(str(folder / f"{name}.safetensors"), framework="pt")

    def latent(
        self, i: int, view: int, sample: bool, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Entry `i`, view 0 (as cropped) or 1 (flipped): the mean or a posterior sample."""
        mean = self.file.get_tensor(f"{i}/{view}/mean").float()
        if not sample:
            return mean
        std = self.file.get_tensor(f"{i}/{view}/std").float()
        return mean + std * torch.randn(mean.shape, generator=generator)


@dataclass
class CachedSample(Sample):
    """A cache entry as the stream's `Sample` (no image bytes): where its latents are."""

    shard: CacheShard | None = field(default=None, repr=False)
    index: int = 0

    @property
    def entry(self) -> dict[str, Any]:
        return self.shard.entries[self.index]  # type: ignore[union-attr]


class LatentSource:
    """Samples of a latent cache folder, as latents. With `vae`, refuses a cache that another
    VAE made."""

    seed_name = "latents"
    batch_key = "latents"

    def __init__(
        self, cache: str | Path, *, sample_posterior: bool = True, vae: Any = None
    ) -> None:
        self.folder = Path(cache)
        self.index = read_index(cache)
        self.shards = [s["name"] for s in self.index["shards"]]
        self.manifest = {"categories": self.index["categories"]}
        self.categories = manifest_categories(self.index)
        self.sample_posterior = sample_posterior
        if vae is not None:
            check_vae(self.index, vae, str(cache))

    def check(self, config: StreamConfig) -> None:
        """LatentCacheError when the cache's crop, flips or resolution do not fit `config`."""
        check_cache(self.index, resolution=config.resolution, crop=config.crop,
                    flip_p=config.flip_p, where=str(self.folder))  # fmt: skip

    def read(
        self, shards: Sequence[str], slot: int, slots: int, counter: SkipCounter
    ) -> Iterator[Sample]:
        """This slot's cache entries of `shards` (split as tar samples are)."""

        def entries(name: str) -> Iterator[tuple[CacheShard, int]]:
            shard = CacheShard(self.folder, name)
            return ((shard, i) for i in range(len(shard.entries)))

        for name, (shard, i) in slot_share(shards, slot, slots, entries):
            entry = shard.entries[i]
            meta = {"category": entry["category"], "category_index": entry["category_index"]}
            where = f"{self.folder / name}:{entry['key']}"
            yield CachedSample(entry["key"], meta, b"", where, shard=shard, index=i)

    def render(
        self, sample: Sample, config: StreamConfig, rng: random.Random,
        noise: torch.Generator | None, counter: SkipCounter, *, train: bool,
    ) -> Example | None:  # fmt: skip
        """One draw: the flipped view with probability `flip_p`, a caption, a posterior sample
        (validation: the unflipped view, no caption dropout, the mean)."""
        assert isinstance(sample, CachedSample) and sample.shard is not None
        entry = sample.entry
        view = int(train and config.flip_p > 0 and rng.random() < config.flip_p)
        meta = dict(entry["metas"][view])
        caption = build_caption(meta, config.caption, rng, dropout=train)
        latent = sample.shard.latent(sample.index, view, self.sample_posterior and train, noise)
        return Example(sample.key, tuple(entry["bucket"]), latent, caption, meta)
