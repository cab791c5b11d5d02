"""SampleImages: a grid of samples at the start (the pretrained baseline), every N steps and at
the end, saved as `<run dir>/samples/step_XXXXXX.png` and logged to wandb when present.

The module owns how to sample (`log_images`); this callback only decides when, and never lets
a failure to log stop training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from PIL import Image

from ymn.callbacks.schedule import StepScheduledCallback, wandb_loggers
from ymn.config_values import plain
from ymn.probes.prompts import build_probe_prompts, load_prompt_file

log = logging.getLogger(__name__)


def image_grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Paste images on a white grid (cells as large as the largest image), row-major."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % columns) * cell_w, (i // columns) * cell_h))
    return grid


def _sampler_key(entry: dict[str, Any]) -> tuple[Any, Any, Any]:
    return (entry.get("size"), entry.get("cfg"), entry.get("negative"))


class SampleImages(StepScheduledCallback):
    """Sample fixed prompts at fixed seeds on a schedule; one PNG grid per step.

    prompts: a list of prompts (each sampled at every seed); prompt_file: a text/JSON prompt
    file (its own seeds/sizes/cfg win); neither: one probe prompt per count 1–5 written with
    `caption` (the run's caption config). size: (w, h), None = the model's native size.
    batch_size: entries per pipeline call (consecutive entries of one size, cfg and negative
    prompt); each keeps its own seeded generator, so a grid does not depend on it.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        prompts: Sequence[str] | None = None,
        prompt_file: str | None = None,
        seeds: Sequence[int] = (0, 1),
        size: Sequence[int] | None = None,
        steps: int = 20,
        guidance_scale: float = 5.0,
        at_start: bool = True,
        at_end: bool = True,
        out_dir: str | None = None,
        caption: Any = None,
        negative_prompt: str | None = None,
        batch_size: int = 8,
    ) -> None:
        super().__init__(every_n_steps, at_start, at_end, out_dir)
        self.batch_size = max(1, int(batch_size))
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        size = plain(size)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.entries = self._entries(plain(prompts), prompt_file, plain(seeds), caption)
        for entry in self.entries:
            entry["negative"] = entry.get("negative") or negative_prompt

    @staticmethod
    def _entries(
        prompts: Sequence[str] | None, prompt_file: str | None, seeds: Sequence[int], caption: Any
    ) -> list[dict[str, Any]]:
        if prompt_file:
            entries = load_prompt_file(prompt_file)
            for i, entry in enumerate(entries):  # ED2's seed -1 (random): fixed here instead
                entry["seed"] = entry["seed"] if entry["seed"] is not None else seeds[0] + i
            return entries
        if prompts is None:
            records = build_probe_prompts(
                plain(caption), counts=(1, 2, 3, 4, 5), layouts=("row",), seeds=seeds
            )
            prompts = list(dict.fromkeys(r["prompt"] for r in records))
        return [{"prompt": p, "seed": int(s)} for s in seeds for p in prompts]

    # -- work --------------------------------------------------------------------------------
    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> Path | None:
        """Sample every entry, save the grid, log it; once per step, on global rank 0 only."""
        return self.run_once(trainer, pl_module, step)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> Path | None:
        if not self.entries:
            return None
        images = []
        for batch in self._batches():
            first = batch[0]
            images += pl_module.log_images(
                [e["prompt"] for e in batch],
                [e["seed"] for e in batch],
                size=tuple(first["size"]) if first.get("size") else self.size,
                steps=self.steps,
                guidance_scale=first.get("cfg") or self.guidance_scale,
                negative_prompts=[e["negative"] for e in batch] if first.get("negative") else None,
            )
        path = self.output_path(trainer, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = len({e["prompt"] for e in self.entries})
        image_grid(images, columns=min(columns, 8)).save(path)
        lines = [f"{i}\t{e['seed']}\t{e['prompt']}" for i, e in enumerate(self.entries)]
        path.with_suffix(".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._log(trainer, images, step)
        return path

    def output_path(self, trainer: L.Trainer, step: int) -> Path:
        return self.run_dir(trainer) / "samples" / f"step_{step:06d}.png"

    def _batches(self) -> list[list[dict[str, Any]]]:
        """Consecutive entries sharing size, cfg and negative prompt, at most batch_size each."""
        batches: list[list[dict[str, Any]]] = []
        for entry in self.entries:
            key = _sampler_key(entry)
            last = batches[-1] if batches else None
            if last and len(last) < self.batch_size and _sampler_key(last[0]) == key:
                last.append(entry)
            else:
                batches.append([entry])
        return batches

    def _log(self, trainer: L.Trainer, images: list[Image.Image], step: int) -> None:
        captions = [f"{e['prompt']} (seed {e['seed']})" for e in self.entries]
        for logger in wandb_loggers(trainer):
            try:
                logger.log_image(key="samples", images=images, caption=captions, step=step)
            except Exception as error:  # logging must never stop training
                log.warning("Could not log samples at step %d to wandb: %s", step, error)
