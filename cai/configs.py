"""Shared config pieces for experiment files, and the ConfigDict -> dataclass boundary.

Experiment files build ``ml_collections.ConfigDict``s from these helpers; a stage's ``run``
turns its sub-dicts into frozen dataclasses with ``to_dataclass``, which rejects unknown keys
by name so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import ml_collections

from cai.errors import ConfigError
from cai.model import PRESETS
from cai.sharding import MeshConfig
from cai.train_lib import OptimConfig, TrainConfig

T = TypeVar("T")

MESHES: dict[str, MeshConfig] = {
    "cpu": MeshConfig(data=-1, fsdp=1, tensor=1),  # pure data parallel over whatever exists
    "fsdp": MeshConfig(data=1, fsdp=-1, tensor=1),
    "v5e-16": MeshConfig(data=2, fsdp=8, tensor=1),
    "v5p-64": MeshConfig(data=4, fsdp=8, tensor=1),  # 32 chips (64 cores)
}


def as_dict(obj: Any) -> ml_collections.ConfigDict:
    """A dataclass instance as a ConfigDict holding every field (so every field is overridable)."""
    return ml_collections.ConfigDict(dataclasses.asdict(obj))


def model_dict(preset: str, **overrides: Any) -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ConfigError(f"model preset {preset!r} is not known; known: {sorted(PRESETS)}")
    return as_dict(dataclasses.replace(PRESETS[preset], **overrides))


def mesh_dict(name: str) -> ml_collections.ConfigDict:
    if name not in MESHES:
        raise ConfigError(f"mesh preset {name!r} is not known; known: {sorted(MESHES)}")
    return as_dict(MESHES[name])


def train_dict(**overrides: Any) -> ml_collections.ConfigDict:
    return as_dict(TrainConfig(**overrides))


def optim_dict(**overrides: Any) -> ml_collections.ConfigDict:
    return as_dict(OptimConfig(**overrides))


def train_section(
    steps: int,
    batch_size: int,
    seq_len: int,
    saves: int,
    learning_rate: float,
    warmup_steps: int,
    weight_decay: float,
) -> dict[str, ml_collections.ConfigDict]:
    """The ``train`` and ``optim`` sub-dicts every training stage has (``saves`` checkpoints
    over the run)."""
    return {
        "train": train_dict(
            steps=steps,
            batch_size=batch_size,
            seq_len=seq_len,
            save_every=max(steps // saves, 1),
            log_every=10,
        ),
        "optim": optim_dict(
            learning_rate=learning_rate,
            warmup_steps=min(warmup_steps, steps // 5),
            weight_decay=weight_decay,
        ),
    }


def to_dataclass(cls: type[T], cd: Any, where: str) -> T:
    """Build ``cls`` from ``cd`` (ConfigDict or dict); unknown keys fail naming ``where.key``."""
    if cd is None:
        raise ConfigError(f"config.{where} is missing")
    values = cd.to_dict() if isinstance(cd, ml_collections.ConfigDict) else dict(cd)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"config.{where}.{unknown[0]}: unknown key (known keys: {', '.join(sorted(names))})"
        )
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"config.{where}: {e}") from e


def get(cd: ml_collections.ConfigDict, key: str, where: str) -> Any:
    """A required key of a config section, with an error naming it when absent."""
    if key not in cd:
        raise ConfigError(f"config.{where}.{key} is missing")
    return cd[key]


def base_config(
    stages: tuple[str, ...], model_preset: str = "small", mesh: str = "cpu"
) -> ml_collections.ConfigDict:
    """Fields every experiment has; stage sections are added by the experiment file."""
    return ml_collections.ConfigDict(
        {
            "stages": stages,
            "seed": 0,
            # True on multi-host pods: cai.main then calls jax.distributed.initialize().
            "distributed": False,
            "mesh": mesh_dict(mesh),
            "model": model_dict(model_preset),
        }
    )


def stages_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The stages a run executes: ``config.stages``, with ``pretrain`` first when the run
    builds its own base model (``config.base=pretrain``) instead of starting from the shipped
    one."""
    stages = tuple(config.stages)
    if config.get("base") == "pretrain" and "pretrain" not in stages:
        stages = ("pretrain", *stages)
    return stages
