"""Train-step contracts: the masked loss is the hand-computed one, the step trains, the
compiled step never recompiles, and the schedule is warmup then decay."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai import sharding
from cai.data.stream import PackedStream
from cai.errors import ConfigError
from cai.model import PRESETS, Transformer
from cai.train_lib import (
    OptimConfig,
    TrainConfig,
    compile_train_step,
    create_train_state,
    lm_loss,
    make_optimizer,
    make_schedule,
    next_token_nll,
)

CFG = dataclasses.replace(PRESETS["tiny"], vocab_size=64)


def test_next_token_nll_by_hand():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]]))
    tokens = jnp.array([[0, 1, 2]])
    nll, n, correct = next_token_nll(logits, tokens, jnp.array([[1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(nll, -np.log(0.25) - np.log(0.1), rtol=1e-6)
    assert float(n) == 2 and float(correct) == 0
    nll, n, _ = next_token_nll(logits, tokens, jnp.array([[1.0, 0.0, 1.0]]))  # token 1 not a target
    np.testing.assert_allclose(nll, -np.log(0.1), rtol=1e-6)
    assert float(n) == 1
    _, _, correct = next_token_nll(logits, jnp.array([[0, 1, 1]]), jnp.ones((1, 3)))
    assert float(correct) == 1  # position 1 predicts token 1 with its top score


def test_next_token_nll_matches_a_gather_reference_with_gradients():
    """The one-hot / shifted-target form equals log_softmax + take_along_axis, values and
    gradients, with a ragged loss mask."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 7, 11)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 11, (3, 7)))
    mask = jnp.asarray(rng.random((3, 7)) < 0.7, jnp.float32)

    def reference(lg):
        logp = jax.nn.log_softmax(lg[:, :-1], -1)
        tok = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
        return -jnp.sum(tok * mask[:, 1:])

    ours = lambda lg: next_token_nll(lg, tokens, mask)[0]  # noqa: E731
    np.testing.assert_allclose(ours(logits), reference(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(reference)(logits), atol=1e-6)


def test_loss_ignores_unmasked_targets():
    model = Transformer(CFG)
    mesh = sharding.single_device_mesh()
    opt = make_optimizer(OptimConfig(), 10)
    params = create_train_state(model, opt, mesh, 0).params
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 64, (2, 12)).astype(np.int32)
    loss_mask = np.zeros((2, 12), np.float32)
    loss_mask[:, 6:] = 1  # only the "assistant" half counts
    batch = {"tokens": tokens, "mask": np.ones((2, 12), bool), "loss_mask": loss_mask}
    changed = dict(batch, tokens=tokens.copy())
    changed["tokens"][:, 8:] = (tokens[:, 8:] + 1) % 64  # change counted targets
    a, _ = lm_loss(params, batch, model)
    b, _ = lm_loss(params, changed, model)
    assert abs(float(a) - float(b)) > 1e-4
    logits = model.apply({"params": params}, tokens).logits
    logp = jax.nn.log_softmax(logits[:, :-1], -1)
    tgt = np.take_along_axis(np.asarray(logp), tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(float(a), -tgt[:, 5:].mean(), rtol=1e-5)


def test_training_reduces_loss_without_recompiling():
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, _secs, **kw: compiles.append(name) if "backend_compile" in name else None
    )
    model = Transformer(CFG)
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    opt = make_optimizer(OptimConfig(learning_rate=3e-3, warmup_steps=5), 60)
    # A deterministic, learnable stream: repeated ramps.
    stream = PackedStream(np.tile(np.arange(3, 35), 400), seq_len=32, batch_size=8, seed=0)
    step = compile_train_step(
        model, opt, mesh, {k: (v.shape, v.dtype) for k, v in stream.batch(0).items()}
    )
    state = create_train_state(model, opt, mesh, seed=0)
    losses = []
    for i in range(60):
        state, m = step(state, sharding.put_batch(stream.batch(i), mesh))
        losses.append(float(m["loss"]))
        if i == 0:
            n_after_first = len(compiles)
    assert compiles, "the compile listener saw nothing (event name changed?)"
    assert len(compiles) == n_after_first, "the train step recompiled"
    assert int(state.step) == 60
    assert np.mean(losses[-5:]) < 0.3 * losses[0]


def test_frozen_parameters_stay_put_and_the_rest_trains():
    """``freeze`` holds matching params fixed on a sharded mesh (no Adam step, no weight decay),
    while the others train."""
    model = Transformer(CFG)
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    cfg = OptimConfig(learning_rate=1e-2, warmup_steps=0, weight_decay=0.1)
    frozen_cfg = dataclasses.replace(cfg, freeze=("embedding", "layers_0/attn/.*"))
    opt = make_optimizer(frozen_cfg, 10)
    stream = PackedStream(np.tile(np.arange(3, 35), 400), seq_len=32, batch_size=8, seed=0)
    shapes = {k: (v.shape, v.dtype) for k, v in stream.batch(0).items()}
    step = compile_train_step(model, opt, mesh, shapes)
    state = create_train_state(model, opt, mesh, seed=0)
    before = jax.device_get(state.params)
    for i in range(3):
        state, _ = step(state, sharding.put_batch(stream.batch(i), mesh))
    after = jax.device_get(state.params)
    np.testing.assert_array_equal(after["embedding"], before["embedding"])
    for name in ("q", "k", "v", "o"):
        np.testing.assert_array_equal(
            after["layers_0"]["attn"][name], before["layers_0"]["attn"][name]
        )
    assert np.abs(after["layers_1"]["attn"]["q"] - before["layers_1"]["attn"]["q"]).max() > 1e-3


def test_schedule_warmup_then_cosine():
    sched = make_schedule(OptimConfig(learning_rate=1.0, warmup_steps=10, end_lr_ratio=0.1), 110)
    assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6
    assert abs(float(sched(60)) - 0.55) < 1e-3 and abs(float(sched(110)) - 0.1) < 1e-6
    lin = make_schedule(
        OptimConfig(learning_rate=1.0, warmup_steps=0, schedule="linear", end_lr_ratio=0.0), 100
    )
    assert abs(float(lin(50)) - 0.5) < 1e-6


def test_data_order_is_a_function_of_step():
    s = PackedStream(np.arange(10_000), seq_len=10, batch_size=4, seed=1)
    assert np.array_equal(s.batch(7)["tokens"], s.batch(7)["tokens"])
    assert not np.array_equal(s.batch(7)["tokens"], s.batch(8)["tokens"])
    epoch = np.concatenate([s.batch(i)["tokens"][:, 0] for i in range(s.batches_per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch)  # an epoch visits each row once


def test_bad_train_values():
    with pytest.raises(ConfigError, match="train.batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="optim.schedule"):
        OptimConfig(schedule="exp")
