"""Direct preference optimisation (DPO, Rafailov et al., arXiv 2305.18290) on AI-labelled pairs,
with the feedback model's soft label as target (beyond both papers): the ``dpo_ai`` baseline to
RL-CAI's PM + PPO.

DPO reads the policy's own log-ratio to a frozen reference as an implicit reward,
``r̂(x, y) = β · (log π(y | x) − log π_ref(y | x))``, and fits the Bradley-Terry preference
``σ(r̂_A − r̂_B)`` to the labels directly, with no PM and no sampling. For a comparison of
replies A and B with soft label ``p = P(A preferred)`` (``feedback.option_prob``)::

    z = β · ((log π(A) − log π_ref(A)) − (log π(B) − log π_ref(B)))
    ℓ = −[p · log σ(z) + (1 − p) · log σ(−z)]

``p ∈ {0, 1}`` is the paper's Eq. 7; a soft ``p`` is the preference model's soft-label loss
(``preference_model.pairwise_loss``) on the implicit reward, and equals "conservative DPO"'s
label smoothing with ``ε = 1 − p``. ``∂ℓ/∂z = σ(z) − p``: a soft label is fitted at
``z = logit(p)`` instead of being pushed to ``z → ±∞`` as a hard one is, which is the
over-optimisation that DPO on deterministic labels is known for.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cai import ppo


def sequence_logprobs(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """``Σ_t m_t · log π(tokens_t | tokens_<t)`` [B] from a model's logits [B, T, V] over the
    whole row ``tokens`` [B, T]: position ``t − 1`` predicts token ``t`` (as
    ``train_lib.next_token_nll``), and ``mask`` [B, T] marks the reply's tokens, the ones whose
    log-probs count (its first one must not be at position 0, which nothing predicts).
    Temperature 1: DPO's policy is the model itself."""
    targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
    w = jnp.pad(mask[:, 1:].astype(jnp.float32), ((0, 0), (0, 1)))
    return jnp.sum(ppo.token_logprobs(logits, targets, 1.0) * w, axis=-1)


def dpo_loss(
    logp_a: jax.Array,
    logp_b: jax.Array,
    ref_logp_a: jax.Array,
    ref_logp_b: jax.Array,
    p: jax.Array,
    beta: float | jax.Array,
    weight: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The soft-label DPO loss over a batch of pairs: inputs are summed sequence log-probs of
    replies A and B [B] under the policy and the reference (``sequence_logprobs``), ``p`` [B] =
    P(A preferred), and an optional ``weight`` [B] (task weight; 0 for padding rows)::

        z_i  = β · ((logπ(A_i) − logπ_ref(A_i)) − (logπ(B_i) − logπ_ref(B_i)))
        ℓ_i  = −[p_i log σ(z_i) + (1 − p_i) log σ(−z_i)]
        loss = Σ_i w_i ℓ_i / Σ_i w_i          (w = 1: the batch mean)

    Metrics, over pairs of positive weight, on those with ``p ≠ ½`` as ``pm_loss``:
    ``accuracy`` (sign of ``z`` agrees with ``p − ½``; ``z = 0`` counts half), ``margin``
    (mean ``z · sign(p − ½)``, the implicit reward margin toward the preferred reply), and
    ``reward_a`` / ``reward_b`` (mean implicit rewards ``β · (logπ − logπ_ref)``: both falling
    while the margin grows is DPO lowering the likelihood of everything)."""
    r_a = beta * (logp_a.astype(jnp.float32) - ref_logp_a.astype(jnp.float32))
    r_b = beta * (logp_b.astype(jnp.float32) - ref_logp_b.astype(jnp.float32))
    z = r_a - r_b
    p = p.astype(jnp.float32)
    per_pair = -(p * jax.nn.log_sigmoid(z) + (1.0 - p) * jax.nn.log_sigmoid(-z))
    w = jnp.ones_like(z) if weight is None else weight.astype(jnp.float32)
    loss = jnp.sum(w * per_pair) / jnp.maximum(jnp.sum(w), 1e-8)
    real = (w > 0).astype(jnp.float32)
    decided = real * (p != 0.5)
    sign = jnp.sign(p - 0.5)
    agree = jnp.where(z == 0, 0.5, (jnp.sign(z) == sign).astype(jnp.float32))
    n_decided = jnp.maximum(jnp.sum(decided), 1.0)
    n_real = jnp.maximum(jnp.sum(real), 1.0)
    return loss, {
        "accuracy": jnp.sum(decided * agree) / n_decided,
        "margin": jnp.sum(decided * z * sign) / n_decided,
        "reward_a": jnp.sum(real * r_a) / n_real,
        "reward_b": jnp.sum(real * r_b) / n_real,
    }
