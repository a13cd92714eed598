"""Generation and scoring contracts: greedy equals a naive argmax loop, reported log-probs and
`score` equal log_softmax of a full forward, EOS ends a row, shapes are bucketed."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from cai import sharding
from cai.model import PRESETS, Transformer
from cai.sampling import (
    Sampler,
    SamplingConfig,
    categorical,
    filter_logits,
    pad_left,
    pad_right,
)

CFG = PRESETS["tiny"]
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]


@pytest.fixture(scope="module")
def setup():
    model = Transformer(CFG)
    params = nn.unbox(model.init(jax.random.key(3), jnp.zeros((1, 1), jnp.int32)))["params"]
    sampler = Sampler(model, sharding.single_device_mesh(), eos_id=2, pad_id=0)
    return model, params, sampler


def naive_greedy(model, params, prompt, n, eos=None):
    seq, out = list(prompt), []
    for _ in range(n):
        logits = model.apply({"params": params}, jnp.asarray([seq])).logits[0, -1]
        t = int(jnp.argmax(logits))
        out.append(t)
        seq.append(t)
        if t == eos:
            break
    return out


def full_logprobs(model, params, prompt, cont):
    logits = model.apply({"params": params}, jnp.asarray([list(prompt) + list(cont)])).logits[0]
    logp = jax.nn.log_softmax(logits, -1)
    return np.array([logp[len(prompt) - 1 + i, t] for i, t in enumerate(cont)])


def test_greedy_equals_naive_loop(setup):
    model, params, sampler = setup
    out = sampler.generate(params, PROMPTS, SamplingConfig(max_new_tokens=10, temperature=0))
    for prompt, (toks, logps) in zip(PROMPTS, out):
        assert toks == naive_greedy(model, params, prompt, 10)
        np.testing.assert_allclose(logps, full_logprobs(model, params, prompt, toks), atol=1e-5)


def test_eos_ends_row(setup):
    model, params, _ = setup
    first = naive_greedy(model, params, PROMPTS[0], 10)
    j = next(i for i, t in enumerate(first) if t not in first[:i] and i > 0)
    eos = first[j]  # a token that greedy row 0 emits first at step j > 0
    sampler = Sampler(model, sharding.single_device_mesh(), eos_id=eos, pad_id=0)
    out = sampler.generate(params, PROMPTS, SamplingConfig(max_new_tokens=10, temperature=0))
    assert out[0][0] == first[: j + 1]
    for prompt, (toks, _) in zip(PROMPTS[1:], out[1:]):
        assert toks == naive_greedy(model, params, prompt, 10, eos=eos)


def test_score_equals_log_softmax_of_full_forward(setup):
    model, params, sampler = setup
    conts = [[20, 21, 22], [23], [24, 25, 26, 27, 28]]
    scores = sampler.score(params, PROMPTS, conts)
    for prompt, cont, got in zip(PROMPTS, conts, scores):
        np.testing.assert_allclose(got, full_logprobs(model, params, prompt, cont), atol=1e-5)


def test_score_choices_equals_scoring_each_choice(setup):
    """Shared answer options scored from one prompt pass (a KV cache) give what scoring each
    option as its own continuation gives, options of different lengths included."""
    _, params, sampler = setup
    choices = [[20, 21, 22], [23], [24, 25]]
    got = sampler.score_choices(params, PROMPTS, choices)
    assert got.shape == (len(PROMPTS), len(choices))
    for k, choice in enumerate(choices):
        each = sampler.score(params, PROMPTS, [choice] * len(PROMPTS))
        np.testing.assert_allclose(got[:, k], [x.sum() for x in each], atol=1e-5)


def test_sampling_is_seeded_and_top_k_1_is_greedy(setup):
    _, params, sampler = setup
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=0.9)
    a = sampler.generate(params, PROMPTS, cfg, seed=1)
    assert a == sampler.generate(params, PROMPTS, cfg, seed=1)
    assert a != sampler.generate(params, PROMPTS, cfg, seed=2)
    greedy = sampler.generate(params, PROMPTS, SamplingConfig(max_new_tokens=8, temperature=0))
    top1 = sampler.generate(params, PROMPTS, SamplingConfig(max_new_tokens=8, top_k=1), seed=5)
    assert [t for t, _ in top1] == [t for t, _ in greedy]


@pytest.mark.parametrize("vocab", [7, 50, 300])
def test_categorical_draws_the_softmax_and_never_a_filtered_token(vocab):
    """The two-level inverse-CDF draw against softmax(logits), by a chi-square goodness-of-fit
    test on 100,000 draws (a draw from any other distribution, e.g. a tempered one, gives a
    p-value of ~0), on logits with every third token filtered to -inf, a vocabulary that is
    not a square (a padded last block) and blocks ending in tokens of probability 0."""
    n = 100_000
    logits = 2.0 * jax.random.normal(jax.random.key(vocab), (vocab,))
    logits = logits.at[::3].set(-jnp.inf).at[-1].set(-jnp.inf)
    draws = jax.jit(categorical)(jax.random.key(1), jnp.broadcast_to(logits, (n, vocab)))
    counts = np.bincount(np.asarray(draws), minlength=vocab)
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    assert counts[p == 0].sum() == 0
    expected = p * n
    big = expected >= 5
    chi2 = ((counts[big] - expected[big]) ** 2 / expected[big]).sum()
    assert stats.chi2.sf(chi2, big.sum() - 1) > 1e-3, chi2
    # an all-but-one filtered row always draws the one token left
    one = jnp.full((4, vocab), -jnp.inf).at[:, vocab // 2].set(0.0)
    assert (np.asarray(categorical(jax.random.key(2), one)) == vocab // 2).all()


def test_filter_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda cfg: np.isfinite(filter_logits(logits, cfg))[0].tolist()  # noqa: E731
    assert kept(SamplingConfig(top_k=2)) == [True, True, False, False]
    assert kept(SamplingConfig(top_p=0.7)) == [True, True, False, False]
    assert kept(SamplingConfig(top_p=0.81)) == [True, True, True, False]
    assert kept(SamplingConfig(top_p=0.3)) == [True, False, False, False]


def test_buckets_compile_once_and_samplers_of_one_shape_share_it(setup):
    model, params, sampler = setup
    cfg = SamplingConfig(max_new_tokens=3, temperature=0)  # a setting no other test compiles
    # batch sizes 3, 4, 3 share the 4-row bucket; lengths 3..16 share the 16-token bucket
    for prompts in ([[5] * 3] * 3, [[5] * 9, [6] * 2] * 2, [[7] * 16] * 3):
        sampler.generate(params, prompts, cfg)
    gen = sampler._jit(("generate", cfg), None, 0)
    assert gen._cache_size() == 1
    # another model of the same shape (another checkpoint) reuses the compiled step
    other = Sampler(Transformer(CFG), sharding.single_device_mesh(), eos_id=2, pad_id=0)
    other_params = jax.tree.map(lambda x: x * 0.5, params)
    other.generate(other_params, [[5] * 3] * 3, cfg)
    assert other._jit(("generate", cfg), None, 0) is gen and gen._cache_size() == 1


def test_padding_helpers():
    toks, mask = pad_left([[1, 2], [3]], 4, 0)
    assert toks.tolist() == [[0, 0, 1, 2], [0, 0, 0, 3]] and mask.sum() == 3
    toks, mask = pad_right([[1, 2], [3]], 4, 0)
    assert toks.tolist() == [[1, 2, 0, 0], [3, 0, 0, 0]] and mask[1].tolist() == [1, 0, 0, 0]
