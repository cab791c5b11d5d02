"""The one owner of a diffusers model's attention processors, and the one place that computes
attention probabilities softmax(QKᵀ) for anything that reads them.

`attention_hooks(unet)` returns the model's `AttentionHooks` (made on first use). Its clients:

- the fast path sets the kernel every layer runs (`set_kernel`: SDPA or the classic processor);
- the cross-attention localization loss registers a capture *with grad*: it receives the
  probabilities of training forwards (grad enabled, layer in train mode) with their graph;
- the probes' attention recorder registers a capture *without grad* for a probe pass: it
  receives detached probabilities of every forward.

A layer no capture names runs its kernel processor itself, untouched. A layer some capture
names gets a `CapturingAttnProcessor`: the kernel still computes the layer's output (so a
capture never changes it), and, on a cross-attention call some capture wants, the probabilities
are computed once and handed to each capture that wants them. Set processors through this owner:
a direct `set_attn_processor` on the model drops the captures until the next `register` or
`unregister`, which keeps that processor as the layers' kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

Sink = Callable[[str, torch.Tensor], None]


def cross_attention_layers(unet: Any, layers: Sequence[str] | None = None) -> list[str]:
    """Processor keys of the attn2 layers whose name contains one of `layers` (all if None)."""
    names = [k for k in unet.attn_processors if ".attn2." in k]
    selected = [k for k in names if layers is None or any(part in k for part in layers)]
    if not selected:
        raise ValueError(f"no cross-attention layer matches {list(layers or [])}; have {names}")
    return selected


def attention_probs(
    attn: Any,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    temb: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax(QKᵀ) of a diffusers `Attention` layer's cross-attention, [B * heads, Q, T], with
    the same input steps as diffusers' classic `AttnProcessor`."""
    hidden = hidden_states
    if attn.spatial_norm is not None:
        hidden = attn.spatial_norm(hidden, temb)
    if hidden.ndim == 4:
        batch, channels, height, width = hidden.shape
        hidden = hidden.view(batch, channels, height * width).transpose(1, 2)
    batch_size, sequence_length, _ = encoder_hidden_states.shape
    attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
    if attn.group_norm is not None:
        hidden = attn.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
    context = encoder_hidden_states
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query = attn.head_to_batch_dim(attn.to_q(hidden))
    key = attn.head_to_batch_dim(attn.to_k(context))
    return attn.get_attention_scores(query, key, attention_mask)


def head_mean(probs: torch.Tensor, heads: int) -> torch.Tensor:
    """[B * heads, Q, T] (diffusers' batch-major) → the float32 mean over heads, [B, Q, T]."""
    return probs.view(-1, heads, *probs.shape[1:]).mean(dim=1, dtype=torch.float32)


@dataclass(eq=False)
class Capture:
    """One client's registration: the layers (processor keys) it reads, where the head-averaged
    probabilities [B, Q, T] go (`sink(layer, probs)`), and whether it needs their graph.

    grad=True: only forwards that build a graph (grad enabled, layer in train mode), probabilities
    with grad. grad=False: every forward, probabilities detached.
    """

    layers: tuple[str, ...]
    sink: Sink
    grad: bool = False

    def wants(self, attn: Any) -> bool:
        """Whether this call of layer `attn` is one this capture records."""
        return not self.grad or (attn.training and torch.is_grad_enabled())


class CapturingAttnProcessor:
    """A captured layer's processor: the kernel computes the output; the probabilities go to the
    captures that want this call."""

    def __init__(self, name: str, kernel: Any, captures: Sequence[Capture]) -> None:
        self.name = name
        self.kernel = kernel
        self.captures = tuple(captures)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            active = [c for c in self.captures if c.wants(attn)]
            if active:
                keep_graph = torch.is_grad_enabled() and any(c.grad for c in active)
                with torch.set_grad_enabled(keep_graph):
                    probs = attention_probs(
                        attn, hidden_states, encoder_hidden_states, attention_mask, temb
                    )
                    probs = head_mean(probs, attn.heads)
                for capture in active:
                    capture.sink(self.name, probs if capture.grad else probs.detach())
        if temb is not None:
            kwargs["temb"] = temb
        return self.kernel(
            attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs
        )


class AttentionHooks:
    """Installs a model's attention processors: the kernel where nothing captures, a
    `CapturingAttnProcessor` around it where something does. See the module doc."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.kernels: dict[str, Any] = dict(model.attn_processors)
        self.captures: list[Capture] = []

    def set_kernel(self, processor: Any) -> None:
        """Run every attention layer through `processor`; captures stay registered."""
        self.kernels = {name: processor for name in self.kernels}
        self.install()

    def register(self, layers: Sequence[str], sink: Sink, grad: bool = False) -> Capture:
        """Capture the cross-attention probabilities of `layers` (processor keys) into `sink`."""
        unknown = sorted(set(layers) - set(self.kernels))
        if unknown:
            raise ValueError(f"no attention layer {unknown}; have {sorted(self.kernels)}")
        capture = Capture(tuple(layers), sink, grad)
        self._adopt_kernels()
        self.captures.append(capture)
        self.install()
        return capture

    def unregister(self, capture: Capture) -> None:
        """Stop a capture; its layers go back to their kernel unless another capture names them."""
        self._adopt_kernels()
        self.captures = [c for c in self.captures if c is not capture]
        self.install()

    @contextmanager
    def capturing(self, layers: Sequence[str], sink: Sink, grad: bool = False) -> Iterator[Capture]:
        """`register` for the `with` block; unregistered on exit, also after an error."""
        capture = self.register(layers, sink, grad)
        try:
            yield capture
        finally:
            self.unregister(capture)

    def _adopt_kernels(self) -> None:
        """A processor set on the model directly (not through `set_kernel`) is that layer's kernel
        from now on, so registering or leaving a capture does not undo it."""
        for name, current in self.model.attn_processors.items():
            if not isinstance(current, CapturingAttnProcessor):
                self.kernels[name] = current

    def install(self) -> None:
        """Put each layer's processor in place for the current kernels and captures."""
        for name, current in self.model.attn_processors.items():
            captures = [c for c in self.captures if name in c.layers]
            kernel = self.kernels[name]
            processor = CapturingAttnProcessor(name, kernel, captures) if captures else kernel
            if processor is not current:
                self.model.get_submodule(name.removesuffix(".processor")).set_processor(processor)


def attention_hooks(model: Any) -> AttentionHooks:
    """The attention-processor owner of `model` (a diffusers UNet or VAE), made on first use."""
    hooks = model.__dict__.get("_attention_hooks")
    if hooks is None:
        hooks = AttentionHooks(model)
        model.__dict__["_attention_hooks"] = hooks
    return hooks


def layer_shape(n_queries: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a layer with n_queries positions, for a latent of latent_hw (ceil halving)."""
    height, width = latent_hw
    for factor in (1, 2, 4, 8, 16, 32, 64):
        h, w = math.ceil(height / factor), math.ceil(width / factor)
        if h * w == n_queries:
            return h, w
    raise ValueError(f"{n_queries} attention queries do not fit a {height}x{width} latent")
