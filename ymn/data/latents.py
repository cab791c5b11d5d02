"""Latent caching: encode every packed image once with the VAE, then train from the latents.

`ymn-cache-latents SHARDS OUT [--resolution R] [--crop center|ed1] [--flip]` decodes each sample,
brings it to its aspect bucket with a *deterministic* crop decided now (`center`, or `ed1`: ED1's
placement with the jitter and the random offsets at 0, i.e. the top/left edge), encodes it (and
its mirror image with `--flip`) and stores, per sample, the scaled posterior **mean and std**
(`latent_dist.mean/std * scaling_factor`) in one safetensors file per source shard, plus the
cropped (and flipped) metadata in a JSON beside it and `index.json` for the whole cache.

`CachedLatentStream` yields the same batches as `TrainStream` (same per-epoch draw plan, shard
split, shuffle buffer, one-bucket batches, captions built per draw), with `latents` instead of
`pixel_values`; each draw samples `mean + std * eps` as a fresh VAE encode does
(`sample_posterior=False` uses the mean). Captions still change per draw, and the text encoder
still runs every step. Combinations that cannot be right raise `LatentCacheError`: a random or
jittered crop, flips the cache does not hold, another resolution, another VAE.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ymn.data.buckets import apply_crop, bucket_table, nearest_bucket, plan_crop, transform_meta
from ymn.data.captions import build_caption
from ymn.data.datamodule import EpochDataLoader, YmnDataModule
from ymn.data.decode import (
    Sample,
    SkipCounter,
    decode,
    is_val_key,
    iter_tar,
    manifest_categories,
    parse_sample,
    resolve_shards,
    to_tensor,
)
from ymn.data.multiply import draws_for_sample, plan_epoch
from ymn.data.stream import (
    EpochPlannedStream,
    Example,
    bucket_batches,
    caption_config,
    pass_seed,
    shard_order,
    shuffle_copies,
    tokenize,
    worker_slot,
)
from ymn.reliability.rng import derive_seed

INDEX = "index.json"
CACHE_VERSION = 1
CACHE_CROPS = ("center", "ed1")


class LatentCacheError(ValueError):
    """A latent cache that cannot serve the requested training configuration."""


class _NoJitter:
    """Stands in for `random.Random` in ED1's crop plan: every random draw is its minimum."""

    def randint(self, a: int, b: int) -> int:
        return a

    def random(self) -> float:
        return 0.0


# ---------------------------------------------------------------------------------------------
# Building the cache
# ---------------------------------------------------------------------------------------------


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """A hash of the VAE's config and weights: a cache only serves the VAE that made it."""
    digest = hashlib.blake2b(digest_size=16)
    config = dict(getattr(vae, "config", {}))
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_crop(size: tuple[int, int], resolution: int, crop: str) -> tuple[tuple[int, int], Any]:
    """(bucket, CropPlan) of an image of `size`, decided at cache time (no randomness)."""
    if crop not in CACHE_CROPS:
        raise LatentCacheError(
            f"crop={crop!r} cannot be cached: latents are fixed at cache time, so only the "
            f"deterministic crops {CACHE_CROPS} work (ed1 = no jitter, top/left edge)."
        )
    bucket = nearest_bucket(size, bucket_table(resolution))
    return bucket, plan_crop(size, bucket, crop, _NoJitter())  # type: ignore[arg-type]


