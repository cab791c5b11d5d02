"""ProbeConfig: every setting of the probe callback and its passes, in one typed place.

Built by Hydra from the `probes` group (`_target_: ymn.probes.config.ProbeConfig`), so each
setting has one override path, `probes.<field>`, and the config validator checks its keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ymn.data.captions import CaptionConfig, caption_config
from ymn.probes.linear import DEFAULT_FEATURE_LAYERS


@dataclass
class ProbeConfig:
    """Settings of the probe callback (schedule, prompt set) and of each probe pass.

    every_n_steps / at_start / at_end: when passes run (every_n_steps <= 0: never on a cadence).
    detector: "synthetic", "animeface", "package.module:Class" or a detector object.
    counts / layouts / seeds / characters / general: the probe prompt set (ymn.probes.prompts);
    seeds: a list, or an int n for seeds 0..n-1 (the same seeds for every count).
    heldout_batches: val batches for the teacher-forced attention and linear probes.
    batch_size: probe images per pipeline call; each image keeps its own generator, so an
    image does not depend on the batch it was sampled in.
    steps / guidance_scale / size: the DDIM sampler; size (w, h) None = the model's native size.
    timesteps: noise levels of the teacher-forced pass. attention_layers: substrings of attn2
    processor names (None = all). feature_layers: name → UNet submodule for the linear probe.
    linear_condition: "empty" probes the image alone (the caption would leak the labels),
    "caption" probes what the UNet sees in training. noise_prior: start each sample from
    count-aware noise (`ymn.remedies.noise_prior`, issue 8) with bumps of noise_prior_amplitude
    at the prompt's cells; same steps, so equal compute. ema: sample with the UNet's EMA
    weights (needs `model.ema_decay`; the text encoder stays as trained), as the export does.
    """

    caption: CaptionConfig = field(default_factory=CaptionConfig)
    every_n_steps: int = 1000
    at_start: bool = True
    at_end: bool = True
    detector: Any = "synthetic"
    detector_kwargs: dict[str, Any] = field(default_factory=dict)
    counts: list[int | str] = field(default_factory=lambda: [1, 2, 3, 4, 5, "many"])
    layouts: list[str] = field(default_factory=lambda: ["row", "scatter"])
    seeds: list[int] | int = field(default_factory=lambda: [0, 1])
    characters: list[str] | str | None = None
    general: str | None = None
    heldout_batches: int = 4
    batch_size: int = 8
    steps: int = 10
    guidance_scale: float = 5.0
    size: tuple[int, int] | None = None
    timesteps: tuple[int, ...] = (250, 500, 750)
    attention_layers: list[str] | None = None
    feature_layers: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FEATURE_LAYERS))
    attention_on_samples: bool = True
    teacher_forced: bool = True
    linear: bool = True
    linear_condition: str = "empty"
    folds: int = 5
    alpha: float = 1.0
    n_permutations: int = 1000
    seed: int = 0
    save_images: bool = False
    noise_prior: bool = False
    noise_prior_amplitude: float = 1.5
    ema: bool = False

    def __post_init__(self) -> None:
        self.caption = caption_config(self.caption)
        if isinstance(self.seeds, int):
            self.seeds = list(range(self.seeds))
        self.seeds = [int(s) for s in self.seeds]
        self.counts = list(self.counts)
        self.layouts = list(self.layouts)
        self.detector_kwargs = dict(self.detector_kwargs or {})
        if self.size is not None:
            self.size = (int(self.size[0]), int(self.size[1]))
        self.timesteps = tuple(int(t) for t in self.timesteps)
        if self.linear_condition not in ("empty", "caption"):
            raise ValueError(
                f"probes.linear_condition must be empty|caption, got {self.linear_condition!r}"
            )
        if int(self.batch_size) < 1:
            raise ValueError(f"probes.batch_size must be >= 1, got {self.batch_size!r}")
        self.batch_size = int(self.batch_size)

    def report(self) -> dict[str, Any]:
        """The settings as JSON-ready values (a detector object is named by its class)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["caption"] = dataclasses.asdict(self.caption)
        if not isinstance(self.detector, str):
            kind = type(self.detector)
            values["detector"] = f"{kind.__module__}:{kind.__qualname__}"
        return values


def probe_config(value: ProbeConfig | Mapping[str, Any] | None) -> ProbeConfig:
    """A ProbeConfig from itself, a (Hydra) mapping of its fields, or None (the defaults)."""
    if value is None:
        return ProbeConfig()
    if isinstance(value, ProbeConfig):
        return value
    from ymn.config_values import plain

    values = {k: v for k, v in plain(value).items() if not str(k).startswith("_")}
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(ProbeConfig)})
    if unknown:
        raise TypeError(f"unknown probe setting(s) {unknown}; see ymn.probes.config.ProbeConfig")
    return ProbeConfig(**values)
