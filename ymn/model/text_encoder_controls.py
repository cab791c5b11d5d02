"""Text-encoder controls: its own learning rate, frozen embeddings or first layers, CLIP skip.

What EveryDream2 (`text_encoder_overrides`, `freeze_embeddings`) and kohya (`--clip_skip`) users
expect. `clip_skip` counts as A1111 and kohya do: 1 is the last layer (SD 1.x), 2 the
penultimate layer's output passed through the final layer norm.
Config: `model.text_encoder_controls` (`conf/model/tiny.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import CLIPTextModel


def _transformer(text_encoder: CLIPTextModel) -> torch.nn.Module:
    """The module holding embeddings / encoder / final_layer_norm (transformers 4: text_model)."""
    return getattr(text_encoder, "text_model", text_encoder)


@dataclass(frozen=True)
class TextEncoderControls:
    """How the text encoder trains and which layer conditions the UNet."""

    lr: float | None = None  # None: the optimizer's learning rate
    freeze_embeddings: bool = False  # token and position embeddings
    freeze_layers: int = 0  # the first N transformer layers
    clip_skip: int = 1

    def __post_init__(self) -> None:
        if self.clip_skip < 1:
            raise ValueError(
                f"model.text_encoder_controls.clip_skip={self.clip_skip}: must be >= 1"
            )
        if self.freeze_layers < 0:
            raise ValueError(
                f"model.text_encoder_controls.freeze_layers={self.freeze_layers}: must be >= 0"
            )
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"model.text_encoder_controls.lr={self.lr}: must be > 0 (or null)")

    def check_fits(self, text_encoder: CLIPTextModel) -> None:
        """Fail early, naming the key, when the encoder has too few layers for the settings."""
        n_layers = len(_transformer(text_encoder).encoder.layers)
        if self.clip_skip > n_layers:
            raise ValueError(
                f"model.text_encoder_controls.clip_skip={self.clip_skip}: "
                f"the text encoder has only {n_layers} layers"
            )
        if self.freeze_layers > n_layers:
            raise ValueError(
                f"model.text_encoder_controls.freeze_layers={self.freeze_layers}: "
                f"the text encoder has only {n_layers} layers"
            )

    def freeze(self, text_encoder: CLIPTextModel) -> None:
        """Turn off gradients of the frozen parts (the rest keeps its requires_grad)."""
        self.check_fits(text_encoder)
        model = _transformer(text_encoder)
        if self.freeze_embeddings:
            model.embeddings.requires_grad_(False)
        for layer in model.encoder.layers[: self.freeze_layers]:
            layer.requires_grad_(False)

    def encode(self, text_encoder: CLIPTextModel, input_ids: torch.Tensor) -> torch.Tensor:
        """The UNet's conditioning: last hidden state, or an earlier one + final layer norm."""
        if self.clip_skip == 1:
            return text_encoder(input_ids)[0]
        out = text_encoder(input_ids, output_hidden_states=True)
        hidden = out.hidden_states[-self.clip_skip]
        return _transformer(text_encoder).final_layer_norm(hidden)

    def param_groups(
        self, unet_params: list[torch.nn.Parameter], text_params: list[torch.nn.Parameter]
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the text encoder gets `lr` when it is set."""
        groups: list[dict[str, Any]] = [{"params": unet_params, "name": "unet"}]
        if text_params:
            group: dict[str, Any] = {"params": text_params, "name": "text_encoder"}
            if self.lr is not None:
                group["lr"] = self.lr
            groups.append(group)
        return groups
