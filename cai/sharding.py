"""Mesh, logical-axis rules and shardings: the only module that speaks `PartitionSpec`.

Parameters and activations carry *logical* axis names ("embed", "q_heads", "batch", ...).
Two small tables map them to the physical mesh axes ``("data", "fsdp", "tensor")``:
``PARAM_RULES`` for weights (FSDP is the single rule ``embed -> fsdp``) and ``ACT_RULES`` for
activations (the batch is split over both data axes). A dimension that a mesh axis does not
divide is replicated instead of failing, so one rules table serves MHA, GQA and MQA alike.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cai.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, Any]]

PARAM_RULES: Rules = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("position", None),
)

ACT_RULES: Rules = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the (data, fsdp, tensor) mesh axes; one of them may be -1 (inferred)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def shape(self, n_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise ConfigError(f"mesh {self._text()}: at most one axis may be -1")
        if any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(f"mesh {self._text()}: axis sizes must be positive or -1")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if n_devices % known:
                raise ConfigError(
                    f"mesh {self._text()} cannot be fitted to {n_devices} devices "
                    f"({n_devices} is not a multiple of {known})"
                )
            sizes[sizes.index(-1)] = n_devices // known
        if math.prod(sizes) != n_devices:
            raise ConfigError(
                f"mesh {self._text()} needs {math.prod(sizes)} devices "
                f"but {n_devices} are available"
            )
        return tuple(sizes)  # type: ignore[return-value]

    def _text(self) -> str:
        return f"(data={self.data}, fsdp={self.fsdp}, tensor={self.tensor})"


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all (or the given) devices, with Auto axis types so XLA propagates shardings."""
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.shape(len(devices))
    grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def single_device_mesh() -> Mesh:
    return make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules
) -> PartitionSpec:
    """Map logical names to a PartitionSpec, replicating dims that the mesh does not divide.

    A mesh axis is used at most once per array; mesh axes of size 1 are dropped so specs stay
    readable.
    """
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(names, shape):
        axes = table.get(name) if name is not None else None
        if isinstance(axes, str):
            axes = (axes,)
        axes = tuple(a for a in (axes or ()) if mesh.shape[a] > 1 and a not in used)
        if axes and dim % _axis_size(mesh, axes) == 0:
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        else:
            out.append(None)
    return PartitionSpec(*out)


def named_sharding(
    mesh: Mesh, names: Sequence[str | None], shape: Sequence[int], rules: Rules = ACT_RULES
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules: Rules = PARAM_RULES) -> Any:
    """Shardings for a (boxed, abstract) Flax variable tree whose leaves carry logical names."""
    specs = nn.get_partition_spec(boxed_abstract)
    shapes = nn.unbox(boxed_abstract)

    def one(spec: PartitionSpec, leaf: Any) -> NamedSharding:
        names = tuple(spec) if spec is not None else (None,) * len(leaf.shape)
        return named_sharding(mesh, names, leaf.shape, rules)

    return jax.tree.map(one, specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dim split over the data axes; everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def check_batch(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    n = _axis_size(mesh, BATCH_AXES)
    if batch_size % n:
        raise ConfigError(
            f"{what}={batch_size} is not divisible by the data axes of the mesh "
            f"(data*fsdp = {mesh.shape['data']}*{mesh.shape['fsdp']} = {n})"
        )


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place a global host batch (identical on every host) onto the mesh's data axes."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        check_batch(v.shape[0], mesh, f"batch['{k}'] leading dim")
        sh = batch_sharding(mesh, v.ndim)
        out[k] = jax.make_array_from_callback(v.shape, sh, lambda idx, v=v: v[idx])
    return out


# Activation constraints. The model calls `constrain(x, names)`; it is a no-op unless a caller
# (a jitted step factory) has opened `activation_context(mesh)` around the traced function.
_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "cai_activation_mesh", default=None
)


@contextlib.contextmanager
def activation_context(mesh: Mesh | None, rules: Rules = ACT_RULES) -> Iterator[None]:
    token = _ACTIVE.set(None if mesh is None else (mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, names, x.shape, rules))
