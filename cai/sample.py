"""Print completions from any saved checkpoint.

python -m cai.sample --checkpoint=WORKDIR/pretrain --prompt="Q: 12+30=? A:" --temperature=0
python -m cai.sample --checkpoint=DIR --prompts_file=prompts.txt --top_p=0.9 --max_new_tokens=64
"""

from __future__ import annotations

import jax
from absl import app, flags

from cai import checkpoint, sharding
from cai.cli import fail, quiet_libraries
from cai.errors import ConfigError
from cai.model import ModelConfig, Transformer
from cai.sampling import Sampler, SamplingConfig
from cai.tokenizer import Tokenizer, from_spec
from cai.train_lib import abstract_params

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint dir, stage dir or workdir.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "Prompt text (repeatable).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "One prompt per line.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "New tokens per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "0 disables.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "1 disables.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_NO_BOS = flags.DEFINE_bool("no_bos", False, "Do not prepend BOS to prompts.")


def load(path: str, step: int | None = None, mesh=None) -> tuple[Transformer, object, Tokenizer]:
    """(model, sharded params, tokenizer) from a checkpoint written by any stage."""
    mesh = mesh or sharding.make_mesh(sharding.MeshConfig())
    with checkpoint.Checkpointer(checkpoint.find_checkpoint_dir(path), read_only=True) as ckpt:
        meta = ckpt.metadata(step)
        model = Transformer(ModelConfig(**meta["model"]))
        params_like, shardings = abstract_params(model, mesh)
        params_like = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params_like, shardings
        )
        _, params, _ = ckpt.restore(params_like, step=step)
    return model, params, from_spec(meta["tokenizer"])


def main(argv: list[str]) -> None:
    quiet_libraries()
    try:
        prompts = list(_PROMPT.value)
        if _PROMPTS_FILE.value:
            with open(_PROMPTS_FILE.value, encoding="utf-8") as f:
                prompts += [line.rstrip("\n") for line in f if line.strip()]
        if not prompts:
            raise ConfigError("give --prompt or --prompts_file")
        if not _CHECKPOINT.value:
            raise ConfigError("--checkpoint is required")
        cfg = SamplingConfig(
            max_new_tokens=_MAX_NEW.value,
            temperature=_TEMPERATURE.value,
            top_k=_TOP_K.value,
            top_p=_TOP_P.value,
        )
        model, params, tok = load(_CHECKPOINT.value, _STEP.value)
        mesh = sharding.make_mesh(sharding.MeshConfig())
        sampler = Sampler(model, mesh, eos_id=tok.eos_id, pad_id=tok.pad_id)
        ids = [([] if _NO_BOS.value else [tok.bos_id]) + tok.encode(p) for p in prompts]
        for prompt, (out, _) in zip(prompts, sampler.generate(params, ids, cfg, _SEED.value)):
            print(f"{prompt}{tok.decode(out)}")
    except ConfigError as e:
        fail(str(e))


if __name__ == "__main__":
    app.run(main)
