"""Model contracts: cached decode equals the full forward for every variant, padding is
invisible, every parameter carries logical axis names, bad configs fail by field name."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai.errors import ConfigError
from cai.model import PRESETS, ModelConfig, Transformer, init_cache, last_token

BASE = PRESETS["tiny"]
VARIANTS = {
    "gqa_swiglu_rope": {},
    "mha": dict(n_kv_heads=4),
    "mqa": dict(n_kv_heads=1),
    "gpt2_like": dict(
        position="learned",
        norm="layer",
        mlp="gelu",
        use_bias=True,
        tie_embeddings=False,
        n_kv_heads=4,
    ),
    "gemma_like": dict(
        mlp="geglu",
        norm_offset=1.0,
        embed_scale=True,
        attn_softcap=5.0,
        final_softcap=3.0,
        post_norms=True,
        n_kv_heads=1,
    ),
    "remat_scalar": dict(remat=True, scalar_head=True),
}
MASK = np.array([[1] * 10, [0] * 3 + [1] * 7, [0] * 6 + [1] * 4], bool)


def build(**kw):
    cfg = dataclasses.replace(BASE, **kw)
    model = Transformer(cfg)
    tokens = jax.random.randint(jax.random.key(0), MASK.shape, 3, cfg.vocab_size)
    params = nn.unbox(model.init(jax.random.key(1), tokens))["params"]
    return cfg, model, params, tokens


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decode_equals_full_forward(name):
    cfg, model, params, tokens = build(**VARIANTS[name])
    full = model.apply({"params": params}, tokens, MASK).logits
    out = model.apply({"params": params}, tokens[:, :6], MASK[:, :6], init_cache(cfg, 3, 13))
    pieces, cache = [out.logits], out.cache
    for t in range(6, 10):  # one token at a time, like the decode loop
        out = model.apply({"params": params}, tokens[:, t : t + 1], MASK[:, t : t + 1], cache)
        pieces.append(out.logits)
        cache = out.cache
    cached = jnp.concatenate(pieces, axis=1)
    np.testing.assert_allclose(
        np.where(MASK[..., None], cached, 0), np.where(MASK[..., None], full, 0), atol=1e-5
    )
    assert int(cache.index) == 10 and cache.pos.tolist() == [10, 7, 4]


@pytest.mark.parametrize("name", ["gqa_swiglu_rope", "gpt2_like"])
def test_left_padding_is_invisible(name):
    _, model, params, tokens = build(**VARIANTS[name])
    padded = model.apply({"params": params}, tokens, MASK).logits
    for row in (1, 2):
        n = int(MASK[row].sum())
        alone = model.apply({"params": params}, tokens[row : row + 1, -n:]).logits
        np.testing.assert_allclose(padded[row, -n:], alone[0], atol=1e-5)


def test_every_param_has_logical_names():
    cfg = dataclasses.replace(BASE, **VARIANTS["gpt2_like"], scalar_head=True)
    boxed = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 1), int)))
    leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim


def test_scalar_head_and_last_token():
    _, model, params, tokens = build(scalar_head=True)
    out = model.apply({"params": params}, tokens, MASK)
    assert out.values.shape == MASK.shape
    right_padded = np.array([[1] * 10, [1] * 4 + [0] * 6, [1] * 7 + [0] * 3], bool)
    x = jnp.arange(30).reshape(3, 10)
    assert last_token(x, right_padded).tolist() == [9, 13, 26]
    assert last_token(x, MASK).tolist() == [9, 19, 29]


def test_bf16_compute_runs_and_stays_close():
    _, model, params, tokens = build()
    f32 = model.apply({"params": params}, tokens, MASK).logits
    bf = Transformer(dataclasses.replace(BASE, dtype="bfloat16"))
    b16 = bf.apply({"params": params}, tokens, MASK).logits
    assert b16.dtype == jnp.float32  # logits are always float32
    assert float(jnp.max(jnp.abs(jnp.where(MASK[..., None], b16 - f32, 0)))) < 0.5


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(mlp="relu"), "model.mlp"),
        (dict(n_heads=4, n_kv_heads=3), "model.n_heads"),
        (dict(dtype="float77"), "model.dtype"),
        (dict(d_model=0), "model.d_model"),
    ],
)
def test_bad_config_names_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**kw)


def test_num_params_matches_init():
    cfg = PRESETS["tiny"]
    params = jax.eval_shape(
        lambda: nn.unbox(Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 1), int)))
    )
    assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()


def test_rope_angles_are_computed_once_per_forward():
    """Every layer's queries and keys share one sin and one cos (``model.rope_angles``): left to
    itself XLA:CPU fused them into each rotation and evaluated them per head and element."""
    cfg = dataclasses.replace(BASE, n_layers=3)
    model = Transformer(cfg)
    tokens = jnp.ones((2, 8), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), tokens)["params"]
    hlo = jax.jit(lambda p, t: model.apply({"params": p}, t).logits).lower(params, tokens)
    text = hlo.compile().as_text()
    assert text.count(" sine(") == 1 and text.count(" cosine(") == 1, "sin/cos recomputed"
