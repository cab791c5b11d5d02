"""The fast training path: SDPA attention, channels_last, `torch.compile` of the UNet, and an
AdamW that picks the fused or foreach kernel where the parameters' device supports it.

`apply_fast_path` changes a `DiffusionModule` (or anything with `unet`/`vae`/`text_encoder`) in
place and keeps every parameter name: compilation uses `nn.Module.compile`, so checkpoints and
exports do not gain an `_orig_mod.` prefix. The attention kernel is set through the models'
attention-processor owner (`ymn.model.attention_hooks`), so captures registered there (the
localization loss, the probe recorder) stay in place. `FastPath` is the same as a Lightning
callback, applied at `setup` once the module sits on its device. bf16-mixed is the Trainer's
`precision`, gradient checkpointing the module's `gradient_checkpointing` flag, pinned memory
and persistent workers the data config's `pin_memory` / `persistent_workers`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from ymn.model.attention_hooks import attention_hooks

log = logging.getLogger(__name__)


def set_attention(module: Any, sdpa: bool = True) -> None:
    """UNet and VAE attention through PyTorch SDPA (`AttnProcessor2_0`) or the classic
    matmul-softmax `AttnProcessor` (the kernel of every layer, captured or not); the text encoder
    through transformers' sdpa / eager."""
    for name in ("unet", "vae"):
        model = getattr(module, name, None)
        if model is not None and hasattr(model, "attn_processors"):
            attention_hooks(model).set_kernel(AttnProcessor2_0() if sdpa else AttnProcessor())
    text_encoder = getattr(module, "text_encoder", None)
    if text_encoder is not None and hasattr(text_encoder, "set_attn_implementation"):
        text_encoder.set_attn_implementation("sdpa" if sdpa else "eager")


def apply_fast_path(
    module: Any,
    *,
    sdpa: bool = True,
    channels_last: bool = False,
    compile_unet: bool = False,
    compile_kwargs: dict[str, Any] | None = None,
) -> Any:
    """Switch the speed options on `module` in place and return it.

    sdpa: PyTorch scaled-dot-product attention (diffusers' default) instead of the classic
    processor. channels_last: NHWC memory format for the UNet (and VAE) convolutions, a gain on
    tensor-core GPUs. compile_unet: `torch.compile` the UNet (first steps pay the compile time).
    """
    set_attention(module, sdpa)
    if channels_last:
        for name in ("unet", "vae"):
            if (model := getattr(module, name, None)) is not None:
                model.to(memory_format=torch.channels_last)
    if compile_unet:
        module.unet.compile(**(compile_kwargs or {}))
    return module


def adamw_kernel(params: Iterable[torch.Tensor], prefer: str = "auto") -> dict[str, bool]:
    """The AdamW implementation flags for these parameters: `fused` when every parameter is a
    floating tensor on a device with a fused kernel (CUDA, CPU in torch >= 2.4), else `foreach`
    on CUDA, else the default loop. `prefer` = auto | fused | foreach | loop."""
    params = list(params)
    if prefer == "loop":
        return {"foreach": False}
    accepts_fused = "fused" in inspect.signature(torch.optim.AdamW).parameters
    devices = {p.device.type for p in params}
    fusable = devices <= {"cuda", "cpu", "xpu", "mps"} and all(
        p.is_floating_point() for p in params
    )
    if prefer in ("auto", "fused") and accepts_fused and fusable and params:
        return {"fused": True}
    if prefer == "fused":
        log.warning("fused AdamW not available for devices %s; using foreach", sorted(devices))
    return {"foreach": True}


def make_adamw(
    params: Iterable[Any],
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    kernel: str = "auto",
) -> torch.optim.AdamW:
    """AdamW with the fastest kernel these parameters allow (Hydra: `_partial_: true`)."""
    params = list(params)
    flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    flags = adamw_kernel(flat, kernel)
    return torch.optim.AdamW(
        params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, **flags
    )


class FastPath(L.Callback):
    """`apply_fast_path` as a callback: applied once in `setup`, after the model is built."""

    def __init__(
        self, sdpa: bool = True, channels_last: bool = False, compile_unet: bool = False
    ) -> None:
        super().__init__()
        self.options = {"sdpa": sdpa, "channels_last": channels_last, "compile_unet": compile_unet}
        self._applied = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Apply the options to the module once."""
        if not self._applied:
            apply_fast_path(pl_module, **self.options)
            self._applied = True
            log.info("fast path: %s", self.options)
