"""Config errors fail before any work starts, naming the key and the file it came from.

Hydra's struct mode already rejects unknown keys given on the command line. Keys that arrive
through YAML files (a group option, an experiment) are checked here: every node with a
`_target_` is matched against the target's signature (unknown keyword → error) and its simple
annotations (`int`, `float`, `bool`, `str`, optionals and unions of them → wrong type → error).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ymn.paths import CONFIG_DIR

SIMPLE = (int, float, bool, str, type(None))


class ConfigError(ValueError):
    """One or more config keys do not fit what their `_target_` accepts."""


def validate_config(
    cfg: DictConfig,
    choices: Mapping[str, Any] | None = None,
    overrides: Sequence[str] | None = None,
    config_dirs: Sequence[Path] | None = None,
) -> None:
    """Raise ConfigError listing every unknown or mistyped key with where it was set.

    `choices`/`overrides` default to Hydra's (group options chosen, command-line overrides).
    """
    hydra_choices, hydra_overrides, hydra_dirs = _hydra_context()
    choices = hydra_choices if choices is None else choices
    overrides = hydra_overrides if overrides is None else overrides
    config_dirs = list(config_dirs or hydra_dirs or [CONFIG_DIR])
    problems = [
        f"{path}: {message} (set in {origin_of(path, choices, overrides, config_dirs)})"
        for path, message in iter_problems(cfg)
    ]
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def iter_problems(cfg: DictConfig) -> Iterator[tuple[str, str]]:
    """(dotted key, message) for each key its `_target_` would reject."""
    for path, node in iter_target_nodes(cfg):
        yield from check_node(path, node)


def iter_target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every DictConfig with a `_target_`, by dotted path; interpolated nodes are checked at
    their source only."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        keys = list(node.keys())
    elif isinstance(node, ListConfig):
        keys = list(range(len(node)))
    else:
        return
    for key in keys:
        if str(key) == "hydra" and not path or OmegaConf.is_interpolation(node, key):
            continue
        try:
            child = node._get_node(key)
        except Exception:
            continue
        yield from iter_target_nodes(child, f"{path}.{key}" if path else str(key))


def check_node(path: str, node: DictConfig) -> Iterator[tuple[str, str]]:
    """Unknown keyword arguments and simple type mismatches of one `_target_` node."""
    prefix = f"{path}." if path else ""
    target_name = str(node._get_node("_target_")._value())
    try:
        from hydra.utils import get_object

        target = get_object(target_name)
    except Exception as error:
        yield f"{prefix}_target_", f"cannot import {target_name!r} ({error})"
        return
    params, hints, open_kwargs = signature_of(target)
    if params is None:
        return
    for key in node.keys():
        key = str(key)
        if key.startswith("_"):
            continue
        if key not in params:
            if not open_kwargs:
                known = ", ".join(sorted(params))
                yield prefix + key, f"unknown key {key!r} for {target_name} (accepts: {known})"
            continue
        expected = hints.get(key)
        if expected is None or OmegaConf.is_missing(node, key):
            continue
        try:
            value = node[key]
        except Exception:  # an interpolation that cannot resolve yet
            continue
        if isinstance(value, DictConfig | ListConfig):
            continue
        if type_fits(value, expected) is False:
            yield (
                prefix + key,
                f"{key}={value!r} is {type(value).__name__}, {target_name} expects "
                f"{_type_name(expected)}",
            )


def signature_of(target: Any) -> tuple[set[str] | None, dict[str, Any], bool]:
    """(parameter names, resolvable type hints, accepts **kwargs) of a callable or class."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None, {}, True
    params = {
        name
        for name, p in signature.parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    open_kwargs = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        hints = {}
    return params, hints, open_kwargs


def type_fits(value: Any, expected: Any) -> bool | None:
    """True/False when `expected` is made of simple types; None when it cannot tell."""
    origin = typing.get_origin(expected)
    members = (
        typing.get_args(expected) if origin in (typing.Union, types.UnionType) else (expected,)
    )
    if any(typing.get_origin(m) is typing.Literal for m in members):
        return None
    simple = [m for m in members if m in SIMPLE]
    if any(_matches(value, m) for m in simple):
        return True
    if isinstance(value, str) and all(m in SIMPLE or _is_tensor_type(m) for m in members):
        return False  # e.g. lr="abc" for `float | Tensor`
    return False if len(simple) == len(members) else None


def _is_tensor_type(kind: Any) -> bool:
    return getattr(kind, "__module__", "") == "torch" and getattr(kind, "__name__", "") == "Tensor"


def _matches(value: Any, kind: type) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(expected: Any) -> str:
    return getattr(expected, "__name__", None) or str(expected).replace("typing.", "")


# ---------------------------------------------------------------------------------------------
# Where a key was set
# ---------------------------------------------------------------------------------------------


def origin_of(
    dotted: str, choices: Mapping[str, Any], overrides: Sequence[str], config_dirs: Sequence[Path]
) -> str:
    """The command-line override, experiment file, group file or root config that sets `dotted`
    (searching the config dirs in Hydra's order; the last match wins, as in composition)."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if dotted == key or dotted.startswith(key + "."):
            return f"command-line override {override!r}"
    group, _, rest = dotted.partition(".")
    option, experiment = choices.get(group), choices.get("experiment")
    candidates: list[tuple[str, str]] = []
    if experiment:
        candidates.append((f"experiment/{experiment}.yaml", dotted))
    if option and rest:
        candidates.append((f"{group}/{option}.yaml", rest))
    candidates.append(("config.yaml", dotted))
    for relative, key in candidates:
        for folder in config_dirs:
            if _file_sets(Path(folder) / relative, key):
                return _display(Path(folder) / relative)
    return f"conf/{group}/{option}.yaml" if option else "the composed config"


def _file_sets(file: Path, dotted: str) -> bool:
    try:
        node: Any = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    except Exception:
        return False
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _display(file: Path) -> str:
    try:
        return str(file.resolve().relative_to(CONFIG_DIR.parent))
    except ValueError:
        return str(file)


def _hydra_context() -> tuple[dict[str, Any], list[str], list[Path]]:
    """Hydra's group choices, command-line overrides and file config dirs, when running."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return {}, [], []
        hydra_cfg = HydraConfig.get()
        choices = OmegaConf.to_container(hydra_cfg.runtime.choices, resolve=False)
        dirs = [
            Path(source.path)
            for source in hydra_cfg.runtime.config_sources
            if source.schema == "file" and source.path
        ]
        return dict(choices or {}), list(hydra_cfg.overrides.task), dirs
    except Exception:
        return {}, [], []
