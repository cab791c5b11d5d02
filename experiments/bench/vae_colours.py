"""vae_colours: which drawn colours does a tiny-base VAE lose on the round trip?

Fresh synthetic scenes (the seed `embedded_world` uses, never trained on) go through encode →
posterior mode → decode. For every colour of the roster and of the unnamed people's hair, over
the pixels of that colour in the scenes (one pixel eroded off each region, so edges do not
count): the mean reconstructed colour, the median and 90th-percentile largest per-channel
error, and the share of those pixels the face detector would read as skin. A hair colour read
as skin adds false faces (the count) and loses its character (identity).

    python -m experiments.bench.vae_colours [--model DIR | --stage1 WORK] [--n 120] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from diffusers import AutoencoderKL
from scipy import ndimage

from experiments.bench.common import setup_torch
from experiments.probes.vae_ceiling import FRESH_SEED, round_trip
from ymn.data.synthetic import CHARACTERS, UNKNOWN_HAIR
from ymn.data.synthetic_draw import SKIN
from ymn.model.tiny_base_data import synthetic_scene
from ymn.probes.detectors import SyntheticFaceDetector

SIZE = 128
BATCH = 20


def named_colours() -> dict[str, tuple[int, int, int]]:
    """Roster hair and outfit colours, unnamed hair colours and skin, by a readable name."""
    colours = {f"hair {look.name}": look.hair for look in CHARACTERS.values()}
    colours |= {f"outfit {look.name}": look.outfit for look in CHARACTERS.values()}
    colours |= {name: colour for colour, name in UNKNOWN_HAIR}
    return colours | {"skin": SKIN}


def colour_errors(
    truth: np.ndarray, recon: np.ndarray, colour: tuple[int, int, int]
) -> dict[str, Any]:
    """Errors on the inner pixels of one colour (truth, recon: N x H x W x 3 int arrays)."""
    regions = (truth == np.array(colour)).all(axis=-1)
    inner = np.stack([ndimage.binary_erosion(region) for region in regions])
    pixels = recon[inner]
    if len(pixels) == 0:
        return {"pixels": 0}
    error = np.abs(pixels - np.array(colour)).max(axis=-1)
    tolerance = SyntheticFaceDetector().tolerance
    skin_like = np.abs(pixels - np.array(SKIN)).max(axis=-1) <= tolerance
    return {
        "pixels": int(len(pixels)),
        "mean_reconstructed": [round(float(c), 1) for c in pixels.mean(axis=0)],
        "max_channel_error_median": float(np.median(error)),
        "max_channel_error_p90": float(np.percentile(error, 90)),
        "read_as_skin": float(skin_like.mean()),
    }


def vae_colour_errors(vae: AutoencoderKL, n: int) -> dict[str, Any]:
    """`colour_errors` of every named colour over n fresh scenes."""
    images = [synthetic_scene(FRESH_SEED, i, SIZE)[0].convert("RGB") for i in range(n)]
    recon = []
    for start in range(0, n, BATCH):
        recon += round_trip(vae, images[start : start + BATCH])
    truth = np.stack([np.asarray(im) for im in images]).astype(int)
    decoded = np.stack([np.asarray(im) for im in recon]).astype(int)
    return {
        "fresh_seed": FRESH_SEED,
        "n_images": n,
        "colours": {
            name: colour_errors(truth, decoded, colour) for name, colour in named_colours().items()
        },
    }


def load_vae(model: str | None, stage1: Path | None) -> AutoencoderKL:
    """A finished base's VAE (default: the shipped one), or a tiny_base --work folder's."""
    if stage1 is not None:
        from ymn.model.vae_stages import load_stage1_vae

        return load_stage1_vae(stage1)
    from ymn.model.components import load_components

    return load_components("tiny", pretrained=model).vae.float().eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="diffusers folder (default: shipped base)")
    parser.add_argument("--stage1", type=Path, help="a tiny_base --work folder's VAE instead")
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)
    setup_torch()
    result = vae_colour_errors(load_vae(args.model, args.stage1), args.n)
    text = json.dumps(result, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    for name, reading in result["colours"].items():
        if reading["pixels"]:
            print(
                f"{name:18s} median {reading['max_channel_error_median']:5.1f}  "
                f"p90 {reading['max_channel_error_p90']:5.1f}  "
                f"as skin {reading['read_as_skin']:.3f}  (n = {reading['pixels']} px)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
