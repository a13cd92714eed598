"""The arithmetic of the RL stage: log-probs at the sampling temperature, per-token KL estimates,
the KL-shaped reward, GAE, whitening, PPO's clipped losses, the KL controllers, and RLOO's
leave-one-out advantages. Pure ``jax.numpy`` functions; stage ``rl_cai`` feeds them rollouts.

Shapes: per-token arrays are ``[B, T]`` over the *response* tokens only (B rollouts, T the
generation length), with ``mask`` a float ``[B, T]`` that is 1 on the tokens the policy really
emitted (up to and including its end token) and 0 on the padding after them. Per-response arrays
are ``[B]``. Everything is jittable; the time recursion of GAE is a ``lax.scan``.

One iteration (PPO, arXiv 1707.06347; the KL penalty in the reward as HH-RLHF, arXiv 2204.05862,
Eq. 4.1; GAE, arXiv 1506.02438)::

    logp, logp_ref = token_logprobs(policy / reference logits, tokens, T)    # [B, T]
    kl   = kl_k1(logp, logp_ref)            # or kl_k3; log both
    r    = shaped_rewards(score, pm_mean, kl, mask, β, eos_missing, penalty)
    A, R = gae(r, values, mask, γ, λ);  A = whiten(A, mask)
    for epochs x minibatches:  policy_loss(logp_new, logp, A, mask, ε) + c_v · value_loss(...)
    β    = update_kl(controller, mean sequence KL, B).beta
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cai.errors import ConfigError

# ----------------------------------------------------------------------------- log-probs


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """``Σ m·x / Σ m`` over every axis (0 when the mask is empty)."""
    m = mask.astype(jnp.float32)
    return jnp.sum(m * x) / jnp.maximum(jnp.sum(m), 1.0)


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float) -> jax.Array:
    """``log softmax(logits / T)[token]`` [B, T] for logits [B, T, V] aligned with ``tokens``
    (``logits[:, t]`` is the distribution ``tokens[:, t]`` was drawn from: the caller shifts).

    ``T`` must be the sampling temperature: the rollouts were drawn from ``softmax(z / T)``, so
    the PPO ratio ``π_new / π_old`` and the KL to the reference are only about the sampled
    distribution when old, new and reference log-probs are all taken at that same ``T``. Mixing
    (sampling at T < 1, scoring at 1) makes the k1 estimate systematically negative. The
    target's logit is picked with a one-hot product, whose gradient is elementwise (as
    ``train_lib.next_token_nll``)."""
    z = logits.astype(jnp.float32) / temperature
    picked = jnp.sum(z * jax.nn.one_hot(tokens, z.shape[-1], dtype=z.dtype), axis=-1)
    return picked - jax.nn.logsumexp(z, axis=-1)


def token_entropy(logits: jax.Array, temperature: float) -> jax.Array:
    """Entropy [B, T] of the sampled distribution ``p = softmax(z / T)`` at each position:
    ``H_t = −Σ_v p_v log p_v = logsumexp(z/T) − Σ_v p_v z_v/T``."""
    z = logits.astype(jnp.float32) / temperature
    lse = jax.nn.logsumexp(z, axis=-1)
    return lse - jnp.sum(jax.nn.softmax(z, axis=-1) * z, axis=-1)


def entropy(logits: jax.Array, temperature: float, mask: jax.Array) -> jax.Array:
    """``token_entropy`` averaged over ``mask``. A collapsing entropy is the first sign of a
    policy that found one answer for everything."""
    return masked_mean(token_entropy(logits, temperature), mask)


# ----------------------------------------------------------------------------- KL estimates


def kl_k1(logp: jax.Array, logp_ref: jax.Array) -> jax.Array:
    """``k1 = log π(x) − log π_ref(x)`` per sampled token (Schulman, "Approximating KL
    divergence", 2020). With ``x ~ π`` it is unbiased for ``KL(π ‖ π_ref)`` but high-variance and
    negative on many tokens; a *mean* that stays negative means old and reference log-probs
    were not taken on the distribution that was sampled (see ``token_logprobs``)."""
    return logp - logp_ref


def kl_k3(logp: jax.Array, logp_ref: jax.Array) -> jax.Array:
    """``k3 = (r − 1) − log r`` with ``r = π_ref(x) / π(x) = exp(logp_ref − logp)`` (Schulman,
    "Approximating KL divergence"). Unbiased for ``KL(π ‖ π_ref)`` under ``x ~ π`` (since
    ``E_π[r] = 1``), lower variance than k1, and never negative (``e^u − 1 − u ≥ 0``), so every
    token's penalty points the same way. Computed as ``expm1(u) − u`` for precision near 0."""
    u = logp_ref - logp
    return jnp.maximum(jnp.expm1(u) - u, 0.0)


# ----------------------------------------------------------------------------- rewards


def last_token_onehot(mask: jax.Array) -> jax.Array:
    """[B, T] float: 1 at each row's last real token, 0 elsewhere (all 0 on an empty row)."""
    m = mask.astype(jnp.float32)
    t = jnp.arange(m.shape[-1])
    last = jnp.max(jnp.where(m > 0, t, -1), axis=-1, keepdims=True)  # [B, 1]; -1: empty
    return (t == last).astype(jnp.float32)


def shaped_rewards(
    score: jax.Array,
    reward_mean: float | jax.Array,
    kl: jax.Array,
    mask: jax.Array,
    beta: float | jax.Array,
    eos_missing: jax.Array,
    missing_eos_penalty: float | jax.Array,
) -> jax.Array:
    """Per-token rewards [B, T]: the KL penalty on every real token and the PM's verdict on the
    last one (HH-RLHF Eq. 4.1, ``r = r_PM − λ_KL · D_KL(π ‖ π_0)``, with the KL spread over the
    tokens that incur it)::

        s_i    = score_i − μ_PM − c · [response i has no end token]
        r_i,t  = −β · KL_i,t · m_i,t  +  s_i · [t = last real token of i]

    ``score`` [B] is the PM's reward, ``μ_PM`` its stored mean (``reward_stats.json``: a PM's
    scores have an arbitrary offset, and an uncentred one would act as a per-response bonus for
    existing). ``eos_missing`` [B] marks responses cut at the length limit before the end token;
    ``c = missing_eos_penalty`` (≥ 0, subtracted, as TRL's ``missing_eos_penalty``) keeps the
    policy from learning to ramble past the PM's reading point. ``kl`` is ``kl_k1`` or
    ``kl_k3``. Summed over ``t`` this is the sequence reward RLOO uses."""
    m = mask.astype(jnp.float32)
    s = (
        score.astype(jnp.float32)
        - reward_mean
        - missing_eos_penalty * eos_missing.astype(jnp.float32)
    )
    return -beta * kl.astype(jnp.float32) * m + s[:, None] * last_token_onehot(m)


# ----------------------------------------------------------------------------- advantages


def gae(
    rewards: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    gamma: float | jax.Array,
    lam: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """(advantages, returns) [B, T] by generalised advantage estimation (arXiv 1506.02438,
    Eq. 16, as its backward recursion)::

        δ_t = r_t + γ V_{t+1} − V_t
        A_t = δ_t + γ λ A_{t+1}
        R_t = A_t + V_t

    with ``V_{t+1} = A_{t+1} = 0`` after a row's last real token (the episode ends there) and
    ``A_t = R_t = 0`` wherever ``mask`` is 0. ``λ = 1`` gives the Monte-Carlo return minus
    ``V``; ``λ = 0`` the one-step TD error. The loop runs backwards in time with ``lax.scan``."""
    m = mask.astype(jnp.float32)
    v = values.astype(jnp.float32) * m
    r = rewards.astype(jnp.float32) * m

    def step(
        carry: tuple[jax.Array, jax.Array], x: tuple[jax.Array, jax.Array, jax.Array]
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        next_v, next_a = carry  # [B] each; 0 past the end
        r_t, v_t, m_t = x
        a_t = (r_t + gamma * next_v - v_t + gamma * lam * next_a) * m_t
        return (v_t, a_t), a_t

    zeros = jnp.zeros(m.shape[:1], jnp.float32)
    _, adv = jax.lax.scan(step, (zeros, zeros), (r.T, v.T, m.T), reverse=True)
    adv = adv.T  # [T, B] -> [B, T]
    return adv, (adv + v) * m


def whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
    """``(x − μ) / sqrt(σ² + 1e-8)`` with the masked mean ``μ = Σ m x / Σ m`` and masked
    (population) variance ``σ² = Σ m (x − μ)² / Σ m``; 0 where ``mask`` is 0. With
    ``shift_mean=False`` the mean is added back (``x`` rescaled only), which is how rewards
    are whitened without changing their sign. Advantages are whitened per rollout batch so the
    step size does not follow the reward's scale."""
    m = mask.astype(jnp.float32)
    x = x.astype(jnp.float32)
    mean = masked_mean(x, m)
    var = masked_mean(jnp.square(x - mean), m)
    out = (x - mean) * jax.lax.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * m


def rloo_advantages(scores: jax.Array, k: int) -> jax.Array:
    """REINFORCE leave-one-out advantages [n·k] (Ahmadian et al., arXiv 2402.14740, Eq. 5),
    critic-free: ``scores`` [n·k] hold k samples per prompt, contiguous (prompt j owns
    ``scores[j·k : (j+1)·k]``), and each sample's baseline is the mean of its k − 1 siblings::

        A_i = s_i − (1 / (k − 1)) Σ_{j ≠ i} s_j  =  k / (k − 1) · (s_i − mean_j s_j)

    so the advantages of a group sum to 0. ``s`` is the sequence reward, e.g.
    ``shaped_rewards(...).sum(-1)`` (PM score minus β times the summed KL)."""
    if k < 2:
        raise ConfigError(f"rloo: k={k}: leave-one-out needs at least 2 samples per prompt")
    if scores.shape[0] % k:
        raise ConfigError(f"rloo: {scores.shape[0]} scores do not split into groups of k={k}")
    s = scores.astype(jnp.float32).reshape(-1, k)
    baseline = (jnp.sum(s, axis=1, keepdims=True) - s) / (k - 1)
    return (s - baseline).reshape(-1)


def rloo_loss(logp: jax.Array, advantages: jax.Array, mask: jax.Array) -> jax.Array:
    """The REINFORCE objective RLOO optimises, ``L = −(1/B) Σ_i A_i Σ_t m_i,t log π(y_i,t)``,
    for one on-policy step (``advantages`` [B] from ``rloo_advantages``, treated as constants).
    For several epochs over one rollout use ``policy_loss`` with ``A_i`` broadcast to the
    tokens instead: at ratio 1 it has the same direction, and the clip keeps later steps near
    the sampling policy."""
    m = mask.astype(jnp.float32)
    seq = jnp.sum(logp.astype(jnp.float32) * m, axis=-1)  # [B]
    return -jnp.mean(jax.lax.stop_gradient(advantages.astype(jnp.float32)) * seq)


# ----------------------------------------------------------------------------- losses


def policy_loss(
    logp_new: jax.Array,
    logp_old: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    clip_eps: float | jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO's clipped surrogate (arXiv 1707.06347, Eq. 7), as a loss to minimise, averaged over
    the real tokens::

        ρ_t = exp(log π_new − log π_old)
        L   = mean_t  max(−ρ_t A_t, −clip(ρ_t, 1 − ε, 1 + ε) A_t)

    (``max`` of the negatives is the paper's ``min``: the pessimistic bound, whose gradient
    vanishes once the ratio has moved ε in the advantage's direction.) Metrics: ``clip_frac``
    (share of tokens where the clipped term is the larger loss, i.e. carries no gradient),
    ``approx_kl`` (k3 estimate of ``KL(π_old ‖ π_new)``: ``mean (ρ − 1) − log ρ``, samples being
    from π_old), ``ratio`` (mean ρ)."""
    m = mask.astype(jnp.float32)
    log_ratio = logp_new.astype(jnp.float32) - logp_old.astype(jnp.float32)
    ratio = jnp.exp(log_ratio)
    adv = advantages.astype(jnp.float32)
    unclipped = -ratio * adv
    clipped = -jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    loss = masked_mean(jnp.maximum(unclipped, clipped), m)
    metrics = {
        "clip_frac": masked_mean((clipped > unclipped).astype(jnp.float32), m),
        "approx_kl": masked_mean(jnp.expm1(log_ratio) - log_ratio, m),
        "ratio": masked_mean(ratio, m),
    }
    return loss, metrics


def value_loss(
    values_new: jax.Array,
    values_old: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    clip: float | jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped value loss of PPO's reference implementation (baselines ``ppo2``), averaged
    over the real tokens::

        V_c = V_old + clip(V − V_old, −c, c)
        L   = mean_t  ½ · max((V_t − R_t)², (V_c,t − R_t)²)

    The value model, like the policy, may not move far from the one that produced the rollout
    in one update. Metrics: ``value_clip_frac`` (share of tokens where the clipped error is the
    larger), ``value_error`` (mean unclipped ``(V − R)²``)."""
    m = mask.astype(jnp.float32)
    v = values_new.astype(jnp.float32)
    v_old = values_old.astype(jnp.float32)
    ret = returns.astype(jnp.float32)
    v_clipped = v_old + jnp.clip(v - v_old, -clip, clip)
    err = jnp.square(v - ret)
    err_clipped = jnp.square(v_clipped - ret)
    loss = 0.5 * masked_mean(jnp.maximum(err, err_clipped), m)
    metrics = {
        "value_clip_frac": masked_mean((err_clipped > err).astype(jnp.float32), m),
        "value_error": masked_mean(err, m),
    }
    return loss, metrics


# ----------------------------------------------------------------------------- KL controllers


@dataclasses.dataclass(frozen=True)
class FixedKL:
    """A constant KL coefficient β (HH-RLHF used a fixed λ_KL = 0.001)."""

    beta: float

    def __post_init__(self) -> None:
        if not self.beta >= 0:
            raise ConfigError(f"kl.beta={self.beta}: must be non-negative")


@dataclasses.dataclass(frozen=True)
class AdaptiveKL:
    """A KL coefficient steered toward a target KL per response (Ziegler et al. 2019,
    arXiv 1909.08593, Sec. 2.2); ``horizon`` is in samples: the larger, the slower β moves."""

    beta: float
    target: float
    horizon: float = 10_000.0

    def __post_init__(self) -> None:
        if not self.beta >= 0:
            raise ConfigError(f"kl.beta={self.beta}: must be non-negative")
        if not self.target > 0:
            raise ConfigError(f"kl.target={self.target}: must be positive")
        if not self.horizon > 0:
            raise ConfigError(f"kl.horizon={self.horizon}: must be positive")


KLController = FixedKL | AdaptiveKL


def update_kl(ctl: KLController, kl: float, n: int) -> KLController:
    """The controller after one rollout batch of ``n`` samples whose mean KL per response
    (summed over its tokens) was ``kl``. Fixed: unchanged. Adaptive (Ziegler et al. 2019)::

        e = clip(KL / KL_target − 1, −0.2, 0.2)
        β ← β · (1 + e · n / horizon)

    so β grows while the policy drifts further than the target and shrinks while it stays
    closer, by at most a factor ``1 ± 0.2·n/horizon`` per batch. Runs on the host between
    iterations (``kl`` a number); pass the new β to the jitted step as an argument, not a
    constant, so it does not recompile."""
    if isinstance(ctl, FixedKL):
        return ctl
    e = min(max(float(kl) / ctl.target - 1.0, -0.2), 0.2)
    return dataclasses.replace(ctl, beta=ctl.beta * (1.0 + e * n / ctl.horizon))
