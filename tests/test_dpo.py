"""Soft-label DPO (``cai.dpo``) against hand-computed values: the loss for soft and hard labels,
its metrics, its gradient (which pushes toward the preferred reply and, for a soft label, stops
at z = logit(p)), and summed sequence log-probs read with the next-token shift."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai import dpo


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_dpo_loss_hand_cases():
    beta = 0.5
    # Pair 0: z = 0.5 ((-10 + 11) - (-12 + 11.5)) = 0.75, soft label 0.8.
    # Pair 1: z = 0.5 ((-4 + 5) - (-3 + 5)) = -0.5, hard label 1 (A preferred).
    # Pair 2: z = 0.5 ((-7 + 6) - (-7 + 7)) = -0.5, hard label 0 (B preferred).
    logp_a = jnp.asarray([-10.0, -4.0, -7.0])
    ref_a = jnp.asarray([-11.0, -5.0, -6.0])
    logp_b = jnp.asarray([-12.0, -3.0, -7.0])
    ref_b = jnp.asarray([-11.5, -5.0, -7.0])
    p = jnp.asarray([0.8, 1.0, 0.0])
    loss, metrics = dpo.dpo_loss(logp_a, logp_b, ref_a, ref_b, p, beta)
    l0 = -(0.8 * log_sigmoid(0.75) + 0.2 * log_sigmoid(-0.75))
    l1 = -log_sigmoid(-0.5)
    l2 = -log_sigmoid(0.5)
    assert float(loss) == pytest.approx((l0 + l1 + l2) / 3, rel=1e-6)
    assert (l0, l1, l2) == pytest.approx((0.5369, 0.9741, 0.4741), abs=1e-4)
    # Pairs 0 and 2 ranked right, pair 1 wrong; margins z · sign(p - 1/2) = 0.75, -0.5, 0.5.
    assert float(metrics["accuracy"]) == pytest.approx(2 / 3)
    assert float(metrics["margin"]) == pytest.approx(0.75 / 3, rel=1e-6)
    assert float(metrics["reward_a"]) == pytest.approx(0.5 * (1 + 1 - 1) / 3, rel=1e-6)
    assert float(metrics["reward_b"]) == pytest.approx(0.5 * (-0.5 + 2 + 0) / 3, rel=1e-6)


def test_dpo_loss_at_z_0_is_log_2_and_weights_drop_padding():
    zero = jnp.zeros(2)
    for p in (0.0, 0.3, 1.0):
        loss, _ = dpo.dpo_loss(zero, zero, zero, zero, jnp.full(2, p), 0.1)
        assert float(loss) == pytest.approx(math.log(2), rel=1e-6)
    # A row of weight 0 (padding) with a huge loss counts for nothing, in loss and metrics.
    logp_a = jnp.asarray([1.0, -50.0])
    loss, metrics = dpo.dpo_loss(logp_a, zero, zero, zero, jnp.asarray([1.0, 1.0]), 1.0,
                                 weight=jnp.asarray([1.0, 0.0]))  # fmt: skip
    assert float(loss) == pytest.approx(-log_sigmoid(1.0), rel=1e-6)
    assert float(metrics["accuracy"]) == 1.0


def test_dpo_gradient_pushes_toward_the_preferred_reply():
    beta = 0.5
    ref = jnp.zeros(2)

    def loss(la, lb, p):
        return dpo.dpo_loss(la, lb, ref, ref, p, beta)[0]

    la, lb = jnp.asarray([0.0, -1.0]), jnp.asarray([0.0, 1.0])  # z = 0, -1
    for p in ([1.0, 1.0], [0.0, 0.0], [0.7, 0.9]):
        ga, gb = jax.grad(loss, argnums=(0, 1))(la, lb, jnp.asarray(p))
        z = np.array([0.0, -1.0])
        # ∂ℓ/∂logπ(A) = β (σ(z) - p) / B and the opposite for B.
        want = beta * (1 / (1 + np.exp(-z)) - np.asarray(p)) / 2
        np.testing.assert_allclose(ga, want, rtol=1e-5)
        np.testing.assert_allclose(gb, -want, rtol=1e-5)
    # p = 1: descent raises logπ(A) and lowers logπ(B).
    ga, gb = jax.grad(loss, argnums=(0, 1))(la, lb, jnp.ones(2))
    assert (np.asarray(ga) < 0).all() and (np.asarray(gb) > 0).all()
    # A soft label stops at z = logit(p): no gradient there.
    p = 0.8
    at = jnp.asarray([math.log(p / (1 - p)) / beta])
    g = jax.grad(lambda a: dpo.dpo_loss(a, jnp.zeros(1), jnp.zeros(1), jnp.zeros(1),
                                        jnp.asarray([p]), beta)[0])(at)  # fmt: skip
    assert abs(float(g[0])) < 1e-6


def test_sequence_logprobs_shift_by_one():
    logits = np.array([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [9.0, 9.0, 0.0]]], np.float32)
    tokens = np.array([[1, 2, 0]])
    mask = np.array([[0.0, 1.0, 1.0]])  # the reply: tokens 1 and 2, predicted by logits 0 and 1
    lsm = logits[0] - np.log(np.exp(logits[0]).sum(-1, keepdims=True))
    want = lsm[0, 2] + lsm[1, 0]
    got = dpo.sequence_logprobs(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
    assert float(got[0]) == pytest.approx(float(want), rel=1e-6)
    assert float(want) == pytest.approx(-0.4076 - 0.2395, abs=1e-3)


def test_dpo_steps_raise_the_preferred_replys_likelihood():
    """A free [T, V] logit table as the policy, DPO steps on one pair (A preferred, p = 0.9):
    log π(A) − log π(B) rises from 0 and the fit stops near z = logit(0.9)."""
    T, V, beta = 4, 5, 1.0
    tok_a = jnp.asarray([[0, 1, 2, 3]])
    tok_b = jnp.asarray([[0, 4, 4, 3]])
    mask = jnp.asarray([[0.0, 1.0, 1.0, 1.0]])
    ref_params = jnp.zeros((T, V))

    def seq(params, toks):
        return dpo.sequence_logprobs(params[None], toks, mask)

    ref_a, ref_b = seq(ref_params, tok_a), seq(ref_params, tok_b)

    def loss(params):
        la, lb = seq(params, tok_a), seq(params, tok_b)
        return dpo.dpo_loss(la, lb, ref_a, ref_b, jnp.asarray([0.9]), beta)[0]

    step = jax.jit(lambda w: w - 1.0 * jax.grad(loss)(w))
    params = ref_params
    for _ in range(300):
        params = step(params)
    margin = float((seq(params, tok_a) - seq(params, tok_b))[0])
    assert margin == pytest.approx(math.log(9), rel=1e-2)
