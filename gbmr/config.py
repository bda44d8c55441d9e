"""Run configuration: named presets, YAML files and ``--set key=value`` overrides, validated.

Precedence, lowest first: the algorithm's dataclass defaults < the preset ``configs/<algo>/<preset>.yaml``
< a user YAML file < ``--set`` overrides < explicit flags (``--seed``, ``--total-steps``, ...).
A preset or YAML file may hold run keys (``total_steps``, ``eval_every``, ...), an ``agent:`` section with
the algorithm's hyperparameters and an ``env_options:`` section passed to ``make_env``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gbmr.core.errors import GbmrError, unknown_choice

PRESETS_DIR = Path(__file__).parent / "configs"


@dataclass
class RunConfig:
    """What to run and how to record it; the algorithm's own hyperparameters live in ``agent``."""

    algo: str
    env: str
    seed: int = 1
    total_steps: int = 100_000
    num_envs: int = 1
    device: str = "auto"  # "auto" = cuda when present, else cpu
    torch_threads: int = 1  # CPU threads for torch: 1 is fastest for small nets and when runs share a machine
    eval_every: int = 10_000  # env steps between greedy evaluations (0 = only at the end)
    eval_episodes: int = 10  # 0 = no evaluation
    eval_max_steps: int = 27_000  # an evaluation episode ends here (a greedy policy may never end one: MinAtar
    # has no time limit); 27k agent steps = the 108k frames of the Atari protocol
    checkpoint_every: int = 10_000  # env steps between checkpoints (a final one is always written)
    actors: int = 0  # > 0: that many Ray actors share the num_envs environments, one learner trains
    mode: str = "sync"  # distributed: sync (every batch collected with the latest weights) | async
    ray_address: str = "local"  # distributed: a Ray cluster's address, or local (start Ray here)
    actor_steps: int = 128  # distributed off-policy agents: vector steps an actor collects per batch
    max_lag: int = 2  # async: batches collected more than this many policy versions ago are dropped
    preset: str = "default"
    env_options: dict[str, Any] = field(default_factory=dict)
    agent: Any = None  # the algorithm's Config dataclass instance

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["agent"] = dataclasses.asdict(self.agent)
        data["env_options"] = dict(self.env_options)
        return data


RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in ("agent", "env_options"))


def preset_names(algo: str) -> list[str]:
    return sorted(p.stem for p in (PRESETS_DIR / algo).glob("*.yaml"))


def default_preset(algo: str, env_family: str) -> str:
    """The preset for this environment family if there is one, else ``default``."""
    return env_family if env_family in preset_names(algo) else "default"


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise GbmrError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise GbmrError(f"config file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise GbmrError(f"config file '{path}' must hold a mapping of keys to values")
    return data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "env_options.frame_skip=2", "memory.n_step=0"]`` -> a nested dict shaped like a config
    file (a dotted agent key stays flat here; ``build_config`` sets it into its mapping)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise GbmrError(f"override '{pair}' must look like key=value")
        value = yaml.safe_load(raw) if raw else ""
        section, dot, sub = key.partition(".")
        if dot and section in ("agent", "env_options", "env"):
            out.setdefault("env_options" if section != "agent" else "agent", {})[sub] = value
        else:
            out.setdefault("_flat", {})[key] = value
    return out


def build_config(
    algo: str,
    env: str,
    agent_config_cls: type,
    env_family: str,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    **flags: Any,
) -> RunConfig:
    """Merge the layers into a validated RunConfig (see the module docstring for the order)."""
    preset = preset or default_preset(algo, env_family)
    names = preset_names(algo)
    if names and preset not in names:
        raise unknown_choice(f"preset for {algo}", preset, names)
    layers = []
    if names:
        layers.append(load_yaml(PRESETS_DIR / algo / f"{preset}.yaml"))
    if config_file:
        layers.append(load_yaml(config_file))
    if overrides:
        layers.append(parse_overrides(overrides))
    layers.append({k: v for k, v in flags.items() if v is not None})

    run: dict[str, Any] = {"algo": algo, "env": env, "preset": preset}
    agent: dict[str, Any] = {}
    env_options: dict[str, Any] = {}
    agent_keys = {f.name for f in dataclasses.fields(agent_config_cls)}
    agent_hints = typing.get_type_hints(agent_config_cls)
    mapping_keys = {key for key in agent_keys if dict in (agent_hints[key], typing.get_origin(agent_hints[key]))}
    for layer in layers:
        layer = dict(layer)
        for key, value in _mapping(layer.pop("agent", {}), "agent").items():
            _set_agent_key(agent, key, value, mapping_keys)
        env_options.update(_mapping(layer.pop("env_options", {}), "env_options"))
        layer.update(layer.pop("_flat", {}))
        for key, value in layer.items():
            if key in ("algo", "env", "preset"):
                continue  # chosen on the command line, never by a file
            if key in RUN_KEYS:
                run[key] = value
            elif key in agent_keys or key.partition(".")[0] in mapping_keys:
                _set_agent_key(agent, key, value, mapping_keys)
            else:
                raise unknown_choice(f"config key for {algo}", key, sorted(agent_keys | set(RUN_KEYS)))
    hints = typing.get_type_hints(RunConfig)
    for key, value in run.items():
        run[key] = coerce(key, value, hints[key])
    return RunConfig(**run, env_options=env_options, agent=make_agent_config(agent_config_cls, agent))


def _set_agent_key(agent: dict[str, Any], key: str, value: Any, mapping_keys: set[str]) -> None:
    """``agent[key] = value``; a dotted key (``memory.n_step``) sets one entry of a mapping-valued
    hyperparameter, over what the lower layers gave it."""
    head, dot, sub = key.partition(".")
    if not dot:
        agent[key] = value
    elif head in mapping_keys:
        agent[head] = {**(agent.get(head) or {}), sub: value}
    else:
        raise GbmrError(f"config key '{key}': only a mapping-valued hyperparameter takes a sub-key, and "
                        f"'{head}' is not one (those of this algorithm: {', '.join(sorted(mapping_keys)) or 'none'})")


def make_agent_config(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate an algorithm's Config dataclass, validating names and types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in values.items():
        if key not in fields:
            raise unknown_choice(f"hyperparameter of {cls.__module__.rsplit('.', 1)[-1]}", key, fields)
        checked[key] = coerce(key, value, hints[key])
    return cls(**checked)


def config_from_dict(data: dict[str, Any], agent_config_cls: type) -> RunConfig:
    """Rebuild a RunConfig from a saved ``config.yaml``."""
    data = dict(data)
    agent = make_agent_config(agent_config_cls, data.pop("agent", {}) or {})
    return RunConfig(**data, agent=agent)


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against the field's type, converting the harmless cases (1e5 -> 100000)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is type(None) and value is None:
                return None
            try:
                return coerce(key, value, option)
            except GbmrError:
                continue
        raise _type_error(key, value, annotation)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, annotation)
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return origin(coerce(key, v, item_type) for v in value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, annotation)
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, annotation)
    if annotation in (int, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _type_error(key, value, annotation) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, value, annotation)
        if annotation is int:
            if float(value) != int(value):
                raise _type_error(key, value, annotation)
            return int(value)
        return float(value)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, value, annotation)
    return value


def _type_error(key: str, value: Any, annotation: Any) -> GbmrError:
    name = getattr(annotation, "__name__", str(annotation))
    return GbmrError(f"config key '{key}' expects {name}, got {value!r}")


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise GbmrError(f"'{name}' in a config must be a mapping of keys to values, got {value!r}")
    return value


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
