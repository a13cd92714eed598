"""What ``rl_step.py`` and its baseline sides (``rl_step_baselines.py``, run in other venvs)
share: the models' shapes, the batch, the word-level tokenizer, the files both sides load, and
per-phase timing records. Imports only numpy at the top, so every venv can load it."""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

import numpy as np

# The tiny Llama-style policy, value and reward models (random weights, untied embeddings).
VOCAB, D_MODEL, LAYERS, HEADS, HEAD_DIM, MLP = 2048, 128, 4, 4, 32, 384
ROPE_THETA, NORM_EPS = 10000.0, 1e-6
B, P, N, K = 16, 16, 32, 4  # prompts, prompt tokens, new tokens, RLOO samples per prompt
LR = 1e-5
KL_BETA = 0.05  # PPO / RLOO KL coefficient
DPO_BETA = 0.1
PHASES = ("rollout", "scoring", "update")
# Untimed iterations per side: ours compiles everything before its first (some jitted helpers
# on first call), tunix still compiles during its second iteration.
WARMUP = 2

# Word-level vocabulary: 4 specials, the HH turn words, then w7 .. w2047.
SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
TURN_WORDS = ("Human", "Assistant", ":")
FIRST_WORD = len(SPECIALS) + len(TURN_WORDS)


def build_tokenizer(directory: str) -> None:
    """A word-level ``PreTrainedTokenizerFast`` of ``VOCAB`` entries saved to ``directory``
    (whitespace/punctuation pre-tokenizer, no BOS/EOS added on encode, specials dropped on
    decode), so "\\n\\nHuman: w9 w10\\n\\nAssistant:" is 6 tokens on both sides."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + TURN_WORDS)}
    vocab.update({f"w{i}": i for i in range(FIRST_WORD, VOCAB)})
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        unk_token="[UNK]",
    )
    tok.save_pretrained(directory)


def prompt_texts(seed: int = 0) -> list[str]:
    """``B`` user turns of ``P − 4`` random words: rendered as HH prompts ("\\n\\nHuman: ...
    \\n\\nAssistant:") they are exactly ``P`` tokens."""
    rng = np.random.default_rng(seed)
    words = rng.integers(FIRST_WORD, VOCAB, (B, P - 4))
    return [" ".join(f"w{i}" for i in row) for row in words]


def hh_prompt(text: str) -> str:
    """The HH rendering of one user turn, ending with a space: TRL joins prompt and
    completion as text, and a word-level tokenizer needs the space between them."""
    return f"\n\nHuman: {text}\n\nAssistant: "


def completion_texts(seed: int) -> list[str]:
    """``B`` replies of ``N`` random words (DPO / PM pairs)."""
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in row) for row in rng.integers(FIRST_WORD, VOCAB, (B, N))]


def median_phases(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-phase, ``other`` and total medians over timed iterations (each a dict of seconds);
    ``other`` is an iteration's total less its phases (bookkeeping, data loading, a trainer's
    clean-up between iterations)."""
    rows = [{**r, "other": r["total"] - sum(r.get(k, 0.0) for k in PHASES)} for r in rows]
    return {k: statistics.median(r.get(k, 0.0) for r in rows) for k in (*PHASES, "other", "total")}


def quiet_hf() -> None:
    """No progress bars or advisory warnings from transformers / datasets / the hub."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.utils.logging.set_verbosity_error()
    except ImportError:
        pass


def write_result(path: str, result: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(result, f)


def read_result(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def torch_threads_line() -> str:
    import torch

    return (
        f"torch {torch.__version__}: get_num_threads()={torch.get_num_threads()}, "
        f"interop={torch.get_num_interop_threads()}, loadavg(1 min)={os.getloadavg()[0]:.2f}"
    )


def trl_args(out_dir: str, **kw: Any) -> dict[str, Any]:
    """TrainingArguments every TRL side shares: f32, no checkpointing, no logging or saving."""
    return dict(
        output_dir=out_dir,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **kw,
    )
