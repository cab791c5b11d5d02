"""One probe pass: sample the probe prompts, detect faces, score counts / grid cells, read the
cross-attention (on samples and teacher-forced on held-out images) and fit the linear probes.

`run_probe_pass` knows nothing of the training schedule or of loggers: it returns flat
`probe/...` metrics and writes `out_dir/probes/step_XXXXXX.json` (+ the confusion matrix PNG).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ymn.data.batch import Batch
from ymn.data.captions import build_caption, grid_cell
from ymn.data.tokenizer import tokenize
from ymn.model.components import vae_downsampling
from ymn.probes.attention import (
    capture_cross_attention,
    grid_token_maps,
    image_attention_record,
    summarize_attention,
)
from ymn.probes.config import ProbeConfig
from ymn.probes.count import count_metrics, write_confusion_png
from ymn.probes.facegrid import facegrid_metrics, match_cells
from ymn.probes.identity import identify_character, identity_flat_metrics, measures_identity
from ymn.probes.linear import capture_features, linear_probe_metrics, pool_features
from ymn.probes.prompts import MANY, grid_size
from ymn.run_dir import probe_paths


def _latent_hw(module: Any, size: tuple[int, int] | None) -> tuple[int, int]:
    factor = vae_downsampling(module.vae)
    width, height = size or (module.unet.config.sample_size * factor,) * 2
    return height // factor, width // factor


def _count_label(n_people: Any) -> int | None:
    if n_people == "many":
        return MANY
    return int(n_people) if n_people is not None else None


# ----------------------------------------------------------------------------- samples


def detection_record(
    probe: Mapping[str, Any], boxes: Sequence[Sequence[float]], grid: int
) -> dict[str, Any]:
    """The JSON record of one probe image: its prompt record, the detections, the matches."""
    boxes = [[float(v) for v in box] for box in boxes]
    targets = [tuple(c) for c in probe.get("cells", [])]
    matches = match_cells(targets, [grid_cell(b, grid) for b in boxes])
    keys = ("prompt", "count", "label", "layout", "seed", "cells", "characters")
    return {
        **{k: probe[k] for k in keys if k in probe},
        "detected_boxes": boxes,
        "detected_count": len(boxes),
        "matches": [[list(t), list(f) if f else None] for t, f in matches],
    }


def initial_latents(module: Any, probe: Mapping[str, Any], cfg: ProbeConfig) -> torch.Tensor | None:
    """The count-aware starting latents of a probe image (None: the sampler's own noise)."""
    count = probe.get("count")
    if not cfg.noise_prior or not isinstance(count, int) or count < 1:
        return None
    from ymn.remedies.noise_prior import count_noise_prior

    shape = (1, module.unet.config.in_channels, *_latent_hw(module, cfg.size))
    generator = torch.Generator().manual_seed(int(probe["seed"]))
    latents = count_noise_prior(
        count,
        shape,
        generator,
        layout=probe.get("cells"),
        grid=grid_size(cfg.caption),
        amplitude=cfg.noise_prior_amplitude,
    )
    return latents.to(module.device, dtype=module.unet.dtype)


def probe_batches(
    prompts: Sequence[Mapping[str, Any]], size: int
) -> Iterator[Sequence[Mapping[str, Any]]]:
    """The probe records in consecutive batches of at most `size`."""
    for start in range(0, len(prompts), size):
        yield prompts[start : start + size]


def batch_latents(
    module: Any, probes: Sequence[Mapping[str, Any]], cfg: ProbeConfig
) -> torch.Tensor | None:
    """The batch's count-aware starting latents (None: the sampler draws each record's noise)."""
    if not cfg.noise_prior:
        return None
    return torch.cat([initial_latents(module, probe, cfg) for probe in probes])


def image_record(
    module: Any,
    probe: Mapping[str, Any],
    image: Any,
    detector: Any,
    cfg: ProbeConfig,
    maps: np.ndarray | None,
) -> dict[str, Any]:
    """Detections, identities and (maps given) the attention record of one probe image."""
    record = detection_record(probe, detector.detect(image), grid_size(cfg.caption))
    if measures_identity(detector, probe):
        record["identities"] = [identify_character(image, b) for b in record["detected_boxes"]]
    if maps is not None:
        record["attention"] = image_attention_record(
            maps,
            module.tokenizer,
            probe["prompt"],
            probe.get("count"),
            [tuple(c) for c in probe.get("cells", [])],
            cfg.caption,
        )
    return record


def sample_probe(
    module: Any,
    prompts: Sequence[Mapping[str, Any]],
    detector: Any,
    cfg: ProbeConfig,
    image_dir: Path | None,
) -> list[dict[str, Any]]:
    """Sample the probe prompts in batches of cfg.batch_size, detect faces, read each image's
    attention. Every record has its own seeded generator, so its image (and attention) does not
    depend on the batch it lands in."""
    grid = grid_size(cfg.caption)
    latent_hw = _latent_hw(module, cfg.size)
    records: list[dict[str, Any]] = []
    capture = (
        capture_cross_attention(module.unet, cfg.attention_layers)
        if cfg.attention_on_samples
        else nullcontext(None)
    )
    batches = list(probe_batches(prompts, cfg.batch_size))
    with capture as store:
        for batch in tqdm(batches, desc="probe samples", leave=False):
            if store is not None:
                store.reset()
            latents = batch_latents(module, batch, cfg)
            images = module.log_images(
                [probe["prompt"] for probe in batch],
                [probe["seed"] for probe in batch],
                size=cfg.size,
                steps=cfg.steps,
                guidance_scale=cfg.guidance_scale,
                **({} if latents is None else {"latents": latents}),
            )
            maps = None
            if store is not None:  # with CFG the rows are [uncond; cond]: keep the last n
                cond = {name: m[-len(batch) :] for name, m in store.maps().items()}
                maps = grid_token_maps(cond, latent_hw, grid).cpu().numpy()
            for j, (probe, image) in enumerate(zip(batch, images, strict=True)):
                record = image_record(
                    module, probe, image, detector, cfg, None if maps is None else maps[j]
                )
                if image_dir is not None:
                    image_dir.mkdir(parents=True, exist_ok=True)
                    name = f"{len(records):03d}_{probe.get('label', '')}_{probe['seed']}.png"
                    image.save(image_dir / name)
                records.append(record)
    return records


def sample_metrics(
    records: Sequence[dict[str, Any]], cfg: ProbeConfig
) -> tuple[dict[str, float], dict[str, Any]]:
    """Flat probe/count/*, probe/facegrid/*, probe/identity/*, probe/attn/sample/* metrics and the
    full count dict."""
    requested = [r["count"] for r in records]
    detected = [min(r["detected_count"], MANY) for r in records]  # 6 = "6 or more"
    counts = count_metrics(requested, detected, n_permutations=cfg.n_permutations, seed=cfg.seed)
    flat = {f"probe/count/{k}": float(v) for k, v in counts.items() if isinstance(v, (int, float))}
    flat |= {f"probe/count/mean_detected/{k}": v for k, v in counts["mean_detected"].items()}
    with_cells = [r for r in records if r.get("cells")]
    if with_cells:
        grid = facegrid_metrics(
            [[tuple(c) for c in r["cells"]] for r in with_cells],
            [r["detected_boxes"] for r in with_cells],
            grid_size(cfg.caption),
        )
        flat |= {f"probe/facegrid/{k}": float(v) for k, v in grid.items()}
    flat |= identity_flat_metrics(records, grid_size(cfg.caption))
    attention = [r["attention"] for r in records if "attention" in r]
    flat |= summarize_attention(attention, "probe/attn/sample")
    return flat, counts


# ----------------------------------------------------------------------------- held-out images


def _batch_latents(module: Any, batch: Batch) -> torch.Tensor:
    if "latents" in batch:
        return batch["latents"].to(module.device)
    pixels = batch["pixel_values"].to(module.device, dtype=module.vae.dtype)
    # the posterior mode, not a sample: probes must not draw from the global RNG of training
    return module.vae.encode(pixels).latent_dist.mode() * module.latent_scale


def heldout_pass(module: Any, batches: Iterable[Batch], cfg: ProbeConfig) -> dict[str, Any]:
    """Teacher-forced pass on held-out images: per timestep one UNet forward of [caption rows;
    empty-caption rows]; attention from the caption rows (mean over timesteps), features from
    the rows named by cfg.linear_condition. Returns records, features and labels."""
    teacher_cfg = dataclasses.replace(cfg.caption, keep_count=1.0, keep_facepos=1.0, dropout=0.0)
    grid = grid_size(cfg.caption)
    out: dict[str, Any] = {"records": [], "features": {}, "counts": [], "occupancy": [], "text": []}
    layers = cfg.feature_layers if cfg.linear else {}
    attention = (
        capture_cross_attention(module.unet, cfg.attention_layers)
        if cfg.teacher_forced
        else nullcontext(None)
    )
    with attention as store, capture_features(module.unet, layers) as feats:
        for b, batch in enumerate(batches):
            metas = batch.get("meta")
            if not metas:
                raise ValueError(
                    "held-out batches need a 'meta' list (the data module's val batches)"
                )
            rng = random.Random(cfg.seed + b)
            captions = [build_caption(m, teacher_cfg, rng, dropout=False) for m in metas]
            latents = _batch_latents(module, batch)
            n = latents.shape[0]
            ids = tokenize(module.tokenizer, captions + [""] * n).to(module.device)
            text = module.encode_text(ids)
            out["text"].append(text[:n].mean(dim=1).float().cpu().numpy())
            if store is not None:
                store.reset()
            rows = slice(n, 2 * n) if cfg.linear_condition == "empty" else slice(0, n)
            for t in cfg.timesteps:
                generator = torch.Generator().manual_seed(cfg.seed * 100_003 + b * 1009 + t)
                noise = torch.randn(latents.shape, generator=generator).to(latents)
                timestep = torch.full((n,), t, device=latents.device, dtype=torch.long)
                noisy = module.noise_scheduler.add_noise(latents, noise, timestep)
                module.unet(torch.cat([noisy, noisy]), torch.cat([timestep, timestep]), text)
                for name, output in feats.items():
                    pooled = pool_features(output[rows], grid)
                    entry = out["features"].setdefault(f"{name}/t{t}", {"mean": [], "grid": []})
                    entry["mean"].append(pooled["mean"])
                    entry["grid"].append(pooled["grid"])
            cells = [[grid_cell(box, grid) for box in m.get("facepos") or []] for m in metas]
            if store is not None:
                caption_rows = {name: m[:n] for name, m in store.maps().items()}
                maps = grid_token_maps(caption_rows, _latent_hw_of(latents), grid).cpu().numpy()
                for i, meta in enumerate(metas):
                    record = image_attention_record(
                        maps[i],
                        module.tokenizer,
                        captions[i],
                        meta.get("n_people"),
                        cells[i],
                        cfg.caption,
                    )
                    out["records"].append(
                        {"caption": captions[i], "cells": [list(c) for c in cells[i]], **record}
                    )
            for meta, image_cells in zip(metas, cells, strict=True):
                out["counts"].append(_count_label(meta.get("n_people")) or 0)
                occupancy = np.zeros(grid * grid)
                for col, row in image_cells:
                    occupancy[row * grid + col] = 1.0
                out["occupancy"].append(occupancy)
    return out


def _latent_hw_of(latents: torch.Tensor) -> tuple[int, int]:
    return int(latents.shape[-2]), int(latents.shape[-1])


def heldout_metrics(heldout: dict[str, Any], cfg: ProbeConfig) -> dict[str, float]:
    """probe/attn/* and probe/linear/* from a `heldout_pass` result."""
    metrics = summarize_attention(heldout["records"], "probe/attn")
    if cfg.linear and heldout["counts"]:
        features = {
            key: {kind: np.concatenate(parts) for kind, parts in entry.items()}
            for key, entry in heldout["features"].items()
        }
        metrics |= linear_probe_metrics(
            features,
            heldout["counts"],
            np.stack(heldout["occupancy"]),
            text_features=np.concatenate(heldout["text"]),
            folds=cfg.folds,
            alpha=cfg.alpha,
            seed=cfg.seed,
        )
    return metrics


# ----------------------------------------------------------------------------- the pass


def _jsonable(value: Any) -> Any:
    """NaN/inf → None (strict JSON), numpy scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


@torch.no_grad()
def run_probe_pass(
    module: Any,
    *,
    step: int,
    out_dir: str | Path,
    detector: Any,
    prompts: Sequence[Mapping[str, Any]],
    heldout_batches: Sequence[Batch] | None,
    cfg: ProbeConfig,
) -> dict[str, float]:
    """Run every probe once; write the JSON report and confusion PNG; return flat metrics."""
    json_path, png_path = probe_paths(out_dir, step)
    modes = {m: m.training for m in module.modules()}  # e.g. the frozen VAE stays in eval
    module.eval()
    timing: dict[str, float] = {}
    metrics: dict[str, float] = {}
    report: dict[str, Any] = {"step": step, "config": cfg.report()}
    try:
        start = time.perf_counter()
        if prompts:
            image_dir = json_path.with_suffix("") if cfg.save_images else None
            records = sample_probe(module, prompts, detector, cfg, image_dir)
            flat, counts = sample_metrics(records, cfg)
            metrics |= flat
            report |= {"count": counts, "records": records}
            write_confusion_png(
                counts["confusion"], png_path, f"step {step}: requested vs detected"
            )
        timing["sample_s"] = time.perf_counter() - start
        start = time.perf_counter()
        if heldout_batches and (cfg.teacher_forced or cfg.linear):
            heldout = heldout_pass(module, heldout_batches, cfg)
            metrics |= heldout_metrics(heldout, cfg)
            report["heldout_attention"] = heldout["records"]
        timing["heldout_s"] = time.perf_counter() - start
    finally:
        for submodule, training in modes.items():
            submodule.training = training
    metrics |= {f"probe/time/{k}": v for k, v in timing.items()}
    report["metrics"] = metrics
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_jsonable(report), indent=1))
    return metrics
