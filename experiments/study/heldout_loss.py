"""`python -m experiments.study.heldout_loss STUDY`: each arm's diffusion loss on one common
held-out set, per image, paired between arms.

A run's `val/loss` reads held-out keys of its own shards, so arms trained on different data
(the hands study's h5 and h0) validate on different images and their val losses cannot be
paired. Here every finished run of the study is scored on the same fresh synthetic scenes
(a seed no training set used, one scene kind: `--kind hands` for the hand close-ups), captioned
by the run's own caption settings without dropout, at the same fixed timesteps and noise per
image. Each image's loss is the mean over `--timesteps` evenly spaced timesteps; an arm's
difference to the baseline is the mean of the per-image differences within each training seed,
with a bootstrap 95 % CI and a sign-flip permutation p-value.

Writes `experiments/studies/STUDY/heldout_loss_KIND.json` and `.md`. Needs the study's run
folders with their checkpoints (`python -m experiments.study STUDY` first).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from experiments.probes.vae_ceiling import FRESH_SEED, paired_difference
from experiments.study.spec import StudySpec, load_study
from ymn.data.captions import CaptionConfig, build_caption, caption_config
from ymn.data.metadata import normalize_metadata
from ymn.data.synthetic import render_scene, sample_scene_spec
from ymn.data.tokenizer import tokenize
from ymn.model.components import Components
from ymn.model.export import load_run_components

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class HeldOut:
    """The common held-out set: pixels in [-1, 1] and each scene's normalised metadata."""

    pixels: torch.Tensor
    metas: list[dict[str, Any]]


def heldout_scenes(kind: str, n: int, size: int, seed: int = FRESH_SEED) -> HeldOut:
    """n scenes of one kind, scene i drawn from its own generator (seed, i)."""
    images, metas = [], []
    for index in range(n):
        spec = sample_scene_spec(np.random.default_rng([seed, index]), kind, size)
        image, raw = render_scene(spec, size)
        images.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
        metas.append(normalize_metadata(raw, f"heldout/{kind}/{index}"))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return HeldOut(pixels, metas)


def run_caption_config(run_dir: Path) -> CaptionConfig:
    """The run's caption settings; refuses prompt encodings this scorer does not rebuild."""
    cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
    clip_skip = OmegaConf.select(cfg, "model.text_encoder_controls.clip_skip", default=None)
    if cfg.model.get("max_token_length", 77) != 77 or clip_skip not in (None, 1):
        raise ValueError(f"{run_dir}: held-out loss supports 77-token captions without clip skip")
    return caption_config(OmegaConf.to_container(cfg.caption, resolve=True))


@torch.no_grad()
def per_image_loss(
    components: Components,
    heldout: HeldOut,
    captions: list[str],
    timesteps: int,
    seed: int = 0,
    batch_size: int = 32,
) -> np.ndarray:
    """Each image's MSE of the UNet target, averaged over `timesteps` evenly spaced timesteps;
    the noise of (image i, timestep k) comes from generator (seed, i, k), so every model sees
    the same noisy latents."""
    vae, unet, scheduler = components.vae, components.unet, components.scheduler
    total = scheduler.config.num_train_timesteps
    grid = [int(t) for t in np.linspace(0, total - 1, timesteps + 2)[1:-1].round()]
    losses = np.zeros((len(captions), len(grid)))
    for start in range(0, len(captions), batch_size):
        rows = range(start, min(start + batch_size, len(captions)))
        latents = vae.encode(heldout.pixels[rows.start : rows.stop]).latent_dist.mean
        latents = latents * vae.config.scaling_factor
        text = components.text_encoder(
            tokenize(components.tokenizer, captions[rows.start : rows.stop])
        )[0]
        for k, t in enumerate(grid):
            noise = torch.stack(
                [
                    torch.randn(
                        latents.shape[1:],
                        generator=torch.Generator().manual_seed(hash_seed(seed, i, k)),
                    )
                    for i in rows
                ]
            )
            steps = torch.full((len(rows),), t, dtype=torch.long)
            noisy = scheduler.add_noise(latents, noise, steps)
            pred = unet(noisy, steps, text).sample
            target = (
                scheduler.get_velocity(latents, noise, steps)
                if scheduler.config.prediction_type == "v_prediction"
                else noise
            )
            losses[rows.start : rows.stop, k] = ((pred - target) ** 2).mean(dim=(1, 2, 3)).numpy()
    return losses.mean(axis=1)


def hash_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def paired_mean_difference(arm: np.ndarray, baseline: np.ndarray) -> dict[str, Any]:
    """mean(arm − baseline) over paired images, with the bootstrap 95 % CI and the permutation
    p of `vae_ceiling.paired_difference` (a mean is its pooled rate with every total 1)."""
    ones = np.ones(len(arm))
    result = paired_difference({"loss": (baseline, ones)}, {"loss": (arm, ones)})["loss"]
    return {"diff": result["difference"], "ci95": result["ci95"], "p": result["p_permutation"],
            "n_images": result["n_images"]}  # fmt: skip


