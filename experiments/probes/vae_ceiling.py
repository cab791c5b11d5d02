"""The VAE ceiling: how much of a scene's faces and identities survive encode → decode.

Every count or identity the probes read from a sample went through the VAE decoder, so the
share the detector still reads right on VAE reconstructions of real scenes caps any probe score
of that model, whatever its UNet learns. Scenes are drawn fresh, from a seed the
base never trained on (the base trains on seed 0), exactly as `ymn.model.tiny_base` draws them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from ymn.data.captions import grid_cell
from ymn.model.components import vae_downsampling
from ymn.model.tiny_base_data import synthetic_scene as fresh_scene
from ymn.probes.detectors import SyntheticFaceDetector
from ymn.probes.facegrid import facegrid_metrics
from ymn.probes.identity import identify_character, match_faces
from ymn.probes.rates import clustered_rate, rate

FRESH_SEED = 12345  # never used to train the embedded base (seed 0)


@torch.no_grad()
def round_trip(vae: AutoencoderKL, images: list[Image.Image]) -> list[Image.Image]:
    """Decode(posterior mode of encode(image)) of each image, as uint8 RGB."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    pixels = torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0
    param = next(vae.parameters())
    pixels = pixels.to(param.device, dtype=param.dtype)
    return decoded_images(vae, vae.encode(pixels).latent_dist.mode())


