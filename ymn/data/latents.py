"""Latent caching: encode every packed image once with the VAE, then train from the latents.

`ymn-cache-latents SHARDS OUT [--resolution R] [--crop center|ed1] [--flip]` decodes each sample,
brings it to its aspect bucket with a *deterministic* crop decided now (`center`, or `ed1`: ED1's
placement with the jitter and the random offsets at 0, i.e. the top/left edge), encodes it (and
its mirror image with `--flip`) and stores, per sample, the scaled posterior **mean and std**
(`latent_dist.mean/std * scaling_factor`) in one safetensors file per source shard, plus the
cropped (and flipped) metadata in a JSON beside it and `index.json` for the whole cache.

Training reads the cache through `ymn.data.latent_source.LatentSource`, one sample source of the
one training stream (`ymn.data.stream.TrainStream`): the same batches as from pixels (draw plan,
shard split, shuffle buffer, one-bucket batches, captions built per draw), with `latents`
instead of `pixel_values`. `LatentDataModule` is `YmnDataModule` with that source, and builds
the cache with the model's own VAE when it is missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ymn.data.buckets import apply_crop, bucket_table, nearest_bucket, plan_crop, transform_meta
from ymn.data.datamodule import YmnDataModule
from ymn.data.decode import (
    Sample,
    SkipCounter,
    decode,
    iter_tar,
    parse_sample,
    resolve_shards,
    to_tensor,
)
from ymn.data.latent_source import INDEX, LatentCacheError, LatentSource, vae_fingerprint

CACHE_VERSION = 1
CACHE_CROPS = ("center", "ed1")


class _NoJitter:
    """Stands in for `random.Random` in ED1's crop plan: every random draw is its minimum."""

    def randint(self, a: int, b: int) -> int:
        return a

    def random(self) -> float:
        return 0.0


# ---------------------------------------------------------------------------------------------
# Building the cache
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Training from the cache
# ---------------------------------------------------------------------------------------------


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
            config = self.config
            cache_latents(self.shards, self.latents, vae, resolution=config.resolution,
                          crop=config.crop, flip=config.flip_p > 0)  # fmt: skip

    def sample_source(self) -> LatentSource:
        """The cache; LatentCacheError when another VAE made it (the stream checks the rest)."""
        return LatentSource(self.latents, sample_posterior=self.sample_posterior,
                            vae=self._model_vae())  # fmt: skip


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
