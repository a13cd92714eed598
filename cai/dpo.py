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

**The reply's log-prob.** A comparison is rendered as the preference model renders it
(``preference_model.encode``: the conversation with the reply as its final assistant turn, cut
from the left); ``log π(y | x)`` sums over the tokens of the reply that ``render_chat`` marks
as the assistant's in that turn (its text and the marker closing the turn, what SL-CAI trains
on and what the policy samples before it stops), not the EOS the PM's rendering may add after.

**The reference's log-probs are computed once per pair, before training** (``PairLogprobs``),
not in the train step: the reference never changes, so ``log π_ref`` of a pair is a constant of
the data. That costs one forward pass per pair instead of one per pair per epoch, keeps the
train step the plain ``train_lib.train_step`` over the policy alone (no second parameter tree
as an argument, its non-finite-step guard and ``fit``'s resume as they are), and hands the
constants to the step as batch fields (``ref_logp``).

This module is the library: the loss, the batches and the scorer; stage ``dpo``
(``cai/stages/dpo.py``) trains a policy with them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from cai import ppo, sharding
from cai import preference_model as pm
from cai.errors import ConfigError
from cai.model import Transformer
from cai.tokenizer import Tokenizer, render_chat


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


def batch_loss(
    params: Any, batch: Mapping[str, jax.Array], model: Transformer, *, beta: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``dpo_loss`` of a ``PairBatches`` batch, usable as ``train_lib.fit(loss_fn=...)`` (bind
    ``beta`` with ``functools.partial``). ``batch``: ``tokens`` / ``mask`` / ``reply_mask`` [2B,
    T] (rows ``0..B-1`` the A replies, ``B..2B-1`` the B replies of the same pairs),
    ``ref_logp`` [2B] (the reference's ``sequence_logprobs`` of the same rows), ``p`` [B] =
    P(A preferred), ``weight`` [B] (task weight; 0 for padding)."""
    out = model.apply({"params": params}, batch["tokens"], batch["mask"])
    logp = sequence_logprobs(out.logits, batch["tokens"], batch["reply_mask"])  # [2B]
    ref = batch["ref_logp"]
    n = batch["p"].shape[0]
    return dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], batch["p"], beta, batch["weight"])


# ----------------------------------------------------------------------------- batches


def reply_span(tok: Tokenizer, messages: pm.Messages, reply: str, row_len: int) -> tuple[int, int]:
    """``[start, end)``: where the reply's scored tokens sit in its row, the ``row_len`` ids
    ``preference_model.encode`` gives (cut from the left, so the reply's end is always kept;
    a reply cut itself starts at column 1, since nothing predicts column 0)."""
    chat = [{"role": r, "content": c} for r, c in messages]
    prompt, _ = render_chat(tok, chat, add_generation_prompt=True)
    ids, trained = render_chat(tok, [*chat, {"role": "assistant", "content": reply}])
    if ids[: len(prompt)] != prompt:
        raise ConfigError(
            f"chat format {tok.chat_format!r}: the rendered reply does not extend the rendered "
            "prompt, so its tokens cannot be told apart"
        )
    n = sum(trained[len(prompt) :])  # the final turn's text and closing marker
    full = len(pm.encode(tok, messages, reply, sys.maxsize))
    end = row_len - (full - len(prompt) - n)  # after it: what the format and encode append
    return max(end - n, 1), end


class PairBatches:
    """Comparisons as DPO batches, ``batch(step)`` a pure function of ``step``: the preference
    model's batches (``preference_model.PairBatches``: the same rows, order, epochs and task
    weights) with each row's ``reply_mask`` and, once ``ref_logp`` [n, 2] (the reference's
    log-prob of each pair's A and B reply) is set, its ``ref_logp`` [2B]."""

    def __init__(
        self,
        comparisons: Sequence[pm.Comparison],
        tok: Tokenizer,
        seq_len: int,
        batch_size: int,
        seed: int,
        weights: Mapping[str, float],
    ):
        self.pairs = pm.PairBatches(comparisons, tok, seq_len, batch_size, seed, weights)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.spans = np.asarray(
            [
                [reply_span(tok, c.messages, r, len(row)) for r, row in ((c.a, a), (c.b, b))]
                for c, a, b in zip(comparisons, self.pairs.a, self.pairs.b)
            ],
            np.int32,
        ).reshape(len(comparisons), 2, 2)  # [n, side, (start, end)]
        self.ref_logp: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def truncated(self) -> int:
        return self.pairs.truncated

    def take(self, idx: Sequence[int]) -> dict[str, np.ndarray]:
        """The rows of the comparisons ``idx``: ``tokens``, ``mask``, ``reply_mask``, ``p``,
        ``weight``."""
        out = self.pairs.take(idx)
        spans = np.concatenate([self.spans[idx, 0], self.spans[idx, 1]])  # [2B, 2]
        col = np.arange(self.seq_len)[None]
        out["reply_mask"] = (col >= spans[:, :1]) & (col < spans[:, 1:])
        return out

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if self.ref_logp is None:
            raise ValueError("PairBatches.batch: set ref_logp (the reference's log-probs) first")
        idx = self.pairs.indices(step)
        out = self.take(idx)
        out["ref_logp"] = np.concatenate([self.ref_logp[idx, 0], self.ref_logp[idx, 1]])
        return out


class PairLogprobs:
    """``sequence_logprobs`` of every pair's replies under one model's params: one jitted,
    sharded forward pass over ``B`` pairs (``2B`` rows of ``seq_len``, the train step's shape)
    at a time, so it compiles once for the reference and the trained policy alike."""

    def __init__(self, model: Transformer, mesh: Mesh):
        self.mesh = mesh

        def run(params: Any, tokens: jax.Array, mask: jax.Array, reply: jax.Array) -> jax.Array:
            with sharding.activation_context(mesh):
                out = model.apply({"params": params}, tokens, mask)
                return sequence_logprobs(out.logits, tokens, reply)

        b = sharding.batch_sharding(mesh, 2)
        self._fn = jax.jit(run, in_shardings=(None, b, b, b))

    def __call__(self, params: Any, data: PairBatches) -> np.ndarray:
        """[n, 2]: log π(A), log π(B) of each of ``data``'s pairs (float32)."""
        n, size = len(data), data.batch_size
        out = np.zeros((n, 2), np.float32)
        for start in range(0, n, size):
            idx = np.arange(start, start + size) % n  # the last chunk wraps round: one shape
            rows = data.take(idx)
            args = sharding.put_batch(
                {k: rows[k] for k in ("tokens", "mask", "reply_mask")}, self.mesh
            )
            logp = jax.device_get(self._fn(params, *args.values()))
            k = min(size, n - start)
            out[start : start + k] = np.stack([logp[:size], logp[size:]], 1)[:k]
        return out
