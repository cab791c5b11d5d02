"""How a model reads its prompts (`max_token_length`, `clip_skip`): the exported model card.

A run's export holds `text_encoding.json` (read back by `ymn-sample`) and a `README.md` model
card telling users of other tools how to prompt it: with `max_token_length` > 77 the model was
trained on captions encoded in 75-token chunks (kohya's `max_token_length`, A1111's default for
long prompts), with `clip_skip` 2 on the penultimate layer (A1111's "Clip skip").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SETTINGS_FILE = "text_encoding.json"
CARD_FILE = "README.md"


@dataclass(frozen=True)
class PromptSettings:
    """What sampling must match to encode prompts as training did."""

    max_token_length: int = 77
    clip_skip: int = 1

    @property
    def is_default(self) -> bool:
        return self == PromptSettings()


def module_settings(module: Any) -> PromptSettings | None:
    """A DiffusionModule's settings (None for objects without a tokenizer and controls)."""
    from ymn.data.tokenizer import LONG_CAPTION_ATTR

    tokenizer, controls = getattr(module, "tokenizer", None), getattr(module, "text_controls", None)
    if tokenizer is None or controls is None:
        return None
    length = getattr(tokenizer, LONG_CAPTION_ATTR, None) or tokenizer.model_max_length
    return PromptSettings(int(length), int(controls.clip_skip))


CARD = """# {name}

Fine-tuned Stable Diffusion 1.x ({files}).

## Prompts

- Tokens read per prompt: **{max_token_length}**{long}
- CLIP skip: **{clip_skip}**{skip}

Prompt `ymn-sample {name_hint} --prompt "..."` (it reads `{settings}` beside this card).
"""


def write_model_card(out_dir: Path, settings: PromptSettings) -> list[Path]:
    """`out_dir/text_encoding.json` and `out_dir/README.md` (the model card)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / SETTINGS_FILE
    data.write_text(json.dumps(asdict(settings), indent=2) + "\n")
    long = (
        f" (75-token chunks, each with its own BOS/EOS, hidden states joined: kohya "
        f"`--max_token_length={settings.max_token_length}`; A1111 and ComfyUI chunk long "
        "prompts the same way; in diffusers pass `prompt_embeds` built that way)"
        if settings.max_token_length > 77
        else " (one CLIP window; longer prompts are cut)"
    )
    skip = (
        " (the penultimate layer's output + the final layer norm, A1111 counting)"
        if settings.clip_skip > 1
        else " (the last layer, as SD 1.x)"
    )
    files = ", ".join(sorted(p.name for p in out_dir.iterdir() if p.name != CARD_FILE))
    card = CARD.format(
        name=out_dir.parent.name or "model",
        files=files,
        max_token_length=settings.max_token_length,
        long=long,
        clip_skip=settings.clip_skip,
        skip=skip,
        name_hint=out_dir.as_posix(),
        settings=SETTINGS_FILE,
    )
    (out_dir / CARD_FILE).write_text(card)
    return [data, out_dir / CARD_FILE]


def read_prompt_settings(model: Path) -> PromptSettings:
    """The settings recorded for `model` (a run directory, its export folder, the diffusers
    folder or single file inside it); a run without export: its config; else the defaults."""
    model = Path(model).expanduser()
    for folder in (model / "export", model, model.parent):
        path = folder / SETTINGS_FILE
        if path.is_file():
            values = json.loads(path.read_text())
            return PromptSettings(int(values["max_token_length"]), int(values["clip_skip"]))
    config = model / "config_resolved.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(config).get("model", {})
        controls = cfg.get("text_encoder_controls") or {}
        return PromptSettings(
            int(cfg.get("max_token_length", 77)), int(controls.get("clip_skip", 1))
        )
    return PromptSettings()
