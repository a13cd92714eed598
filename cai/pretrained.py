"""One loader for every place weights come from: a checkpoint written here (orbax), a Hugging Face
model directory (``config.json`` + safetensors) or a Llama GGUF file.

``load`` is what ``cai.sample`` and every stage's ``init_from`` call. The params come back sharded
over the given mesh, created in place (nothing is first built on one device), and the config can
change only how the model runs (``RUNTIME_FIELDS``), never its shapes. A checkpoint step that
cannot be read raises ``CheckpointError`` naming it, what is wrong and the other steps there.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
from jax.sharding import Mesh

from cai import checkpoint, gguf_import, hf_import, sharding
from cai.errors import CheckpointError, ConfigError
from cai.model import ModelConfig, Transformer
from cai.tokenizer import Tokenizer, from_spec, load_hf_tokenizer
from cai.train_lib import abstract_params

# Fields a caller may change on load: compute/storage dtype and rematerialisation.
RUNTIME_FIELDS = ("dtype", "param_dtype", "remat")


def source_kind(path: str) -> str:
    """``gguf`` (a .gguf file), ``hf`` (a directory with config.json) or ``orbax``."""
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise ConfigError(f"GGUF file {path} does not exist")
        return "gguf"
    if "://" not in path and os.path.isfile(os.path.join(path, "config.json")):
        return "hf"
    return "orbax"


def _check_overrides(overrides: dict[str, Any]) -> None:
    bad = sorted(set(overrides) - set(RUNTIME_FIELDS))
    if bad:
        raise ConfigError(
            f"cannot override model.{bad[0]} of a pretrained model "
            f"(only {', '.join(RUNTIME_FIELDS)})"
        )


def read_config(path: str, step: int | None = None) -> ModelConfig:
    """The model config stored with a checkpoint of any kind, without reading weights."""
    kind = source_kind(path)
    if kind == "gguf":
        return gguf_import.read_config(path)
    if kind == "hf":
        return hf_import.read_config(path)[0]
    with checkpoint.Checkpointer(checkpoint.find_checkpoint_dir(path), read_only=True) as ckpt:
        return ModelConfig(**ckpt.metadata(step)["model"])


def check_matches(expected: ModelConfig, path: str, where: str = "model") -> None:
    """Fail naming the first field where the checkpoint's shapes differ from ``expected``."""
    found = read_config(path)
    for f in dataclasses.fields(ModelConfig):
        if f.name in RUNTIME_FIELDS or f.name == "scalar_head":
            continue
        a, b = getattr(expected, f.name), getattr(found, f.name)
        if a != b and not (isinstance(a, float) and abs(a - b) <= 1e-6 * max(abs(a), abs(b))):
            raise ConfigError(f"{where}.{f.name}={a!r} but the checkpoint {path} has {b!r}")


def checkpoint_metadata(
    stage: str, model_cfg: ModelConfig, tokenizer: Tokenizer, config: Any
) -> dict[str, Any]:
    """What every stage's checkpoint carries beside its weights, so ``load`` can rebuild the
    model and its tokenizer from the checkpoint alone."""
    return {
        "stage": stage,
        "model": dataclasses.asdict(model_cfg),
        "tokenizer": tokenizer.spec(inline=True),
        "config": config.to_dict(),
    }


def load(
    path: str, mesh: Mesh | None = None, *, step: int | None = None, **overrides: Any
) -> tuple[ModelConfig, Any, Tokenizer | None]:
    """(config, sharded params, tokenizer or None) from an orbax checkpoint dir (``step``:
    default latest), an HF directory or a GGUF file."""
    _check_overrides(overrides)
    mesh = mesh or sharding.make_mesh(sharding.MeshConfig())
    kind = source_kind(path)
    if kind == "gguf":
        return gguf_import.load_gguf(path, mesh, **overrides)
    if kind == "hf":
        cfg, params, _ = hf_import.load_hf(path, mesh, **overrides)
        return cfg, params, load_hf_tokenizer(path)
    with checkpoint.Checkpointer(checkpoint.find_checkpoint_dir(path), read_only=True) as ckpt:
        try:
            meta = ckpt.metadata(step)
            cfg = dataclasses.replace(ModelConfig(**meta["model"]), **overrides)
            params_like, shardings = abstract_params(Transformer(cfg), mesh)
            params_like = jax.tree.map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                params_like,
                shardings,
            )
            _, params, _ = ckpt.restore(params_like, step=step)
        except CheckpointError as e:  # say which other steps there are to read instead
            others = [str(s) for s in ckpt.all_steps() if os.fspath(ckpt.step_dir(s)) != e.path]
            if not others:
                raise
            raise CheckpointError(e.path, f"{e.what} (other steps: {', '.join(others)})") from e
    spec = meta.get("tokenizer")
    return cfg, params, from_spec(spec) if spec else None
