"""The RL arithmetic of ``cai.ppo`` against its equations: GAE equals a plain numpy reverse loop,
the clipped losses equal hand-computed cases on both branches, the KL estimates and the shaped
reward, whitening, the adaptive KL controller, and RLOO's leave-one-out advantages."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai import ppo
from cai.errors import ConfigError


def ragged_mask(lengths, T):
    return (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


# ----------------------------------------------------------------------------- log-probs


def test_token_logprobs_use_the_sampling_temperature():
    logits = np.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]]], np.float32)  # [1, 2, 3]
    tokens = np.array([[2, 0]])
    for T in (1.0, 0.5, 2.0):
        z = logits[0].astype(np.float64) / T
        want = [z[0, 2] - np.log(np.exp(z[0]).sum()), z[1, 0] - np.log(np.exp(z[1]).sum())]
        got = ppo.token_logprobs(jnp.asarray(logits), jnp.asarray(tokens), T)
        np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-5, atol=1e-6)
    # T = 2 gives 2 - log(e^0.5 + e + e^1.5) for token 2 of the first position: not T = 1's.
    t2 = float(ppo.token_logprobs(jnp.asarray(logits), jnp.asarray(tokens), 2.0)[0, 0])
    assert t2 == pytest.approx(1.5 - math.log(math.exp(0.5) + math.e + math.exp(1.5)), abs=1e-6)


def test_entropy_is_the_masked_mean_at_temperature():
    logits = np.zeros((2, 3, 4), np.float32)
    logits[0, 1] = [3.0, 1.0, 0.0, -1.0]
    logits[1, 2] = [100.0, 0.0, 0.0, 0.0]  # masked out: would pull the mean toward 0
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    T = 2.0
    z = logits[0, 1].astype(np.float64) / T
    q = np.exp(z) / np.exp(z).sum()
    h_peaked = -(q * np.log(q)).sum()
    want = (math.log(4) * 2 + h_peaked) / 3  # uniform rows have entropy log 4
    got = ppo.entropy(jnp.asarray(logits), T, jnp.asarray(mask))
    assert float(got) == pytest.approx(want, rel=1e-6)


# ----------------------------------------------------------------------------- KL estimates


def test_kl_estimates():
    rng = np.random.default_rng(0)
    logp = jnp.asarray(rng.normal(-2.0, 1.0, (4, 6)), jnp.float32)
    logp_ref = jnp.asarray(rng.normal(-2.0, 1.0, (4, 6)), jnp.float32)
    np.testing.assert_array_equal(ppo.kl_k1(logp, logp_ref), logp - logp_ref)
    k3 = np.asarray(ppo.kl_k3(logp, logp_ref))
    assert (k3 >= 0).all() and (k3 > 0).any()
    assert not (np.asarray(ppo.kl_k1(logp, logp_ref)) >= 0).all()  # k1 goes negative, k3 not
    # One hand case: π = 1/2, π_ref = 1/4, r = 1/2: k1 = log 2, k3 = -1/2 + log 2.
    a, b = jnp.log(jnp.asarray([0.5])), jnp.log(jnp.asarray([0.25]))
    assert float(ppo.kl_k1(a, b)[0]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(ppo.kl_k3(a, b)[0]) == pytest.approx(math.log(2) - 0.5, rel=1e-5)
    # Both are 0 when the policy is the reference.
    np.testing.assert_array_equal(ppo.kl_k1(logp, logp), 0.0)
    np.testing.assert_array_equal(ppo.kl_k3(logp, logp), 0.0)


def test_kl_estimates_are_unbiased_under_the_policy():
    """E_{x~π}[k1] = E_{x~π}[k3] = KL(π ‖ π_ref), exactly, by enumerating a small vocabulary."""
    pi = np.array([0.5, 0.3, 0.15, 0.05])
    ref = np.array([0.1, 0.2, 0.3, 0.4])
    kl = float((pi * np.log(pi / ref)).sum())
    lp, lr = jnp.log(jnp.asarray(pi, jnp.float32)), jnp.log(jnp.asarray(ref, jnp.float32))
    assert float(jnp.sum(pi * ppo.kl_k1(lp, lr))) == pytest.approx(kl, rel=1e-5)
    assert float(jnp.sum(pi * ppo.kl_k3(lp, lr))) == pytest.approx(kl, rel=1e-5)


# ----------------------------------------------------------------------------- rewards


def test_shaped_rewards_put_the_score_on_the_last_real_token():
    kl = np.array(
        [[0.5, -0.2, 1.0, 0.3], [2.0, 0.4, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]], np.float32
    )  # 9.0: padding, must not count
    mask = ragged_mask([4, 2, 0], 4)
    score = np.array([1.0, 2.0, 3.0], np.float32)
    eos_missing = np.array([False, True, False])
    args = (jnp.asarray(score), 0.5, jnp.asarray(kl), jnp.asarray(mask), 0.1)
    got = np.asarray(ppo.shaped_rewards(*args, jnp.asarray(eos_missing), 1.0))
    want = np.array(
        [
            [-0.05, 0.02, -0.1, -0.03 + (1.0 - 0.5)],
            [-0.2, -0.04 + (2.0 - 0.5 - 1.0), 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],  # an empty response gets nothing
        ]
    )
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # The penalty lands only on the row without an end token, only on its last real token.
    none_missing = np.asarray(ppo.shaped_rewards(*args, jnp.zeros(3, bool), 1.0))
    diff = np.zeros((3, 4))
    diff[1, 1] = -1.0
    np.testing.assert_allclose(got - none_missing, diff, atol=1e-6)
    # Summed over time: the sequence reward s - β Σ KL.
    np.testing.assert_allclose(got.sum(-1), [0.5 - 0.1 * 1.6, 0.5 - 0.1 * 2.4, 0.0], rtol=1e-5)


# ----------------------------------------------------------------------------- GAE


def gae_loop(rewards, values, lengths, gamma, lam):
    """The reference: a plain per-row reverse loop in float64."""
    B, T = rewards.shape
    adv, ret = np.zeros((B, T)), np.zeros((B, T))
    for i in range(B):
        next_v = next_a = 0.0
        for t in reversed(range(lengths[i])):
            delta = rewards[i, t] + gamma * next_v - values[i, t]
            next_a = delta + gamma * lam * next_a
            next_v = values[i, t]
            adv[i, t], ret[i, t] = next_a, next_a + values[i, t]
    return adv, ret


@pytest.mark.parametrize(
    "gamma,lam", [(1.0, 1.0), (0.99, 0.95), (1.0, 0.9), (0.9, 1.0), (0.5, 0.0), (1.0, 0.0)]
)
def test_gae_equals_a_numpy_reverse_loop(gamma, lam):
    rng = np.random.default_rng(int(gamma * 100 + lam * 10))
    B, T = 6, 9
    lengths = [9, 5, 1, 0, 7, 3]
    rewards = rng.normal(size=(B, T)).astype(np.float32)  # garbage past the mask on purpose
    values = rng.normal(size=(B, T)).astype(np.float32)
    mask = ragged_mask(lengths, T)
    adv, ret = jax.jit(ppo.gae)(rewards, values, mask, gamma, lam)
    want_adv, want_ret = gae_loop(rewards.astype(np.float64), values, lengths, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
    assert np.abs(want_adv).max() > 0.1  # the comparison is not between zeros


def test_gae_hand_case():
    # Reward 1 at the last of three tokens, V = 0.5 throughout, γ = λ = 1: every return is 1.
    r = jnp.asarray([[0.0, 0.0, 1.0, 7.0]])
    v = jnp.asarray([[0.5, 0.5, 0.5, 7.0]])
    m = jnp.asarray(ragged_mask([3], 4))
    adv, ret = ppo.gae(r, v, m, 1.0, 1.0)
    np.testing.assert_allclose(adv, [[0.5, 0.5, 0.5, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(ret, [[1.0, 1.0, 1.0, 0.0]], rtol=1e-6)
    # γ = 0.5, λ = 0: one-step TD errors δ = r + γ V' - V.
    adv, _ = ppo.gae(r, v, m, 0.5, 0.0)
    np.testing.assert_allclose(adv, [[-0.25, -0.25, 0.5, 0.0]], rtol=1e-6)


# ----------------------------------------------------------------------------- whitening


def test_whiten_gives_masked_mean_0_var_1():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 5.0, (4, 8)).astype(np.float32)
    mask = ragged_mask([8, 3, 6, 1], 8)
    x[mask == 0] = 1e4  # padding must not enter the statistics
    out = np.asarray(ppo.whiten(jnp.asarray(x), jnp.asarray(mask)), np.float64)
    real = out[mask == 1]
    assert real.mean() == pytest.approx(0.0, abs=1e-5)
    assert real.var() == pytest.approx(1.0, rel=1e-5)
    assert (out[mask == 0] == 0).all()
    mean = x[mask == 1].astype(np.float64).mean()
    kept = np.asarray(ppo.whiten(jnp.asarray(x), jnp.asarray(mask), shift_mean=False))
    np.testing.assert_allclose(kept[mask == 1], real + mean, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- losses


def test_policy_loss_hand_cases():
    eps = 0.2
    # (ratio, advantage) per token; the last token is padding with absurd values.
    ratio = np.array([[1.5, 0.5, 0.5, 1.1, 50.0]])
    adv = jnp.asarray([[1.0, 1.0, -2.0, -1.0, 100.0]])
    mask = jnp.asarray([[1.0, 1.0, 1.0, 1.0, 0.0]])
    logp_old = jnp.asarray([[-1.0, -2.0, -0.5, -3.0, -1.0]])
    logp_new = logp_old + jnp.log(jnp.asarray(ratio, jnp.float32))
    loss, metrics = ppo.policy_loss(logp_new, logp_old, adv, mask, eps)
    # max(-ρA, -clip(ρ)A): 1.5,+1 -> max(-1.5, -1.2) = -1.2 (clipped);
    # 0.5,+1 -> max(-0.5, -0.8) = -0.5; 0.5,-2 -> max(1.0, 1.6) = 1.6 (clipped);
    # 1.1,-1 -> 1.1 (inside the clip range, both the same).
    assert float(loss) == pytest.approx((-1.2 - 0.5 + 1.6 + 1.1) / 4, rel=1e-5)
    assert float(metrics["clip_frac"]) == pytest.approx(0.5)
    assert float(metrics["ratio"]) == pytest.approx((1.5 + 0.5 + 0.5 + 1.1) / 4, rel=1e-5)
    k3 = [r - 1 - math.log(r) for r in ratio[0, :4]]
    assert float(metrics["approx_kl"]) == pytest.approx(sum(k3) / 4, rel=1e-4)
    # Clipped tokens carry no gradient; an unclipped one has d(-ρA)/dlogp = -ρA (over 4 tokens).
    grad = jax.grad(lambda lp: ppo.policy_loss(lp, logp_old, adv, mask, eps)[0])(logp_new)
    np.testing.assert_allclose(np.asarray(grad)[0, [0, 1, 2, 4]], [0, -0.5 / 4, 0, 0], atol=1e-6)


def test_value_loss_hand_cases():
    c = 0.2
    v_old = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])
    v_new = jnp.asarray([[1.5, 1.5, 0.9, 30.0]])
    ret = jnp.asarray([[2.0, 1.0, 0.0, -30.0]])
    mask = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])
    loss, metrics = ppo.value_loss(v_new, v_old, ret, mask, c)
    # V_c = [1.2, 1.2, 0.9]: errors (0.25 vs 0.64) -> 0.64 clipped; (0.25 vs 0.04) -> 0.25;
    # (0.81 vs 0.81) -> 0.81 inside the range.
    assert float(loss) == pytest.approx(0.5 * (0.64 + 0.25 + 0.81) / 3, rel=1e-5)
    assert float(metrics["value_clip_frac"]) == pytest.approx(1 / 3, rel=1e-6)
    assert float(metrics["value_error"]) == pytest.approx((0.25 + 0.25 + 0.81) / 3, rel=1e-5)
    # A clipped token's loss is flat in V: no gradient; an unclipped one: (V - R) / 3.
    grad = jax.grad(lambda v: ppo.value_loss(v, v_old, ret, mask, c)[0])(v_new)
    np.testing.assert_allclose(np.asarray(grad)[0, [0, 1, 3]], [0.0, 0.5 / 3, 0.0], atol=1e-6)


# ----------------------------------------------------------------------------- KL controllers


def test_fixed_controller_never_moves():
    ctl = ppo.FixedKL(0.05)
    assert ppo.update_kl(ctl, 100.0, 64) == ctl


def test_adaptive_controller_hand_cases():
    ctl = ppo.AdaptiveKL(beta=0.1, target=6.0, horizon=10_000.0)
    n = 64
    step = n / 10_000
    cases = {12.0: 0.2, 6.6: 0.1, 6.0: 0.0, 3.0: -0.2, 0.0: -0.2, 1e6: 0.2}
    for kl, e in cases.items():
        got = ppo.update_kl(ctl, kl, n)
        assert got.beta == pytest.approx(0.1 * (1 + e * step), rel=1e-12), kl
        assert (got.target, got.horizon) == (6.0, 10_000.0)
    assert ppo.update_kl(ctl, 12.0, n).beta > 0.1 > ppo.update_kl(ctl, 3.0, n).beta


def test_adaptive_controller_moves_beta_toward_its_target():
    """A toy policy whose KL falls as β rises (KL = 0.6 / β): from either side, β walks to the β
    that gives the target KL (0.1), by at most a factor 1 ± 0.2 n/horizon per update."""
    n, horizon, target = 32, 64.0, 6.0
    bound = 0.2 * n / horizon
    for beta0 in (0.01, 1.0):
        ctl = ppo.AdaptiveKL(beta=beta0, target=target, horizon=horizon)
        gaps = []
        for _ in range(200):
            new = ppo.update_kl(ctl, 0.6 / ctl.beta, n)
            assert 1 - bound - 1e-12 <= new.beta / ctl.beta <= 1 + bound + 1e-12
            gaps.append(abs(math.log(new.beta / 0.1)))
            ctl = new
        assert all(b <= a + 1e-12 for a, b in zip(gaps, gaps[1:]))  # never moves away
        assert ctl.beta == pytest.approx(0.1, rel=1e-3)


def test_controllers_reject_bad_settings():
    with pytest.raises(ConfigError, match="target"):
        ppo.AdaptiveKL(beta=0.1, target=0.0)
    with pytest.raises(ConfigError, match="beta"):
        ppo.FixedKL(-1.0)


# ----------------------------------------------------------------------------- RLOO


def test_rloo_advantages_hand_case():
    scores = jnp.asarray([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 1.0, 1.0])
    adv = np.asarray(ppo.rloo_advantages(scores, 4))
    # Group 1: s_i - (12 - s_i) / 3; group 2: s_i - (2 - s_i) / 3.
    want = [1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0, -2 / 3, -2 / 3, 2 / 3, 2 / 3]
    np.testing.assert_allclose(adv, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(adv.reshape(2, 4).sum(1), 0.0, atol=1e-6)
    np.testing.assert_allclose(ppo.rloo_advantages(jnp.asarray([3.0, 1.0]), 2), [2.0, -2.0])
    with pytest.raises(ConfigError, match="at least 2"):
        ppo.rloo_advantages(scores, 1)
    with pytest.raises(ConfigError, match="groups"):
        ppo.rloo_advantages(scores, 3)


def test_rloo_loss_hand_case():
    logp = jnp.asarray([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    mask = jnp.asarray(ragged_mask([2, 1], 3))
    adv = jnp.asarray([2.0, -1.0])
    # -(1/2) (2 · (-3) + (-1) · (-0.5)) = 2.75
    assert float(ppo.rloo_loss(logp, adv, mask)) == pytest.approx(2.75)
    g_logp, g_adv = jax.grad(ppo.rloo_loss, argnums=(0, 1))(logp, adv, mask)
    np.testing.assert_allclose(g_logp, [[-1.0, -1.0, 0.0], [0.5, 0.0, 0.0]])
    np.testing.assert_array_equal(g_adv, 0.0)  # the advantages are constants