@torch.no_grad()
def encode_posterior(vae: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled posterior (mean, std) of a pixel batch in [-1, 1]."""
    scale = float(vae.config.scaling_factor)
    dist = vae.encode(pixels).latent_dist
    return dist.mean * scale, dist.std * scale


def _views(sample: Sample, resolution: int, crop: str, flip: bool) -> list[dict[str, Any]]:
    """The cropped (and flipped) pixel tensors and metadata of one sample."""
    image = sample.image()
    bucket, plan = cached_crop(image.size, resolution, crop)
    views = []
    for flipped in (False, True) if flip else (False,):
        meta = transform_meta(sample.meta, image.size, plan, flipped)
        meta["flipped"] = flipped
        pixels = to_tensor(apply_crop(image, bucket, plan, flipped))
        views.append({"bucket": bucket, "meta": meta, "pixels": pixels})
    return views


def _encode_grouped(vae: Any, views: list[dict[str, Any]], batch_size: int, device: str) -> None:
    """Fill `mean`/`std` into each view, encoding same-bucket views together."""
    by_bucket: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for view in views:
        by_bucket.setdefault(view["bucket"], []).append(view)
    for group in by_bucket.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            pixels = torch.stack([v.pop("pixels") for v in chunk]).to(device)
            mean, std = encode_posterior(vae, pixels)
            for view, m, s in zip(chunk, mean.cpu(), std.cpu(), strict=True):
                view["mean"], view["std"] = m.clone(), s.clone()


def cache_shard(
    shard: str, out: Path, vae: Any, *, resolution: int, crop: str, flip: bool,
    batch_size: int = 8, device: str = "cpu", dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:  # fmt: skip
    """Encode one tar shard into `out/<name>.safetensors` + `out/<name>.json`; returns its
    index entry. Samples that cannot be read are skipped and counted, as in training."""
    from safetensors.torch import save_file

    counter, entries, tensors = SkipCounter(), [], {}
    for key, parts in iter_tar(shard, counter):
        sample = parse_sample(shard, key, parts, counter)
        if sample is None or decode(sample, counter) is None:
            continue
        views = _views(sample, resolution, crop, flip)
        _encode_grouped(vae, views, batch_size, device)
        for v, view in enumerate(views):
            name = f"{len(entries)}/{v}"
            tensors[f"{name}/mean"] = view["mean"].to(dtype).contiguous()
            tensors[f"{name}/std"] = view["std"].to(dtype).contiguous()
        entries.append(
            {
                "key": sample.key,
                "category": sample.category,
                "category_index": sample.meta["category_index"],
                "bucket": list(views[0]["bucket"]),
                "metas": [view["meta"] for view in views],
            }
        )
        sample.release()
    stem = Path(shard).name.rsplit(".tar", 1)[0]
    save_file(tensors, str(out / f"{stem}.safetensors"))
    (out / f"{stem}.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return {"name": stem, "n_samples": len(entries), "skipped": dict(counter)}


def cache_latents(
    shards: str, out: str | Path, vae: Any, *, resolution: int, crop: str = "center",
    flip: bool = False, batch_size: int = 8, device: str | None = None, dtype: str = "float32",
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Cache the latents of every sample of `shards` (a folder, brace pattern or glob) under
    `out`; returns the index (also written to `out/index.json`)."""
    from tqdm import tqdm

    cached_crop((1, 1), resolution, crop)  # fail early on a crop that cannot be cached
    paths, manifest = resolve_shards(shards)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = device or str(next(vae.parameters()).device)
    vae = vae.to(device).eval()
    kwargs = dict(resolution=resolution, crop=crop, flip=flip, batch_size=batch_size)
    entries = [
        cache_shard(p, out, vae, device=device, dtype=getattr(torch, dtype), **kwargs)
        for p in tqdm(paths, desc="ymn-cache-latents", disable=not progress)
    ]
    index = {
        "version": CACHE_VERSION,
        "resolution": resolution,
        "crop": crop,
        "flip": flip,
        "dtype": dtype,
        "stores": "posterior mean and std, times the VAE scaling_factor",
        "scaling_factor": float(vae.config.scaling_factor),
        "vae": vae_fingerprint(vae),
        "source": str(shards),
        "categories": manifest["categories"],
        "shards": entries,
    }
    (out / INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
    return index


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
    if vae is not None and vae_fingerprint(vae) != index["vae"]:
        raise LatentCacheError(
            f"{where}: the model's VAE is not the VAE the latents were encoded with; re-run "
            "ymn-cache-latents with this model (--model PATH)."
        )


# ---------------------------------------------------------------------------------------------
# Streaming from the cache
# ---------------------------------------------------------------------------------------------


class _CacheShard:
    """One cached shard: entries from its JSON, tensors read lazily from its safetensors."""

    def __init__(self, folder: Path, name: str) -> None:
        from safetensors import safe_open

        self.entries = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        self.file = safe_open(str(folder / f"{name}.safetensors"), framework="pt")

    def latent(self, i: int, view: int, sample: bool, generator: torch.Generator) -> torch.Tensor:
        """Entry `i`, view 0 (as cropped) or 1 (flipped): the mean or a posterior sample."""
        mean = self.file.get_tensor(f"{i}/{view}/mean").float()
        if not sample:
            return mean
        std = self.file.get_tensor(f"{i}/{view}/std").float()
        return mean + std * torch.randn(mean.shape, generator=generator)


def _iter_cached(
    folder: Path, names: Sequence[str], slot: int, slots: int
) -> Iterator[tuple[_CacheShard, int, Sample]]:
    """This slot's (shard, entry index, sample) triples, split as `iter_samples` splits tars."""
    by_shard = len(names) >= slots
    index = 0
    for name in names[slot::slots] if by_shard else names:
        shard = _CacheShard(folder, name)
        for i, entry in enumerate(shard.entries):
            take = by_shard or index % slots == slot
            index += 1
            if take:
                meta = {"category": entry["category"], "category_index": entry["category_index"]}
                sample = Sample(entry["key"], meta, b"", f"{folder / name}:{entry['key']}")
                sample.cached = (shard, i)  # type: ignore[attr-defined]
                yield shard, i, sample


class CachedLatentStream(EpochPlannedStream):
    """`TrainStream`'s batches from a latent cache: `latents` (B, 4, h, w) instead of pixels,
    captions/meta/input_ids built per draw. Use with `DataLoader(stream, batch_size=None)`."""

    def __init__(
        self, cache: str | Path, *, resolution: int, batch_size: int, multiply_mode: str = "ed1",
        crop: str = "center", flip_p: float = 0.0, shuffle_buffer: int = 1000,
        val_fraction: float = 0.02, seed: int = 0, caption: Any = None, tokenizer: Any = None,
        sample_posterior: bool = True, train: bool = True, rank: int | None = None,
        world_size: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.folder = Path(cache)
        self.index = read_index(cache)
        check_cache(self.index, resolution=resolution, crop=crop, flip_p=flip_p, where=str(cache))
        self.names = [s["name"] for s in self.index["shards"]]
        self.categories = manifest_categories(self.index)
        self.batch_size, self.multiply_mode, self.flip_p = batch_size, multiply_mode, flip_p
        self.shuffle_buffer, self.val_fraction, self.seed = shuffle_buffer, val_fraction, seed
        self.caption, self.tokenizer = caption_config(caption), tokenizer
        self.sample_posterior, self.train = sample_posterior, train
        self.rank, self.world_size = rank, world_size
        self.resume: tuple[int, int] | None = None
        self.skipped = SkipCounter()

    def _draws(self, epoch: int, slot: int, slots: int) -> Iterator[tuple[Sample, int]]:
        names = shard_order(self.names, self.seed, epoch) if self.train else self.names
        plans = plan_epoch(self.categories, self.multiply_mode, self.seed, epoch)
        for _, _, sample in _iter_cached(self.folder, names, slot, slots):
            if is_val_key(sample.key, self.val_fraction) == self.train:
                continue
            if not self.train:
                yield sample, 1
                continue
            plan = plans[sample.category]
            copies = draws_for_sample(
                sample.category, sample.meta["category_index"], plan, self.seed, epoch
            )
            if copies > 0:
                yield sample, copies

    def _example(
        self, sample: Sample, rng: random.Random | None, gen: torch.Generator | None
    ) -> Example:
        """One draw; validation (`rng` None) seeds its caption by key and uses the mean."""
        shard, i = sample.cached  # type: ignore[attr-defined]
        entry = shard.entries[i]
        if rng is None:
            rng = random.Random(f"val:{sample.key}")
        view = int(self.train and self.flip_p > 0 and rng.random() < self.flip_p)
        meta = dict(entry["metas"][view])
        caption = build_caption(meta, self.caption, rng, dropout=self.train)
        latent = shard.latent(i, view, self.sample_posterior and self.train, gen)
        return Example(sample.key, tuple(entry["bucket"]), latent, caption, meta)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.train:  # every rank validates the same batches, as ValidationDataset
            slot, slots = worker_slot(0, 1)
            draws = self._draws(self.epoch, slot, slots)
            examples = (self._example(sample, None, None) for sample, _ in draws)
            for group in bucket_batches(examples, self.batch_size, keep_remainders=True):
                yield self._batch(group, slot)
            return
        for slot, group in self.slot_batches(self._train_examples):
            yield self._batch(group, slot)

    def _train_examples(self, epoch: int, slot: int, slots: int, p: int) -> Iterator[Example]:
        """Pass `p` of the slot's draws (as `TrainStream._examples`)."""
        rng = random.Random(pass_seed("latents", self.seed, epoch, slot, p))
        gen = torch.Generator().manual_seed(derive_seed("latents", self.seed, epoch, slot, p))
        copies = shuffle_copies(self._draws(epoch, slot, slots), self.shuffle_buffer, rng)
        return (self._example(s, rng, gen) for s in copies)

    def _batch(self, group: Sequence[Example], slot: int) -> dict[str, Any]:
        captions = [e.caption for e in group]
        batch: dict[str, Any] = {
            "latents": torch.stack([e.pixels for e in group]),
            "captions": captions,
            "keys": [e.key for e in group],
            "meta": [e.meta for e in group],
        }
        if self.tokenizer is not None:
            batch["input_ids"] = tokenize(self.tokenizer, captions)
        if self.train:
            batch["skipped"], batch["slot"] = {}, slot
        return batch


class LatentDataModule(YmnDataModule):
    """`YmnDataModule` over a latent cache (`latents=` folder made by ymn-cache-latents).

    With `build_cache=True`, `prepare_data` builds the shards (as the parent does) and then the
    cache with the model's own VAE when the cache is missing. `setup` checks the cache against
    the model's VAE, resolution, crop and flip."""

    def __init__(self, *args: Any, latents: str, build_cache: bool = True,
                 sample_posterior: bool = True, **kwargs: Any) -> None:  # fmt: skip
        kwargs.setdefault("crop", "center")
        super().__init__(*args, **kwargs)
        self.latents, self.build_cache = str(latents), build_cache
        self.sample_posterior = sample_posterior

    def _model_vae(self) -> Any:
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        return getattr(module, "vae", None)

    def prepare_data(self) -> None:
        """Shards first (parent), then the cache with the model's VAE when it is missing."""
        super().prepare_data()
        if self.build_cache and not (Path(self.latents) / INDEX).is_file():
            vae = self._model_vae()
            if vae is None:
                raise LatentCacheError(f"no cache at {self.latents} and no model VAE to build it")
            cache_latents(self.shards, self.latents, vae, resolution=self.resolution,
                          crop=self.crop, flip=self.flip_p > 0)  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        """Open the cache; LatentCacheError when it does not match the run."""
        if self.train_stream is not None:
            return
        common = dict(
            resolution=self.resolution, crop=self.crop, val_fraction=self.val_fraction,
            seed=self.seed, caption=self.caption, tokenizer=self.tokenizer,
        )  # fmt: skip
        self.train_stream = CachedLatentStream(
            self.latents, batch_size=self.batch_size, multiply_mode=self.multiply_mode,
            flip_p=self.flip_p, shuffle_buffer=self.shuffle_buffer,
            sample_posterior=self.sample_posterior, **common,
        )  # fmt: skip
        self.val_set = CachedLatentStream(
            self.latents, batch_size=self.val_batch_size, train=False, **common
        )
        self.manifest = {"categories": self.train_stream.index["categories"]}
        vae = self._model_vae()
        if vae is not None:
            check_cache(self.train_stream.index, resolution=self.resolution, crop=self.crop,
                        flip_p=self.flip_p, vae=vae, where=self.latents)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        """Batches come from the cached stream itself (`batch_size=None`)."""
        self.setup("fit")
        self.train_stream.resume = self._resume
        return EpochDataLoader(self.train_stream, self._current_epoch, **self._loader_kwargs())


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`ymn-cache-latents SHARDS OUT [--resolution R] [--crop C] [--flip] [--model PATH]`."""
    p = argparse.ArgumentParser(prog="ymn-cache-latents", description=__doc__.splitlines()[0])
    p.add_argument("shards", help="shard folder (with manifest.json), brace pattern or glob")
    p.add_argument("out", help="cache folder to write")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--crop", choices=CACHE_CROPS, default="center")
    p.add_argument("--flip", action="store_true", help="also cache the mirrored crops")
    p.add_argument("--model", default=None, help="SD 1.x folder/file (default: the tiny base)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    args = p.parse_args(argv)
    from ymn.model.components import load_components

    name = "tiny" if args.model is None else "sd15"
    try:
        vae = load_components(name, pretrained=args.model).vae
        index = cache_latents(
            args.shards, args.out, vae, resolution=args.resolution, crop=args.crop, flip=args.flip,
            batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as error:  # missing shards or model: no traceback
        raise SystemExit(f"ymn-cache-latents: {error}") from error
    n = sum(s["n_samples"] for s in index["shards"])
    print(f"cached {n} samples ({'with' if args.flip else 'no'} flips) in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
