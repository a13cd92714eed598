"""Tiny random Hugging Face models of each supported family, built with `transformers` itself, and
small tokenizers trained on the spot; shared by the real-checkpoint tests."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _one_torch_thread() -> None:
    """torch's threads wait on each other; on a busy 2-core machine that makes HF generate 10x
    slower than one thread is."""
    import torch

    torch.set_num_threads(1)


_one_torch_thread()

# Odd sizes, GQA/MQA/MHA, tied and untied, every family-specific feature switched on. A large
# initializer_range spreads the logits, so greedy decoding has no near-ties.
COMMON = dict(initializer_range=0.3, attn_implementation="eager")
SPECS = {
    "llama": dict(
        vocab_size=101,
        hidden_size=48,
        intermediate_size=72,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
        rope_theta=50.0,
        # wavelengths 6.3 (kept), 16.7 (interpolated), 44 and 118 (divided): every branch
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        tie_word_embeddings=False,
    ),
    "gemma": dict(
        vocab_size=101,
        hidden_size=48,
        intermediate_size=72,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=16,
    ),
    "gemma2": dict(
        vocab_size=101,
        hidden_size=48,
        intermediate_size=72,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        sliding_window=4,
        query_pre_attn_scalar=20,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=5.0,
    ),
    "gpt2": dict(vocab_size=101, n_embd=48, n_layer=2, n_head=3, n_inner=80, n_positions=40),
}


def build(family: str, seed: int = 0, **overrides):
    """A random torch model of ``family`` in eval mode (float32)."""
    import torch
    import transformers as tf

    classes = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM),
        "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel),
    }
    config_cls, model_cls = classes[family]
    torch.manual_seed(seed)
    config = config_cls(**{**SPECS[family], **COMMON, **overrides})
    if family == "gpt2":  # token ids 50256 do not exist in a 101-token vocabulary
        config.bos_token_id = config.eos_token_id = 0
    return model_cls(config).eval()


def torch_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """HF logits for (left-padded) tokens; positions count real tokens only, as ours do."""
    import torch

    mask = np.ones_like(tokens, bool) if mask is None else mask
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(
            torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()


def left_padded(rng: np.random.RandomState, lengths: list[int], vocab: int, pad: int = 0):
    T = max(lengths)
    tokens = np.full((len(lengths), T), pad, np.int32)
    mask = np.zeros((len(lengths), T), bool)
    for i, n in enumerate(lengths):
        tokens[i, T - n :] = rng.randint(3, vocab, n)
        mask[i, T - n :] = True
    return tokens, mask


CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I bake bread at home? Mix flour, water, salt and yeast.",
    "Constitutional AI trains a harmless assistant from a list of principles.",
    "Human: hello there!\n\nAssistant: Hi, how can I help you today?",
    "Numbers like 12345 and 2024 appear in text, as do emojis and accents: café, naïve.",
    "A critique points out what is harmful; a revision rewrites the answer.",
] * 20

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_bpe(directory: pathlib.Path, vocab_size: int = 300) -> None:
    """A GPT-2-style byte-level BPE with ChatML specials, saved as an HF tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": CHATML_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def train_sentencepiece(
    directory: pathlib.Path, vocab_size: int = 320, symbols: tuple[str, ...] = ()
) -> pathlib.Path:
    """A sentencepiece BPE model with byte fallback and no text normalization, as Llama-2's and
    Gemma's are."""
    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / "sp"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        user_defined_symbols=list(symbols),
        minloglevel=2,
    )
    return prefix.with_suffix(".model")
