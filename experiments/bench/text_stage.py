"""text_stage: does stage 1c's text encoder tell fresh scenes' captions apart by their look?

Reads a `ymn.model.tiny_base --text-steps` checkpoint (text encoder + contrastive heads) on
scenes of the fresh seed the base never saw:
- `retrieval`: in batches of 64 mixed scenes, the share of captions whose own scene is the
  nearest of the 64 (chance 1/64; training batches are drawn the same way);
- `hair_tag_preferred`: one-person scenes of roster characters, the share whose own caption
  lies nearer their scene than the same caption with another character's hair tag (chance
  0.5): what the UNet needs from the text to colour the hair.

    python -m experiments.bench.text_stage WORK [--n 256]
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from transformers import CLIPTextModel

from experiments.bench.common import setup_torch
from experiments.bench.embedded_world import fresh_scenes, own_tags
from experiments.probes.vae_ceiling import FRESH_SEED
from ymn.data.synthetic import CHARACTERS
from ymn.data.tokenizer import load_clip_tokenizer, tokenize
from ymn.model.contrastive import (
    TEXT_STAGE,
    ContrastiveHeads,
    caption_embedding,
    load_text_stage,
)
from ymn.model.tiny_base_data import base_caption_tags
from ymn.model.vae_stages import latent_scaling_factor, load_stage1_vae
from ymn.probes.rates import rate

BATCH = 64
HAIR_TAGS = sorted({look.hair_tag for look in CHARACTERS.values()})


def other_hair(caption: str, own: str) -> str:
    """The caption with its hair tag replaced by the next roster hair tag (a fixed choice)."""
    other = HAIR_TAGS[(HAIR_TAGS.index(own) + 1) % len(HAIR_TAGS)]
    return caption.replace(own, other)


@torch.no_grad()
def embed_scenes(vae: AutoencoderKL, heads: ContrastiveHeads, scenes: list) -> torch.Tensor:
    """Unit image embeddings of scenes: stage 1's VAE (posterior mean), then the image tower."""
    pixels = torch.stack([torch.from_numpy(np.array(image)) for image, _ in scenes])
    x = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1
    z = torch.cat([vae.encode(x[i : i + BATCH]).latent_dist.mean for i in range(0, len(x), BATCH)])
    return F.normalize(heads.image_tower(z * latent_scaling_factor(z)), dim=-1)


@torch.no_grad()
def embed_captions(
    text_encoder: CLIPTextModel, heads: ContrastiveHeads, tokenizer, captions: list[str]
) -> torch.Tensor:
    """Unit caption embeddings of the stage-1c text encoder and projection."""
    ids = tokenize(tokenizer, captions)
    hidden = text_encoder(ids)[0]
    eos = text_encoder.config.eos_token_id
    return F.normalize(heads.text_projection(caption_embedding(hidden, ids, eos)), dim=-1)


def run(work: Path, n: int) -> dict[str, Any]:
    """Both readings on n mixed and n one-person fresh scenes."""
    setup_torch()
    vae = load_stage1_vae(work)
    text_encoder, heads = load_text_stage(work)
    tokenizer = load_clip_tokenizer()
    texts_of = partial(embed_captions, text_encoder, heads, tokenizer)
    tags = base_caption_tags(work)
    mixed = fresh_scenes(
        n - n % BATCH or BATCH, one_person=False, offset=300_000, caption_tags=tags
    )
    images = embed_scenes(vae, heads, mixed)
    texts = texts_of([own_tags(meta) for _, meta in mixed])
    hits = 0
    for start in range(0, len(mixed), BATCH):
        block = slice(start, start + BATCH)
        similarity = texts[block] @ images[block].T
        hits += int((similarity.argmax(dim=1) == torch.arange(similarity.shape[0])).sum())
    solo = fresh_scenes(n, one_person=True, caption_tags=tags)
    solo_images = embed_scenes(vae, heads, solo)
    captions = [own_tags(meta) for _, meta in solo]
    hair = [CHARACTERS[meta["characters"][0]].hair_tag for _, meta in solo]
    own = (texts_of(captions) * solo_images).sum(dim=1)
    swapped = [other_hair(c, h) for c, h in zip(captions, hair, strict=True)]
    other = (texts_of(swapped) * solo_images).sum(dim=1)
    step = json.loads((Path(work) / f"{TEXT_STAGE}.json").read_text())["step"]
    return {
        "fresh_seed": FRESH_SEED,
        "stage1c_step": int(step),
        "caption_tags": tags,
        "retrieval": {**rate(hits, len(mixed)), "batch": BATCH, "chance": 1 / BATCH},
        "hair_tag_preferred": {**rate(int((own > other).sum()), n), "chance": 0.5},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a tiny_base --work folder with stage 1c")
    parser.add_argument("--n", type=int, default=256)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.work, args.n), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
