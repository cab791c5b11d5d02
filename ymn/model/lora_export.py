"""Export trained adapters as a kohya LoRA file (`lora.safetensors`), the format A1111, ComfyUI
and diffusers' `load_lora_weights` read.

Keys, per adapted module: `<name>.lora_down.weight` (peft's A), `<name>.lora_up.weight` (B) and
`<name>.alpha` (a scalar; the UIs scale by alpha / rank, as peft does). For SD 1.x kohya names
modules by their *diffusers* path with dots as underscores (sd-scripts trains SD 1.x on the
diffusers UNet layout), e.g. `lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`
and `lora_te_text_model_encoder_layers_0_self_attn_q_proj`; A1111's Lora extension and ComfyUI
map those names onto the LDM checkpoint themselves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from ymn.model.adapters import ADAPTER_NAME, adapter_layers
from ymn.model.components import Components

log = logging.getLogger(__name__)

LORA_FILE_NAME = "lora.safetensors"
UNET_PREFIX = "lora_unet_"
TEXT_ENCODER_PREFIX = "lora_te_"


def kohya_name(prefix: str, module_name: str) -> str:
    return prefix + module_name.replace(".", "_")


def text_encoder_module_prefix(text_encoder: torch.nn.Module) -> str:
    """transformers >= 5.6 flattened CLIPTextModel; kohya names keep the `text_model.` level."""
    return "" if hasattr(text_encoder, "text_model") else "text_model."


def module_tensors(prefix: str, model: torch.nn.Module, inner: str = "") -> dict[str, torch.Tensor]:
    """The kohya tensors of every adapter in `model`."""
    out = {}
    for name, layer in adapter_layers(model):
        key = kohya_name(prefix, inner + name)
        out[f"{key}.lora_down.weight"] = layer.lora_A[ADAPTER_NAME].weight
        out[f"{key}.lora_up.weight"] = layer.lora_B[ADAPTER_NAME].weight
        out[f"{key}.alpha"] = torch.tensor(float(layer.lora_alpha[ADAPTER_NAME]))
    return out


def kohya_state_dict(components: Components) -> dict[str, torch.Tensor]:
    """All adapters of the UNet and text encoder under kohya's names (empty without adapters)."""
    text = components.text_encoder
    state = module_tensors(UNET_PREFIX, components.unet)
    state.update(module_tensors(TEXT_ENCODER_PREFIX, text, text_encoder_module_prefix(text)))
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def kohya_metadata(components: Components) -> dict[str, str]:
    """The `ss_*` fields sd-scripts writes that UIs display (network module, dim, alpha)."""
    linear, conv = [], []
    for model in (components.unet, components.text_encoder):
        for _, layer in adapter_layers(model):
            is_conv = getattr(layer.get_base_layer(), "kernel_size", (1, 1)) != (1, 1)
            (conv if is_conv else linear).append(layer)
    metadata = {
        "format": "pt",
        "ss_network_module": "networks.lora",
        "ss_base_model_version": "sd_v1",
    }
    if linear:
        metadata["ss_network_dim"] = str(linear[0].r[ADAPTER_NAME])
        metadata["ss_network_alpha"] = str(float(linear[0].lora_alpha[ADAPTER_NAME]))
    if conv:
        args = {"conv_dim": conv[0].r[ADAPTER_NAME], "conv_alpha": conv[0].lora_alpha[ADAPTER_NAME]}
        metadata["ss_network_args"] = json.dumps(args)
    return metadata


def export_kohya_lora(components: Components, path: Path) -> list[Path]:
    """Write `path` when the model carries adapters; returns [path], or [] when it has none."""
    state = kohya_state_dict(components)
    if not state:
        return []
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=kohya_metadata(components))
    log.info("Wrote %s (%d adapted modules, kohya format)", path, len(state) // 3)
    return [path]