@torch.no_grad()
def decoded_images(vae: AutoencoderKL, latents: torch.Tensor) -> list[Image.Image]:
    """Unscaled latents → uint8 RGB images."""
    decoded = vae.decode(latents).sample.float().clamp(-1, 1)
    out = ((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in out]


def vae_round_trip_agreement(
    vae: AutoencoderKL,
    n: int = 150,
    seed: int = FRESH_SEED,
    size: int = 128,
    *,
    batch_size: int = 8,
    detector: Any = None,
    per_image: bool = False,
) -> dict[str, Any]:
    """Detector agreement between n fresh synthetic scenes and their VAE reconstructions.

    count_kept: share of images whose detected face count on the reconstruction equals the
    true count (the scene's metadata). cell_kept: share of true faces with a reconstructed
    detection in their 5x5 cell (Hungarian matching, as the face-grid probe). identity_kept:
    of the faces `identify_character` names on the original (at the true box) that are matched
    to a reconstructed detection (as the identity probe pairs them), the share named the same
    at that detection: the ceiling of probe/identity/char_acc. identity_kept_at_true_box: of
    all faces named on the original, the share named the same on the reconstruction at the
    true box, detected or not. same_answer_all_faces: of all true faces, unnamed ones included,
    the share with the same answer (None == None counts: lenient, as a blur reads None).
    original_count_acc: the count check on the originals (the
    instrument itself, ≈ 1). l1: mean |recon − original| in [-1, 1] units.
    Each rate is {value, k, n, ci95, ...} (Wilson; faces: widened by an image bootstrap).
    per_image adds each image's count hit and identity hits / totals, for `paired_difference`.
    """
    detector = detector or SyntheticFaceDetector()
    was_training = vae.training
    vae.eval()
    count_hits = orig_count_hits = 0
    count_per_image: list[int] = []
    cell_hits, cell_totals, id_hits, id_totals, box_hits, box_totals = [], [], [], [], [], []
    same_hits = []
    l1_sum = 0.0
    for start in range(0, n, batch_size):
        scenes = [fresh_scene(seed, i, size) for i in range(start, min(start + batch_size, n))]
        originals = [image for image, _ in scenes]
        recons = round_trip(vae, originals)
        for (original, meta), recon in zip(scenes, recons, strict=True):
            truth = meta["facepos"]
            found = detector.detect(recon)
            count_hits += len(found) == len(truth)
            count_per_image.append(int(len(found) == len(truth)))
            orig_count_hits += len(detector.detect(original)) == len(truth)
            cells = [grid_cell(box, 5) for box in truth]
            grid = facegrid_metrics([cells], [found], 5)
            cell_totals.append(len(truth))
            cell_hits.append(round(grid["cell_acc"] * len(truth)) if truth else 0)
            names = [identify_character(original, box) for box in truth]
            matched = dict(match_faces(cells, found, 5))  # true face -> reconstructed detection
            named = [i for i, who in enumerate(names) if who is not None]
            box_totals.append(len(named))
            at_box = [identify_character(recon, box) for box in truth]
            same_hits.append(sum(a == b for a, b in zip(at_box, names, strict=True)))
            box_hits.append(sum(at_box[i] == names[i] for i in named))
            kept = [i for i in named if i in matched]
            id_totals.append(len(kept))
            id_hits.append(
                sum(identify_character(recon, found[matched[i]]) == names[i] for i in kept)
            )
            diff = np.abs(
                np.asarray(recon, dtype=np.float32) - np.asarray(original, dtype=np.float32)
            )
            l1_sum += float(diff.mean()) / 127.5
    vae.train(was_training)
    images = {"count": (count_per_image, [1] * n), "identity": (id_hits, id_totals)}
    return ({"per_image": images} if per_image else {}) | {
        "n_images": n,
        "seed": seed,
        "size": size,
        "count_kept": rate(count_hits, n),
        "cell_kept": clustered_rate(cell_hits, cell_totals, seed),
        "identity_kept": clustered_rate(id_hits, id_totals, seed),
        "identity_kept_at_true_box": clustered_rate(box_hits, box_totals, seed),
        "same_answer_all_faces": clustered_rate(same_hits, cell_totals, seed),
        "original_count_acc": rate(orig_count_hits, n),
        "l1": l1_sum / n,
        "vae": {
            "block_out_channels": list(vae.config.block_out_channels),
            "latent_channels": int(vae.config.latent_channels),
            "downsampling": vae_downsampling(vae),
        },
    }


PerImage = dict[str, tuple[list[int], list[int]]]  # reading -> (hits, totals) per image


def _pooled(hits: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """sum of hits / sum of totals along the last axis (0 where nothing was counted)."""
    return hits.sum(axis=-1) / np.maximum(totals.sum(axis=-1), 1)


def paired_difference(
    a: PerImage, b: PerImage, n_resamples: int = 2000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """b − a of each reading's pooled rate (sum hits / sum totals) on the same images: a
    bootstrap 95 % CI (images resampled) and a two-sided permutation p-value (each image's
    two readings swapped at random)."""
    return _paired_contrast(
        [a, b], lambda rates: rates[1] - rates[0], [1, 0], "difference", n_resamples, seed
    )


def paired_interaction(
    a: PerImage, b: PerImage, c: PerImage, d: PerImage, n_resamples: int = 2000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """(d − c) − (b − a) of each reading's pooled rate on the same images: whether one change
    (a → b) does as much in another setting (c → d), e.g. more steps at two widths. A
    bootstrap 95 % CI (images resampled, all four arms together) and a two-sided permutation
    p-value (each image's two differences swapped at random, which flips its contrast)."""
    return _paired_contrast(
        [a, b, c, d],
        lambda rates: (rates[3] - rates[2]) - (rates[1] - rates[0]),
        [2, 3, 0, 1],
        "interaction",
        n_resamples,
        seed,
    )


def _paired_contrast(
    arms: list[PerImage],
    contrast: Callable[[np.ndarray], np.ndarray],
    swapped: list[int],
    key: str,
    n_resamples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """`contrast` of the arms' pooled rates per reading, on the same images: a bootstrap 95 %
    CI (images resampled, all arms together) and a two-sided permutation p-value (each image's
    arms put in the `swapped` order at random, which flips the contrast's sign under the null)."""
    rng = np.random.default_rng(seed)
    order = np.array(swapped)
    out = {}
    for name in arms[0]:
        hits = np.array([arm[name][0] for arm in arms], dtype=float)
        totals = np.array([arm[name][1] for arm in arms], dtype=float)
        observed = float(contrast(_pooled(hits, totals)))
        n = hits.shape[1]
        draws = rng.integers(0, n, (n_resamples, n))
        boot = contrast(_pooled(hits[:, draws], totals[:, draws]))
        swap = rng.random((n_resamples, n)) < 0.5
        null = contrast(
            _pooled(
                np.where(swap, hits[order][:, None], hits[:, None]),
                np.where(swap, totals[order][:, None], totals[:, None]),
            )
        )
        p = (1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (n_resamples + 1)
        out[name] = {
            key: observed,
            "ci95": [float(v) for v in np.percentile(boot, [2.5, 97.5])],
            "p_permutation": float(p),
            "n_images": n,
        }
    return out
