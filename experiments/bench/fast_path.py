"""fast_path: each fast-path option on vs off for one tiny-model training step on CPU, steps
interleaved (off, on, off, on...): SDPA vs classic attention, channels_last, bf16-mixed autocast,
fused / foreach / for-loop AdamW, torch.compile of the UNet (compile time apart from steady
state), gradient checkpointing (time, and the bytes autograd saves for backward)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from experiments.bench.common import Timer, median, paired_ratio, setup_torch, summarize

BATCH, RES = 4, 128


class Rig:
    """A tiny model set, a fixed batch, and a step whose options can change between steps."""

    def __init__(self) -> None:
        from experiments.bench.train_step import make_batch
        from ymn.model.components import build_tiny

        self.c = build_tiny(seed=0)
        self.batch = make_batch(self.c.tokenizer)
        self.c.vae.requires_grad_(False).eval()
        self.c.unet.train(), self.c.text_encoder.train()
        self.params = [*self.c.unet.parameters(), *self.c.text_encoder.parameters()]
        self.optimizers = {
            kind: torch.optim.AdamW(self.params, lr=1e-4, **flags)
            for kind, flags in {
                "fused": {"fused": True},
                "foreach": {"foreach": True},
                "loop": {"foreach": False},
            }.items()  # fmt: skip
        }
        self.unet: Any = self.c.unet
        self.saved_bytes = 0

    def step(self, *, autocast: bool = False, optimizer: str = "foreach",
             count_saved: bool = False) -> float:  # fmt: skip
        """One training step; returns seconds."""
        c, start = self.c, time.perf_counter()
        with torch.no_grad():
            latents = c.vae.encode(self.batch["pixel_values"]).latent_dist.mean
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (latents.shape[0],))
        noisy = c.scheduler.add_noise(latents, noise, t)
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        hooks = self._saved_hooks() if count_saved else contextlib.nullcontext()
        with amp, hooks:
            pred = self.unet(noisy, t, c.text_encoder(self.batch["input_ids"])[0]).sample
        F.mse_loss(pred.float(), noise).backward()
        self.optimizers[optimizer].step()
        self.optimizers[optimizer].zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def _saved_hooks(self):
        self.saved_bytes = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            self.saved_bytes += tensor.numel() * tensor.element_size()
            return tensor

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x)


def pair(steps: int, off: Callable[[], float], on: Callable[[], float]) -> dict[str, list]:
    """Interleave `steps` off/on steps (first two dropped as warm-up)."""
    res: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(steps + 2):
        res["off"].append(off())
        res["on"].append(on())
    return {k: v[2:] for k, v in res.items()}


def toggled(rig: Rig, apply: Callable[[bool], None], **step_kw: Any) -> Callable[[bool], float]:
    def run(flag: bool) -> float:
        apply(flag)
        return rig.step(**step_kw)

    return run


def run(quick: bool = False) -> dict[str, Any]:
    """Every option on/off; compile last (slow to compile)."""
    setup_torch()
    from ymn.model.fast import set_attention

    steps = 4 if quick else 12
    rig = Rig()
    out: dict[str, Any] = {}

    def attention(flag: bool) -> None:
        set_attention(rig.c, sdpa=flag)

    def memory_format(flag: bool) -> None:
        rig.unet.to(memory_format=torch.channels_last if flag else torch.contiguous_format)

    cases = {
        "sdpa_attention (vs classic AttnProcessor)": (lambda f: rig.step() if attention(f) is None
                                                      else 0.0),
        "channels_last": lambda f: rig.step() if memory_format(f) is None else 0.0,
        "bf16_autocast": lambda f: rig.step(autocast=f),
        "fused_adamw (vs foreach)": lambda f: rig.step(optimizer="fused" if f else "foreach"),
        "foreach_adamw (vs for-loop)": lambda f: rig.step(optimizer="foreach" if f else "loop"),
    }  # fmt: skip
    for name, fn in cases.items():
        res = pair(steps, lambda fn=fn: fn(False), lambda fn=fn: fn(True))
        out[name] = {"figures": summarize(res), "on/off time ratio": paired_ratio(res, "on", "off")}
    attention(True), memory_format(False)
    out["gradient_checkpointing"] = checkpointing(rig, steps)
    out["torch_compile_unet"] = compiled(rig, steps) if not quick else {
        "skipped": "not run with --quick (compiling takes minutes on 2 cores)"}  # fmt: skip
    return {
        "what": __doc__.split("\n")[0],
        "setup": {
            "batch": BATCH,
            "resolution": RES,
            "model": "tiny",
            "steps": steps,
            "device": "cpu",
        },  # fmt: skip
        "unit": "seconds per training step (median); on/off < 1 means the option is faster",
        "figures": out,
        "ratio": {k: v["on/off time ratio"] for k, v in out.items() if "on/off time ratio" in v},
        "target": "informational: which options pay on this device",
        "met": None,
    }


def checkpointing(rig: Rig, steps: int) -> dict[str, Any]:
    """Time and saved-activation bytes with the UNet's gradient checkpointing off/on."""
    saved = {}

    def run(flag: bool) -> float:
        if flag:
            rig.unet.enable_gradient_checkpointing()
        else:
            rig.unet.disable_gradient_checkpointing()
        seconds = rig.step(count_saved=True)
        saved["on" if flag else "off"] = rig.saved_bytes
        return seconds

    res = pair(steps, lambda: run(False), lambda: run(True))
    rig.unet.disable_gradient_checkpointing()
    return {"figures": summarize(res), "on/off time ratio": paired_ratio(res, "on", "off"),
            "saved_for_backward_mb": {k: v / 2**20 for k, v in saved.items()}}  # fmt: skip


def compiled(rig: Rig, steps: int) -> dict[str, Any]:
    """Compile time (first steps) and steady-state step time, eager vs compiled UNet."""
    eager = rig.unet
    try:
        compiled_unet = torch.compile(eager)
        rig.unet = compiled_unet
        with Timer() as t:
            rig.step()
            rig.step()
        compile_s = t.seconds
        res: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(steps):
            rig.unet = eager
            res["off"].append(rig.step())
            rig.unet = compiled_unet
            res["on"].append(rig.step())
    except Exception as exc:  # an inductor failure is a result to record, not a crash
        return {"skipped": f"torch.compile failed: {type(exc).__name__}: {exc}"[:500]}
    finally:
        rig.unet = eager
    return {"compile_and_first_two_steps_s": compile_s, "figures": summarize(res),
            "on/off time ratio": paired_ratio(res, "on", "off"),
            "steps_to_repay_compile": compile_s / max(median(res["off"]) - median(res["on"]),
                                                      1e-9)}  # fmt: skip
