"""What a single file says about its noise schedule, for tools that read no diffusers config.

An SD 1.x single file holds weights only, and a loader assumes epsilon prediction on SD's
schedule unless the file says otherwise. Two conventions say otherwise, and ymn writes both
for a v-prediction model: the empty marker tensors `v_pred` and `ztsnr` (zero terminal SNR),
which ComfyUI's model detection reads for SDXL-family checkpoints (not for SD 1.x ones, where
its user picks the sampling type) and other loaders read for any, and the ModelSpec metadata
key `modelspec.prediction_type` (`"v"` or `"epsilon"`). On load ymn reads them back, so a
file from elsewhere that carries them samples under the schedule it was trained with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from diffusers import DDPMScheduler

V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"
PREDICTION_METADATA_KEY = "modelspec.prediction_type"


def prediction_markers(scheduler_config: Mapping) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The marker tensors and metadata of a model trained under `scheduler_config`."""
    v_pred = scheduler_config.get("prediction_type") == "v_prediction"
    tensors = {V_PRED_KEY: torch.zeros(0)} if v_pred else {}
    if v_pred and scheduler_config.get("rescale_betas_zero_snr"):
        tensors[ZTSNR_KEY] = torch.zeros(0)
    return tensors, {PREDICTION_METADATA_KEY: "v" if v_pred else "epsilon"}


def marked_v_prediction(keys: Iterable[str], metadata: Mapping[str, str]) -> tuple[bool, bool]:
    """(v-prediction, zero terminal SNR) as a file's markers state them."""
    keys = set(keys)
    v_pred = V_PRED_KEY in keys or metadata.get(PREDICTION_METADATA_KEY) == "v"
    return v_pred, v_pred and ZTSNR_KEY in keys


def apply_markers(
    scheduler: DDPMScheduler, keys: Iterable[str], metadata: Mapping[str, str]
) -> DDPMScheduler:
    """`scheduler`, switched to v-prediction (and zero terminal SNR with trailing timesteps)
    where the file's markers say so; unchanged otherwise."""
    v_pred, ztsnr = marked_v_prediction(keys, metadata)
    if not v_pred:
        return scheduler
    changes: dict = {"prediction_type": "v_prediction"}
    if ztsnr:
        changes.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return type(scheduler).from_config({**scheduler.config, **changes})
