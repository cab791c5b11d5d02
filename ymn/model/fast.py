"""The fast training path: SDPA attention, channels_last and `torch.compile` of the UNet.
torch's AdamW already takes its foreach kernel on CUDA; `+model.optimizer.fused=true` asks for
the fused one.

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

import logging
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
