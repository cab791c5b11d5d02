"""stream_mixing: how steady the training stream's mix is over a run. Three arms: the stream as
it is (shards packed in a seeded permutation, ymn-pack's default; each image's copies spread
over the epoch's copy rounds) against two ways it was before: permuted shards with every copy
of an image emitted at its one read, and folder-by-folder shards (`--folder-order`) too.

    python -m experiments.bench.stream_mixing [--images DIR] [--window 300] [--out DIR]

The toy fine-tune's data (`experiment=toy_phase1`: 4,000 ymn-synth scenes of seed 1, the recipe's
tree weights, shards of 500, shuffle buffer 1,000, batch 16, one dataloader worker) is packed
and epoch 0's draws are taken in stream order (`ymn.data.stream.stream_order`; no decoding, one
bucket as the square toy scenes are). Per window of `--window` steps: each top-level category's
share of the draws, the largest gap to its share of the whole epoch, the distinct images drawn
and the most copies of one image. `--images` reuses a generated scene folder (e.g.
`data/toy/images`); without it the scenes are generated in a temporary folder (a minute).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from experiments.bench.common import BENCH_DIR, machine, write_result

EXPERIMENT = "toy_phase1"
LATENT_ONLY = ("_target_", "latents", "build_cache", "sample_posterior")
ARMS = {  # name: (packing shuffle_seed, copies spread over rounds)
    "permuted shards, copies spread (the stream)": (0, True),
    "permuted shards, copies at one read": (0, False),
    "folder-order shards, copies at one read": (None, False),
}


def compose_data(shards: Path, images: Path, shuffle_seed: int | None) -> Any:
    """The experiment's data config with its shards and scenes moved to `shards` / `images`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ymn.paths import CONFIG_DIR

    overrides = [
        f"experiment={EXPERIMENT}",
        f"data.shards={shards}",
        f"data.prepare.root={images}",
        f"+data.prepare.pack.shuffle_seed={'null' if shuffle_seed is None else shuffle_seed}",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def stream_draws(cfg: Any, spread: bool) -> tuple[list[tuple[str, str]], int]:
    """(top-level category, key) of epoch 0's draws in stream order, and the batch size;
    `spread=False` emits every copy of an image at its one read (the stream before rounds)."""
    from omegaconf import OmegaConf

    from ymn.data.datamodule import YmnDataModule
    from ymn.data.stream import iter_draws, pass_seed, shuffle_copies, stream_order

    settings = OmegaConf.to_container(cfg.data, resolve=True)
    pixels_only = {k: v for k, v in settings.items() if k not in LATENT_ONLY}
    data = YmnDataModule(**pixels_only)  # the same stream as the latent cache's, over pixels
    data.prepare_data()
    data.setup()
    source, config = data.train_stream.source, data.train_stream.config
    if spread:
        samples = stream_order(source, config, epoch=0, slot=0, slots=1)
    else:
        rng = random.Random(pass_seed(source.seed_name, config.seed, 0, 0, 0))
        draws = iter_draws(source, config, epoch=0, slot=0, slots=1)
        samples = shuffle_copies(draws, config.shuffle_buffer, rng)
    order = [(sample.category.split("/")[0], sample.key) for sample in samples]
    return order, config.batch_size


def window_readings(order: list[tuple[str, str]], window_draws: int) -> dict[str, Any]:
    """Per window: category shares, the largest gap to the epoch's shares, images, copies."""
    epoch_share = {c: n / len(order) for c, n in Counter(c for c, _ in order).items()}
    windows = []
    for start in range(0, len(order) - window_draws + 1, window_draws):
        chunk = order[start : start + window_draws]
        counts = Counter(c for c, _ in chunk)
        share = {c: counts.get(c, 0) / len(chunk) for c in epoch_share}
        copies = Counter(key for _, key in chunk)
        windows.append({
            "share": share,
            "largest_gap": max(abs(share[c] - epoch_share[c]) for c in epoch_share),
            "distinct_images": len(copies),
            "most_copies_of_one_image": max(copies.values()),
        })  # fmt: skip
    most_in_epoch = max(Counter(key for _, key in order).values())
    return {
        "epoch_share": epoch_share,
        "most_copies_of_one_image_per_window_if_shuffled_whole": most_in_epoch
        * window_draws
        / len(order),
        "largest_gap_over_windows": max(w["largest_gap"] for w in windows),
        "windows": windows,
    }


def run(images: Path | None, window_steps: int) -> dict[str, Any]:
    """Both packing orders of the toy data, read as the stream reads them."""
    with tempfile.TemporaryDirectory() as tmp:
        scenes = images if images is not None else Path(tmp) / "images"
        readings = {}
        for name, (seed, spread) in ARMS.items():
            cfg = compose_data(Path(tmp) / f"shards-{seed}", scenes, seed)
            order, batch = stream_draws(cfg, spread)
            readings[name] = {"draws": len(order), **window_readings(order, window_steps * batch)}
    return {
        "benchmark": "stream_mixing",
        "command": "python -m experiments.bench.stream_mixing",
        "experiment": EXPERIMENT,
        "window_steps": window_steps,
        "batch_size": batch,
        "arms": readings,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="a generated toy scene folder to reuse")
    parser.add_argument("--window", type=int, default=300, help="steps per window")
    parser.add_argument("--out", type=Path, default=BENCH_DIR)
    args = parser.parse_args(argv)
    result = run(args.images, args.window)
    for name, reading in result["arms"].items():
        gaps = [round(w["largest_gap"], 2) for w in reading["windows"]]
        most = [w["most_copies_of_one_image"] for w in reading["windows"]]
        print(f"{name}, per {args.window}-step window: largest category-share gap {gaps}, "
              f"most copies of one image {most}")  # fmt: skip
    print(write_result("stream_mixing", result, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
