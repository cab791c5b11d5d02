"""Resumable training stages for the tiny base: seeded per step, checkpointed without pickle.

Every step draws its randomness from a generator seeded by (seed, stage, step), so a stage
resumed from its checkpoint redraws exactly what an uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from tqdm import tqdm


def warmup_cosine(step: int, total: int, warmup: int = 50, floor: float = 0.1) -> float:
    """LR multiplier: linear warmup, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, stage, step)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


def step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    """The generator of one training step: a resumed run redraws exactly what it would have.

    It lives on the CPU whatever device trains: draws are made there and moved, so a step's
    randomness is the same on every device."""
    return torch.Generator().manual_seed(derived_seed(seed, stage, step))


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's parameters are (the device its stage trains on)."""
    return next(module.parameters()).device


def module_weights(
    tensors: dict[str, torch.Tensor], name: str, kind: str = "module"
) -> dict[str, torch.Tensor]:
    """The state dict of module `name` in a stage checkpoint's tensors (keys `module.<name>.*`;
    with kind "average", its `ParameterAverage`'s parameters, keys `average.<name>.*`)."""
    prefix = f"{kind}.{name}."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def check_average_decay(decay: float, label: str = "average decay") -> None:
    """Refuse a moving-average decay outside (0, 1); `label` names it in the error."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"{label} {decay}: expected a value in (0, 1)")


class ParameterAverage:
    """An exponential moving average of named parameters, updated after every optimizer step
    (diffusers' `EMAModel`, the fine-tune's: the first update copies, later ones use
    min(decay, (1 + k) / (10 + k)) with k the updates before); a stage checkpoint keeps it
    under `average.<module>.<parameter>`."""

    def __init__(self, named: list[tuple[str, torch.nn.Parameter]], decay: float) -> None:
        check_average_decay(decay)
        self.names = [name for name, _ in named]
        self.parameters = [parameter for _, parameter in named]
        self.ema = EMAModel(self.parameters, decay=decay)

    def update(self) -> None:
        self.ema.step(self.parameters)

    @property
    def updates(self) -> int:
        return int(self.ema.optimization_step)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"average.{name}": shadow.detach().cpu().contiguous()
            for name, shadow in zip(self.names, self.ema.shadow_params, strict=True)
        }

    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        missing = [name for name in self.names if f"average.{name}" not in tensors]
        if missing:
            raise ValueError(
                f"the checkpoint has no parameter average (e.g. {missing[0]}): it was made "
                "without one; continue it with the flags it was started with"
            )
        for name, shadow in zip(self.names, self.ema.shadow_params, strict=True):
            shadow.copy_(tensors[f"average.{name}"])
        self.ema.optimization_step = updates

    def copy_to_parameters(self) -> None:
        """Put the average into the trained parameters (what a finished stage saves)."""
        self.ema.copy_to(self.parameters)


def named_trainable(modules: dict[str, torch.nn.Module]) -> list[tuple[str, torch.nn.Parameter]]:
    """(`<module>.<parameter>`, parameter) for every parameter that trains."""
    return [
        (f"{name}.{key}", parameter)
        for name, module in modules.items()
        for key, parameter in module.named_parameters()
        if parameter.requires_grad
    ]


class StageCheckpoint:
    """A stage's resumable state: `work/<name>.safetensors` (module weights, optimizer
    moments and, if kept, a `ParameterAverage`) + `work/<name>.json` (step, schedule,
    optimizer settings, loss history).

    No pickle, so a checkpoint can be shared or committed and read safely; the JSON is
    written last, atomically, and names the step the tensors belong to.
    """

    def __init__(
        self,
        work: Path,
        name: str,
        modules: dict[str, torch.nn.Module],
        average: ParameterAverage | None = None,
    ) -> None:
        self.tensors = Path(work) / f"{name}.safetensors"
        self.record = Path(work) / f"{name}.json"
        self.modules = modules
        self.average = average

    def save(self, step: int, optimizer, schedule, history: list[dict[str, float]]) -> None:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"module.{name}.{key}": value.detach().cpu().contiguous()
            for name, module in self.modules.items()
            for key, value in module.state_dict().items()
        }
        opt = optimizer.state_dict()
        for index, values in opt["state"].items():
            for key, value in values.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).cpu().contiguous()
        record = {
            "step": step,
            "param_groups": opt["param_groups"],
            "schedule": schedule.state_dict(),
            "history": history,
        }
        if self.average is not None:
            tensors.update(self.average.tensors())
            record["average_updates"] = self.average.updates
        tmp = self.tensors.with_suffix(".tmp")
        save_file(tensors, tmp)
        tmp.replace(self.tensors)
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(self.record)

    def load(self, optimizer, schedule) -> tuple[int, list[dict[str, float]]]:
        """Restore into the modules and optimizer; returns (next step, history). 0 if none."""
        if not self.record.is_file():
            return 0, []
        record = json.loads(self.record.read_text())
        tensors = load_file(self.tensors)
        for name, module in self.modules.items():
            module.load_state_dict(module_weights(tensors, name))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
        schedule.load_state_dict(record["schedule"])
        if self.average is not None:
            self.average.load(tensors, int(record.get("average_updates", 0)))
        return int(record["step"]), list(record["history"])


def run_stage(
    name: str,
    checkpoint: StageCheckpoint,
    params: list[torch.nn.Parameter],
    loss_of_step: Callable[[int], tuple[torch.Tensor, dict[str, float]]],
    steps: int,
    lr: float,
    weight_decay: float,
    save_every: int,
) -> list[dict[str, float]]:
    """AdamW with warmup + cosine over `steps`, resumed from and saved to `checkpoint` (and
    the checkpoint's parameter average, if it keeps one, updated after every step)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warmup_cosine, total=steps))
    start, history = checkpoint.load(optimizer, schedule)
    bar = tqdm(range(start, steps), desc=name, unit="step", initial=start, total=steps)
    for step in bar:
        loss, stats = loss_of_step(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if checkpoint.average is not None:
            checkpoint.average.update()
        history.append({"loss": loss.item(), **stats})
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            checkpoint.save(step + 1, optimizer, schedule, history)
    return history


def mean_of_last(history: list[dict[str, float]], n: int = 50) -> dict[str, float]:
    """Mean of each logged value over the last n steps (empty history → {})."""
    tail = history[-n:]
    return {k: float(np.mean([h[k] for h in tail])) for k in tail[0]} if tail else {}
