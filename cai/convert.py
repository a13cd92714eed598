"""Convert weights between Hugging Face directories, GGUF files and our orbax checkpoints.

python -m cai.convert --from_hf=DIR --to=CKPT        # HF safetensors + config.json -> checkpoint
python -m cai.convert --from_gguf=FILE --to=CKPT     # llama.cpp GGUF (dequantized) -> checkpoint
python -m cai.convert --from=CKPT --to_hf=DIR        # checkpoint of any stage -> HF directory

A converted checkpoint is step 0 of ``CKPT/checkpoints`` with the model config and the tokenizer
(inlined, so the checkpoint does not depend on the source files) in its metadata; every stage's
``init_from`` and ``cai.sample`` read it, or the HF directory / GGUF file directly.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np
from absl import app, flags
from etils import epath

from cai import checkpoint, hf_import, pretrained, sharding
from cai.checkpoint import Checkpointer
from cai.cli import fail, quiet_libraries
from cai.errors import ConfigError

_FROM_HF = flags.DEFINE_string("from_hf", None, "HF model directory (config.json + safetensors).")
_FROM_GGUF = flags.DEFINE_string("from_gguf", None, "Llama-architecture GGUF file.")
_FROM = flags.DEFINE_string("from", None, "Our checkpoint (checkpoint dir, stage dir or workdir).")
# allow_override: cai.sample and cai.convert both define --step and may share a process (tests).
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step to read (default: latest).", allow_override=True
)
_TO = flags.DEFINE_string("to", None, "Write an orbax checkpoint here (CKPT/checkpoints/0).")
_TO_HF = flags.DEFINE_string("to_hf", None, "Write an HF model directory here.")
_PARAM_DTYPE = flags.DEFINE_string(
    "param_dtype", None, "Store params as this dtype (default: the source's, float32 on import)."
)
_MAX_SHARD_MB = flags.DEFINE_integer("max_shard_mb", 2048, "--to_hf: safetensors shard size.")


def save_checkpoint(path: str, cfg, params, tokenizer, source: str) -> epath.Path:  # noqa: ANN001
    """Params as step 0 of ``path/checkpoints`` with config, tokenizer and source in metadata;
    from one of our checkpoints, also the experiment config and stage that made it (so a
    converted toy base model still says which world and corpus it was trained on)."""
    directory = epath.Path(path if "://" in path else os.path.abspath(path)) / "checkpoints"
    metadata = {
        "stage": "convert",
        "source": source,
        "model": dataclasses.asdict(cfg),
        "tokenizer": tokenizer.spec(inline=True) if tokenizer is not None else None,
    }
    if pretrained.source_kind(source) == "orbax":
        ckpt_dir = checkpoint.find_checkpoint_dir(source)
        with Checkpointer(ckpt_dir, read_only=True) as src:
            made = src.metadata()
        metadata.update(
            source_stage=made.get("stage"), source_step=made.get("step"), config=made.get("config")
        )
    with Checkpointer(directory, save_every=1, keep=1, async_save=False) as ckpt:
        ckpt.save(0, params, {"step": np.zeros((), np.int32)}, metadata, force=True)
        ckpt.wait()
    return directory


def convert(
    source: str,
    *,
    to: str | None,
    to_hf: str | None,
    step: int | None = None,
    param_dtype: str | None = None,
    max_shard_bytes: int = 2 << 30,
) -> str:
    """Load ``source`` (any kind) and write it as a checkpoint or an HF directory."""
    if (to is None) == (to_hf is None):
        raise ConfigError("give exactly one of --to (checkpoint) or --to_hf (HF directory)")
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=-1, tensor=1))
    overrides = {"param_dtype": param_dtype} if param_dtype else {}
    cfg, params, tok = pretrained.load(source, mesh, step=step, **overrides)
    n = sum(x.size for x in jax.tree.leaves(params))
    logging.info("loaded %s: %.1fM params", source, n / 1e6)
    if to is not None:
        return str(save_checkpoint(to, cfg, params, tok, source))
    hf_import.export_hf(cfg, params, to_hf, tokenizer=tok, max_shard_bytes=max_shard_bytes)
    return to_hf


def main(argv: list[str]) -> None:
    quiet_libraries()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        sources = [s for s in (_FROM_HF.value, _FROM_GGUF.value, _FROM.value) if s]
        if len(sources) != 1:
            raise ConfigError("give exactly one of --from_hf, --from_gguf or --from")
        if _FROM_HF.value and pretrained.source_kind(_FROM_HF.value) != "hf":
            raise ConfigError(f"--from_hf={_FROM_HF.value}: no config.json there")
        if _FROM_GGUF.value and not _FROM_GGUF.value.endswith(".gguf"):
            raise ConfigError(f"--from_gguf={_FROM_GGUF.value}: expected a .gguf file")
        out = convert(
            sources[0],
            to=_TO.value,
            to_hf=_TO_HF.value,
            step=_STEP.value,
            param_dtype=_PARAM_DTYPE.value,
            max_shard_bytes=_MAX_SHARD_MB.value << 20,
        )
        print(f"wrote {out}")
    except ConfigError as e:
        fail(str(e))


if __name__ == "__main__":
    app.run(main)