def score_study(
    spec: StudySpec, runs_root: Path, kind: str, n: int, timesteps: int
) -> dict[str, Any]:
    """Per arm and seed, the held-out per-image losses' mean, and each arm's paired difference
    to the baseline arm at the same seed."""
    losses: dict[str, dict[int, np.ndarray]] = {}
    heldout: dict[int, HeldOut] = {}  # one set per training resolution (same scenes)
    for arm, seed in spec.jobs():
        run_dir = runs_root / spec.name / arm / f"seed{seed}"
        if not (run_dir / "study.json").is_file():
            continue
        components = load_run_components(run_dir)
        size = int(OmegaConf.load(run_dir / "config_resolved.yaml").data.resolution)
        if size not in heldout:
            heldout[size] = heldout_scenes(kind, n, size)
        scenes = heldout[size]
        cfg = run_caption_config(run_dir)
        captions = [
            build_caption(m, cfg, random.Random(i), dropout=False)
            for i, m in enumerate(scenes.metas)
        ]
        losses.setdefault(arm, {})[seed] = per_image_loss(components, scenes, captions, timesteps)
        print(f"{arm} seed {seed}: held-out {kind} loss {losses[arm][seed].mean():.5f}", flush=True)
    if spec.baseline not in losses:
        raise SystemExit(f"{spec.name}: the baseline arm {spec.baseline} has no finished run")
    return summarize(spec.baseline, losses, kind, n, timesteps)


def summarize(
    baseline: str, losses: dict[str, dict[int, np.ndarray]], kind: str, n: int, timesteps: int
) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    for arm, by_seed in losses.items():
        entry: dict[str, Any] = {
            "mean_by_seed": {str(s): float(v.mean()) for s, v in by_seed.items()}
        }
        if arm != baseline:
            entry["vs_baseline_by_seed"] = {
                str(s): paired_mean_difference(v, losses[baseline][s])
                for s, v in by_seed.items()
                if s in losses[baseline]
            }
        arms[arm] = entry
    return {"kind": kind, "images": n, "timesteps": timesteps, "fresh_seed": FRESH_SEED,
            "baseline": baseline, "arms": arms}  # fmt: skip


def render(study: str, result: dict[str, Any], command: str) -> str:
    lines = [
        f"# {study}: diffusion loss on one common held-out set ({result['kind']})",
        "",
        f"Regenerate: `{command}`. {result['images']} fresh `{result['kind']}` scenes "
        f"(synthetic seed {result['fresh_seed']}, unseen in training), each image's loss the "
        f"mean over {result['timesteps']} evenly spaced timesteps with fixed noise; differences "
        f"are paired by image within one training seed (bootstrap 95 % CI, sign-flip p).",
        "",
        "| arm | seed | mean loss | vs baseline (95 % CI, p) |",
        "|---|---|---|---|",
    ]
    for arm, entry in result["arms"].items():
        for seed, mean in entry["mean_by_seed"].items():
            diff = entry.get("vs_baseline_by_seed", {}).get(seed)
            cell = (
                f"{diff['diff']:+.5f} [{diff['ci95'][0]:+.5f}, {diff['ci95'][1]:+.5f}], "
                f"p = {diff['p']:.3g}"
                if diff
                else ("(baseline)" if arm == result["baseline"] else "–")
            )
            lines.append(f"| `{arm}` | {seed} | {mean:.5f} | {cell} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.study.heldout_loss")
    parser.add_argument("study", help="a study in ymn/conf/study")
    parser.add_argument("--kind", default="hands", help="scene kind of the held-out set")
    parser.add_argument("--n", type=int, default=256, help="held-out images")
    parser.add_argument("--timesteps", type=int, default=8, help="timesteps per image")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "studies")
    parser.add_argument("--out", type=Path, help="default: experiments/studies/STUDY")
    args = parser.parse_args(argv)
    spec = load_study(args.study)
    result = score_study(spec, args.runs, args.kind, args.n, args.timesteps)
    out = args.out or REPO / "experiments" / "studies" / spec.name
    out.mkdir(parents=True, exist_ok=True)
    command = (
        f"python -m experiments.study.heldout_loss {spec.name} --kind {args.kind} "
        f"--n {args.n} --timesteps {args.timesteps}"
    )
    stem = out / f"heldout_loss_{args.kind}"
    stem.with_suffix(".json").write_text(
        json.dumps({**result, "command": command}, indent=2) + "\n"
    )
    stem.with_suffix(".md").write_text(render(spec.name, result, command))
    print(f"wrote {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
