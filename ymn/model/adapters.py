"""LoRA / LoCon adapters through peft: the base weights freeze, only the low-rank matrices train.

The default targets are kohya's (sd-scripts `networks/lora.py`): every Linear and 1x1 conv of the
UNet's transformer blocks, and the CLIP text encoder's attention and MLP projections. LoCon
(`conv_rank` > 0) adds the resnets' and resamplers' 3x3 convs at their own rank, as kohya's
`conv_dim` does. The text encoder gets adapters when `model.train_text_encoder` is true (kohya
trains both by default). Same modules, same `alpha / rank` scaling: `lora_export.py` writes the file
A1111 and ComfyUI load. Config: `model/adapter=lora` or `=locon` (`conf/model/adapter/`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from ymn.model.components import Components

ADAPTER_NAME = "default"
UNET_TARGETS = (
    "proj_in",
    "proj_out",
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
)
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
CONV_TARGETS = ("conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv")  # LoCon, 3x3


@dataclass(frozen=True)
class LoraAdapter:
    """LoRA settings (`model.adapter.*`); `attach` puts the adapters on the model."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    unet: bool = True  # false: text encoder only (its adapters follow model.train_text_encoder)
    conv_rank: int = 0  # LoCon: > 0 also adapts the 3x3 convs (CONV_TARGETS) at this rank
    conv_alpha: float | None = None  # None: conv_rank (scale 1)
    unet_targets: Sequence[str] | None = None  # None: UNET_TARGETS (kohya's)
    text_encoder_targets: Sequence[str] | None = None  # None: TEXT_ENCODER_TARGETS

    def __post_init__(self) -> None:
        # Hydra hands lists over as ListConfig; keep plain tuples.
        unet_targets = UNET_TARGETS if self.unet_targets is None else tuple(self.unet_targets)
        text_targets = self.text_encoder_targets
        text_targets = TEXT_ENCODER_TARGETS if text_targets is None else tuple(text_targets)
        object.__setattr__(self, "unet_targets", unet_targets)
        object.__setattr__(self, "text_encoder_targets", text_targets)
        for key in ("rank", "alpha"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.adapter.{key}={getattr(self, key)}: must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.adapter.dropout={self.dropout}: must be in [0, 1)")
        if self.conv_rank < 0:
            raise ValueError(f"model.adapter.conv_rank={self.conv_rank}: must be >= 0 (0: off)")
        if self.conv_alpha is not None and self.conv_alpha <= 0:
            raise ValueError(f"model.adapter.conv_alpha={self.conv_alpha}: must be > 0 or null")
        if self.conv_rank and not self.unet:
            raise ValueError("model.adapter.conv_rank needs model.adapter.unet=true (LoCon)")

    def attach(self, unet: torch.nn.Module, text_encoder: torch.nn.Module | None) -> None:
        """Freeze the UNet and the text encoder and inject the adapters (which alone require
        grad); `text_encoder` None: it gets none (model.train_text_encoder=false)."""
        if not self.unet and text_encoder is None:
            raise ValueError(
                "model.adapter.unet=false with model.train_text_encoder=false: nothing would train"
            )
        unet.requires_grad_(False)
        if self.unet:
            linear = match_modules(unet, self.unet_targets, "model.adapter.unet_targets")
            conv = match_modules(unet, CONV_TARGETS, "model.adapter.conv_rank")
            inject(unet, self.peft_config(linear, conv if self.conv_rank else []))
        if text_encoder is not None:
            text_encoder.requires_grad_(False)
            names = match_modules(
                text_encoder, self.text_encoder_targets, "model.adapter.text_encoder_targets"
            )
            inject(text_encoder, self.peft_config(names, []))

    def peft_config(self, names: list[str], conv_names: list[str]) -> LoraConfig:
        """Exact module names (no suffix surprises); the conv ones at conv_rank / conv_alpha."""
        conv_alpha = self.conv_alpha if self.conv_alpha is not None else self.conv_rank
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=names + conv_names,
            rank_pattern={re.escape(n): self.conv_rank for n in conv_names},
            alpha_pattern={re.escape(n): conv_alpha for n in conv_names},
            init_lora_weights=True,  # kohya's too: up (B) starts at zero, the base is unchanged
        )


def match_modules(model: torch.nn.Module, suffixes: Sequence[str], key: str) -> list[str]:
    """Full names of the Linear / Conv2d modules named `suffix` or ending in `.suffix`; each
    suffix must match at least once (a typo would otherwise train nothing there)."""
    layers = [
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    ]
    found: list[str] = []
    for suffix in suffixes:
        hits = [n for n in layers if n == suffix or n.endswith("." + suffix)]
        if not hits:
            raise ValueError(
                f"{key}: {suffix!r} matches no Linear or Conv2d module of "
                f"{type(model).__name__} (e.g. {layers[:3]})"
            )
        found += [n for n in hits if n not in found]
    return found


def inject(model: torch.nn.Module, config: LoraConfig) -> None:
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)


def adapter_layers(model: torch.nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """(module name, peft LoRA layer) for every adapted module."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def has_adapters(model: torch.nn.Module) -> bool:
    return next(adapter_layers(model), None) is not None


# ---------------------------------------------------------------------------------------------
# Merging (the exported full model)
# ---------------------------------------------------------------------------------------------


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's state dict with every adapter folded in: W + (alpha / r) B A."""
    state = {}
    for key, value in model.state_dict().items():
        if ".lora_" not in key:
            state[key.replace(".base_layer.", ".")] = value
    for name, layer in adapter_layers(model):
        delta = layer.get_delta_weight(ADAPTER_NAME)
        state[f"{name}.weight"] = state[f"{name}.weight"] + delta.to(state[f"{name}.weight"])
    return state


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A fresh, adapter-free model of the same class and config with the adapters merged in
    (built from the config rather than deep-copied: the live model may carry hooks)."""
    if not has_adapters(model):
        return model
    config = model.config
    if hasattr(type(model), "from_config"):  # diffusers models
        fresh = type(model).from_config(config)
    else:  # transformers models
        fresh = type(model)(config)
    fresh.load_state_dict(merged_state_dict(model), strict=True)  # copies onto the CPU
    return fresh.eval()


def merged_components(components: Components) -> Components:
    """Components with adapter-free UNet and text encoder (the same objects when none)."""
    return replace(
        components,
        unet=merged_copy(components.unet),
        text_encoder=merged_copy(components.text_encoder),
    )
