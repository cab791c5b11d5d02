"""train_step: ymn's LightningModule in a real `lightning.Trainer` fit loop vs a bare PyTorch
loop, same tiny model (same init), same batch, same math (VAE encode, noise, text encoder,
UNet, MSE, AdamW step). Figure: median seconds per step after warm-up. Target ratio <= 1.05."""

from __future__ import annotations

import functools
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from experiments.bench.common import median, paired_ratio, setup_torch, summarize

BATCH, RES = 4, 128


def make_batch(tokenizer: Any) -> dict[str, Any]:
    """A fixed batch shaped like the data module's (pixels, captions, token ids)."""
    from ymn.data.tokenizer import tokenize

    gen = torch.Generator().manual_seed(0)
    captions = [f"{i + 1}people, fhml fvmd, mountain" for i in range(BATCH)]
    return {
        "pixel_values": torch.rand(BATCH, 3, RES, RES, generator=gen) * 2 - 1,
        "captions": captions,
        "input_ids": tokenize(tokenizer, captions),
    }


class BareLoop:
    """The plain PyTorch loop over the same model and batch, one `step()` at a time."""

    def __init__(self, batch: dict[str, Any]) -> None:
        from ymn.model.components import build_tiny

        self.c, self.batch = build_tiny(seed=0), batch
        self.c.vae.requires_grad_(False).eval()
        params = [*self.c.unet.parameters(), *self.c.text_encoder.parameters()]
        self.opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        self.c.unet.train(), self.c.text_encoder.train()

    def step(self) -> float:
        """One training step; returns its seconds."""
        c, sched, start = self.c, self.c.scheduler, time.perf_counter()
        with torch.no_grad():
            latents = c.vae.encode(self.batch["pixel_values"]).latent_dist.sample()
            latents = latents * c.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],))
        noisy = sched.add_noise(latents, noise, t)
        text = c.text_encoder(self.batch["input_ids"])[0]
        pred = c.unet(noisy, t, text).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
        loss.mean().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start


class Interleaved(L.Callback):
    """After every Lightning step, one bare step: the two loops alternate step by step, so load
    from other processes hits both alike. A Lightning step is timed from the end of the previous
    bare step to the end of its own batch (fetch, hooks, logging and optimizer all counted)."""

    def __init__(self, bare: BareLoop) -> None:
        self.bare, self.resumed_at = bare, None
        self.lightning: list[float] = []
        self.plain: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.resumed_at is None:
            self.resumed_at = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.lightning.append(time.perf_counter() - self.resumed_at)
        self.plain.append(self.bare.step())
        self.resumed_at = time.perf_counter()


def interleaved_run(batch: dict[str, Any], steps: int, **module_kw: Any) -> Interleaved:
    """`Trainer.fit` of DiffusionModule for `steps`, a bare step after each of its steps."""
    from ymn.model.components import build_tiny
    from ymn.model.module import DiffusionModule

    module = DiffusionModule(
        build_tiny(seed=0),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.01),
        **module_kw,
    )
    clock = Interleaved(BareLoop(batch))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[clock], log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    return clock


def run(quick: bool = False) -> dict[str, Any]:
    """Interleaved repeats of both loops; returns the JSON payload."""
    setup_torch()
    import logging

    from ymn.data.tokenizer import load_clip_tokenizer

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    steps, warmup = (8, 2) if quick else (40, 5)
    clock = interleaved_run(make_batch(load_clip_tokenizer()), steps)
    results = {"bare_pytorch": clock.plain[warmup:], "lightning_module": clock.lightning[warmup:]}
    ratio = paired_ratio(results, "lightning_module", "bare_pytorch")
    overall = median(results["lightning_module"]) / median(results["bare_pytorch"])
    return {
        "what": __doc__.split("\n")[0],
        "setup": {
            "batch": BATCH,
            "resolution": RES,
            "model": "tiny (build_tiny seed 0)",
            "steps": steps,
            "warmup_steps": warmup,
            "interleaving": "one bare step after every Lightning step; ratio = median of pairs",
        },
        "unit": "seconds per training step (median after warm-up)",
        "figures": summarize(results),
        "ratio": {"lightning_module / bare_pytorch": ratio},
        "ratio_of_medians": overall,
        "target": "<= 1.05",
        "met": ratio <= 1.05,
    }
