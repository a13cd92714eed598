"""Print completions from any saved checkpoint, HF model directory or GGUF file.

python -m cai.sample --checkpoint=WORKDIR/pretrain --prompt="Q: 12+30=? A:" --temperature=0
python -m cai.sample --checkpoint=DIR --prompts_file=prompts.txt --top_p=0.9 --max_new_tokens=64
python -m cai.sample --checkpoint=SmolLM2-135M-Instruct.Q4_1.gguf --prompt="How do I steal a car?"

A model whose tokenizer carries a chat template (ChatML, Gemma) is prompted as a chat by
default: each prompt becomes one user turn and the reply ends at the end-of-turn token.
"""

from __future__ import annotations

from absl import app, flags

from cai import pretrained, sharding
from cai.cli import fail, quiet_libraries
from cai.errors import ConfigError
from cai.model import Transformer
from cai.sampling import Sampler, SamplingConfig
from cai.tokenizer import Tokenizer, chat_stop_id, render_chat

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Checkpoint dir, stage dir or workdir; an HF model dir; a .gguf file."
)
# allow_override: cai.sample and cai.convert both define --step and may share a process (tests).
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step to read (default: latest).", allow_override=True
)
_PROMPT = flags.DEFINE_multi_string("prompt", [], "Prompt text (repeatable).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "One prompt per line.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "New tokens per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "0 disables.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "1 disables.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_NO_BOS = flags.DEFINE_bool("no_bos", False, "Do not prepend BOS to prompts.")
_CHAT = flags.DEFINE_bool(
    "chat", None, "Render each prompt as a user turn (default: when the model has a chat format)."
)
_SYSTEM = flags.DEFINE_string("system", None, "System prompt for --chat.")


def load(path: str, step: int | None = None, mesh=None) -> tuple[Transformer, object, Tokenizer]:
    """(model, sharded params, tokenizer) from a checkpoint of any stage, an HF directory or a
    GGUF file."""
    cfg, params, tok = pretrained.load(path, mesh, step=step)
    if tok is None:
        raise ConfigError(f"{path} holds no tokenizer to sample with")
    return Transformer(cfg), params, tok


def prompt_ids(
    tok: Tokenizer, prompt: str, chat: bool, system: str | None, no_bos: bool
) -> list[int]:
    """A prompt as token ids: one chat turn awaiting the reply, or plain text after BOS."""
    if chat:
        turns = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        return render_chat(tok, turns, add_generation_prompt=True)[0]
    return ([tok.bos_id] if tok.add_bos and not no_bos else []) + tok.encode(prompt)


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
        mesh = sharding.make_mesh(sharding.MeshConfig())
        model, params, tok = load(_CHECKPOINT.value, _STEP.value, mesh)
        chat = tok.chat_format != "hh" if _CHAT.value is None else _CHAT.value
        eos = chat_stop_id(tok) if chat else tok.eos_id
        sampler = Sampler(model, mesh, eos_id=eos, pad_id=tok.pad_id)
        ids = [prompt_ids(tok, p, chat, _SYSTEM.value, _NO_BOS.value) for p in prompts]
        for prompt, (out, _) in zip(prompts, sampler.generate(params, ids, cfg, _SEED.value)):
            reply = tok.decode(out[:-1] if out and out[-1] == eos else out)
            print(f"{prompt}\n>>> {reply.strip()}" if chat else f"{prompt}{reply}")
    except ConfigError as e:
        fail(str(e))


if __name__ == "__main__":
    app.run(main)
