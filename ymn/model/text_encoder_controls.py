"""Text-encoder controls: its own learning rate, frozen embeddings or first layers, CLIP skip.

What EveryDream2 (`text_encoder_overrides`, `freeze_embeddings`) and kohya (`--clip_skip`) users
expect. `clip_skip` counts as A1111 and kohya do: 1 is the last layer (SD 1.x), 2 the
penultimate layer's output passed through the final layer norm.
Config: `model.text_encoder_controls` (`conf/model/tiny.yaml`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CLIPTextModel

from ymn.data.tokenizer import merge_chunks, token_limit, tokenize


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
        """The UNet's conditioning: last hidden state, or an earlier one + final layer norm.
        Ids wider than the encoder's window (77) are kohya's chunks (`tokenizer.chunk_ids`):
        each is encoded on its own and the hidden states are joined (`merge_chunks`)."""
        window = int(text_encoder.config.max_position_embeddings)
        if input_ids.shape[-1] > window:
            chunks = input_ids.reshape(-1, window)
            hidden = self.encode(text_encoder, chunks)
            return merge_chunks(hidden, input_ids.shape[0], window)
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


def prompt_inputs(
    controls: TextEncoderControls,
    text_encoder: CLIPTextModel,
    tokenizer: Any,
    prompts: Sequence[str],
    negative_prompts: Sequence[str] | None,
) -> dict[str, Any]:
    """Pipeline text inputs: the prompts as they are when diffusers would encode them as
    training did, else our own embeddings of them (CLIP skip: diffusers' `clip_skip` expects
    transformers 4's `text_model`; captions over 77 tokens: diffusers cuts them at 77)."""
    if controls.clip_skip == 1 and token_limit(tokenizer) <= tokenizer.model_max_length:
        negative = list(negative_prompts) if negative_prompts else None
        return {"prompt": list(prompts), "negative_prompt": negative}
    negative = list(negative_prompts) if negative_prompts else [""] * len(prompts)
    device = text_encoder.device

    def embed(texts: list[str]) -> torch.Tensor:
        return controls.encode(text_encoder, tokenize(tokenizer, texts).to(device))

    return {"prompt_embeds": embed(list(prompts)), "negative_prompt_embeds": embed(negative)}
