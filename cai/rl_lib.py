"""Rollouts for the RL stages: fixed-shape generation, scoring under the policy, the reference
and the value model, and the update losses, each compiled once.

A rollout batch is ``B`` prompts left-padded to ``P`` tokens and their responses right-padded to
``N`` (the generation length): ``tokens`` [B, P + N] with ``mask`` True on real tokens. A
response token ``t`` sits at column ``P + t`` and is predicted by the hidden state at column
``P + t − 1``; so every per-token quantity PPO needs (log-probs, values) is read from columns
``P − 1 .. P + N − 2`` of one forward pass over the whole sequence, which is what the KV-cached
sampler computed step by step (``tests/test_sampling.py`` holds them equal).

Log-probs are taken at the sampling temperature ``T``: ``log softmax(logits / T)``. The policy
that generated the rollout is the tempered one, so PPO's ratio and the KL to the reference are
between tempered distributions; scoring old and new at ``T = 1`` while sampling at ``T ≠ 1``
would make the KL estimate biased (negative, typically) and the ratio meaningless.

Every function here has static shapes, so ``compile_*`` lowers it once ahead of time and a run
can never recompile it: an input of another shape is an error, not a silent second compile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from cai import ppo, sharding
from cai.errors import ConfigError
from cai.model import Transformer
from cai.sampling import SamplingConfig, generate
from cai.tokenizer import Tokenizer, render_chat
from cai.train_lib import log_memory


def response_view(
    params: Any, tokens: jax.Array, mask: jax.Array, model: Transformer, n_new: int
) -> tuple[jax.Array, jax.Array | None]:
    """(logits [B, N, V] predicting each response token, values [B, N] or None): one forward
    pass over prompt + response; only the ``N`` predicting columns are projected to the
    vocabulary (the prompt's columns would cost a [B, P, V] matmul for nothing)."""
    P = tokens.shape[1] - n_new
    out = model.apply({"params": params}, tokens, mask, compute_logits=False)
    h = out.hidden[:, P - 1 : P - 1 + n_new]
    logits = model.apply({"params": params}, h, method=Transformer.project)
    values = None if out.values is None else out.values[:, P - 1 : P - 1 + n_new]
    return logits, values


def score_rollout(
    policy_params: Any,
    ref_params: Any,
    value_params: Any,
    tokens: jax.Array,
    mask: jax.Array,
    *,
    policy: Transformer,
    reference: Transformer,
    value_model: Transformer | None,
    n_new: int,
    temperature: float,
) -> dict[str, jax.Array]:
    """Per response token [B, N]: ``logp`` (the policy that sampled, at T), ``logp_ref`` (the
    reference, at T), ``values`` (the value model's, or the policy's own value head when
    ``value_model`` is None); and the policy's mean ``entropy`` per row [B]. ``reference`` is
    the policy's architecture without the value head the policy may carry."""
    resp = tokens[:, -n_new:]
    rmask = mask[:, -n_new:].astype(jnp.float32)
    logits, head = response_view(policy_params, tokens, mask, policy, n_new)
    ref_logits, _ = response_view(ref_params, tokens, mask, reference, n_new)
    if value_model is None:  # the policy's head, or none (a critic-free estimator)
        values = head if head is not None else jnp.zeros(resp.shape, jnp.float32)
    else:
        _, values = response_view(value_params, tokens, mask, value_model, n_new)
    logp = ppo.token_logprobs(logits, resp, temperature)
    ent = ppo.token_entropy(logits, temperature)  # [B, N]
    return {
        "logp": logp * rmask,
        "logp_ref": ppo.token_logprobs(ref_logits, resp, temperature) * rmask,
        "values": values.astype(jnp.float32) * rmask,
        "entropy": jnp.sum(ent * rmask, -1) / jnp.maximum(jnp.sum(rmask, -1), 1.0),
    }


def advantages(
    logp: jax.Array,
    logp_ref: jax.Array,
    values: jax.Array,
    resp_mask: jax.Array,
    score: jax.Array,
    eos_missing: jax.Array,
    beta: jax.Array,
    *,
    reward_mean: float,
    reward_std: float,
    missing_eos_penalty: float,
    gamma: float,
    lam: float,
    whiten: bool,
) -> dict[str, jax.Array]:
    """The KL-shaped reward, GAE and (whitened) advantages of one rollout batch.

    With the PM's score normalised by its stored held-out statistics, ``s' = (s − μ) / σ``
    (``reward_std`` 1 leaves it only centred), and ``kl_t = log π(y_t) − log π_ref(y_t)``::

        r_t = −β kl_t + [t = last] (s' − penalty · eos_missing)
        A, R = GAE(r, V; γ, λ)          # ppo.gae
        A ← whiten(A)                   # over the batch's real tokens, when ``whiten``
    """
    m, rewards, kls = _shaped(logp, logp_ref, resp_mask, score, eos_missing, beta, reward_mean,
                              reward_std, missing_eos_penalty)  # fmt: skip
    adv, ret = ppo.gae(rewards, values, m, gamma, lam)
    if whiten:
        adv = ppo.whiten(adv, m)
    return {"advantages": adv, "returns": ret, **kls, "reward_seq": jnp.sum(rewards, -1)}


def _shaped(
    logp: jax.Array,
    logp_ref: jax.Array,
    resp_mask: jax.Array,
    score: jax.Array,
    eos_missing: jax.Array,
    beta: jax.Array,
    reward_mean: float,
    reward_std: float,
    missing_eos_penalty: float,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(mask, per-token KL-shaped rewards, {kl_seq, kl3_seq}: k1 and k3 summed over each
    response [B]) for both estimators."""
    m = resp_mask.astype(jnp.float32)
    kl = ppo.kl_k1(logp, logp_ref) * m
    normed = (score - reward_mean) / reward_std
    rewards = ppo.shaped_rewards(normed, 0.0, kl, m, beta, eos_missing, missing_eos_penalty)
    k3 = ppo.kl_k3(logp, logp_ref) * m
    return m, rewards, {"kl_seq": jnp.sum(kl, -1), "kl3_seq": jnp.sum(k3, -1)}


def rloo_advantages(
    logp: jax.Array,
    logp_ref: jax.Array,
    resp_mask: jax.Array,
    score: jax.Array,
    eos_missing: jax.Array,
    beta: jax.Array,
    *,
    reward_mean: float,
    reward_std: float,
    missing_eos_penalty: float,
    k: int,
    whiten: bool,
) -> dict[str, jax.Array]:
    """The critic-free counterpart of ``advantages`` (RLOO, arXiv 2402.14740): rows come in
    groups of ``k`` samples of one prompt, each sample's sequence reward is its normalised PM
    score minus β times its summed KL (and the missing-EOS penalty), and its advantage is that
    reward minus the mean of its ``k − 1`` siblings', the same for each of its tokens::

        R_i = s'_i − penalty · eos_missing_i − β Σ_t kl_i,t
        A_i = R_i − (1 / (k − 1)) Σ_{j ≠ i in its group} R_j      (ppo.rloo_advantages)
        A_i ← A_i / std(A)                                       (when ``whiten``)

    Whitening only scales here: a group's advantages already sum to zero. ``returns`` are
    zeros (there is no value model to fit)."""
    m, rewards, kls = _shaped(logp, logp_ref, resp_mask, score, eos_missing, beta, reward_mean,
                              reward_std, missing_eos_penalty)  # fmt: skip
    seq = jnp.sum(rewards, -1)
    adv = ppo.rloo_advantages(seq, k)
    if whiten:
        adv = adv / (jnp.std(adv) + 1e-8)
    return {"advantages": adv[:, None] * m, "returns": jnp.zeros_like(m), **kls,
            "reward_seq": seq}  # fmt: skip


# ----------------------------------------------------------------------------- losses


def ppo_policy_loss(
    params: Any,
    batch: dict[str, jax.Array],
    model: Transformer,
    *,
    n_new: int,
    temperature: float,
    clip_eps: float,
    value_clip: float,
    vf_coef: float,
    value_head: bool,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO's clipped surrogate (``ppo.policy_loss``) on a minibatch of rollout rows, plus
    ``vf_coef ×`` the clipped value loss when the value head sits on the policy
    (``value_head``). Usable as ``train_lib`` ``loss_fn``; ``batch``: ``tokens`` / ``mask`` [b,
    P + N], ``logp_old`` / ``advantages`` / ``values_old`` / ``returns`` [b, N]."""
    tokens, mask = batch["tokens"], batch["mask"]
    rmask = mask[:, -n_new:].astype(jnp.float32)
    logits, values = response_view(params, tokens, mask, model, n_new)
    logp = ppo.token_logprobs(logits, tokens[:, -n_new:], temperature)
    loss, metrics = ppo.policy_loss(logp, batch["logp_old"], batch["advantages"], rmask, clip_eps)
    metrics = {**metrics, "policy_loss": loss, "entropy": ppo.entropy(logits, temperature, rmask)}
    if value_head:
        vloss, vm = ppo.value_loss(values, batch["values_old"], batch["returns"], rmask, value_clip)
        loss = loss + vf_coef * vloss
        metrics = {**metrics, **vm, "value_loss": vloss}
    return loss, metrics


def ppo_value_loss(
    params: Any, batch: dict[str, jax.Array], model: Transformer, *, n_new: int, value_clip: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The separate value model's clipped value loss (``ppo.value_loss``) on a minibatch."""
    tokens, mask = batch["tokens"], batch["mask"]
    rmask = mask[:, -n_new:].astype(jnp.float32)
    _, values = response_view(params, tokens, mask, model, n_new)
    loss, metrics = ppo.value_loss(values, batch["values_old"], batch["returns"], rmask, value_clip)
    return loss, {**metrics, "value_loss": loss}


# ----------------------------------------------------------------------------- compiling


def _aot(fn: Callable[..., Any], mesh: Mesh, args: Sequence[Any], in_shardings: Any, what: str):
    """``fn`` jitted and compiled for ``args`` (arrays or ShapeDtypeStructs); an argument whose
    ``in_shardings`` entry is None keeps the shardings its example arrays have (parameters)."""

    def run(*a: Any) -> Any:
        with sharding.activation_context(mesh):
            return fn(*a)

    shardings = tuple(
        jax.tree.map(lambda x: x.sharding, a) if s is None else s
        for a, s in zip(args, in_shardings)
    )
    abstract = [jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), a) for a in args]
    compiled = jax.jit(run, in_shardings=shardings).lower(*abstract).compile()
    return compiled, log_memory(compiled, what)


def compile_generate(
    model: Transformer,
    params: Any,
    mesh: Mesh,
    batch: int,
    prompt_len: int,
    cfg: SamplingConfig,
    eos_id: int,
    pad_id: int,
) -> tuple[Any, dict[str, int]]:
    """``(params, prompts [batch, P], prompt_mask, key) -> SampleOutput``, compiled once."""
    fn = functools.partial(generate, model=model, cfg=cfg, eos_id=eos_id, pad_id=pad_id)
    b = sharding.batch_sharding(mesh, 2)
    args = (
        params,
        jax.ShapeDtypeStruct((batch, prompt_len), jnp.int32),
        jax.ShapeDtypeStruct((batch, prompt_len), jnp.bool_),
        jax.random.key(0),
    )
    return _aot(fn, mesh, args, (None, b, b, sharding.replicated(mesh)), "rollout generate")


def compile_score(
    policy: Transformer,
    reference: Transformer,
    value_model: Transformer | None,
    params: tuple[Any, Any, Any],
    mesh: Mesh,
    batch: int,
    seq_len: int,
    n_new: int,
    temperature: float,
) -> tuple[Any, dict[str, int]]:
    """``(policy, reference, value params, tokens, mask) -> score_rollout``, compiled once."""
    fn = functools.partial(
        score_rollout, policy=policy, reference=reference, value_model=value_model, n_new=n_new,
        temperature=temperature,
    )  # fmt: skip
    b = sharding.batch_sharding(mesh, 2)
    args = (
        *params,
        jax.ShapeDtypeStruct((batch, seq_len), jnp.int32),
        jax.ShapeDtypeStruct((batch, seq_len), jnp.bool_),
    )
    return _aot(fn, mesh, args, (None, None, None, b, b), "rollout scoring")


# ----------------------------------------------------------------------------- host side


def encode_prompts(
    tok: Tokenizer, conversations: Sequence[Sequence[Sequence[str]]], prompt_len: int, where: str
) -> list[list[int]]:
    """Each conversation rendered for the assistant's next turn; one longer than
    ``prompt_len`` tokens is a ConfigError naming ``where`` (cutting a prompt would change the
    request)."""
    out = []
    for conv in conversations:
        ids, _ = render_chat(tok, [{"role": r, "content": c} for r, c in conv], True)
        if len(ids) > prompt_len:
            raise ConfigError(
                f"{where}={prompt_len}: a prompt has {len(ids)} tokens ({conv[-1][1][:60]!r}); "
                "raise it"
            )
        out.append(ids)
    return out


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, ...]:
    """[n, length] int32 ids and bool mask, each row right-aligned."""
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, length - len(r) :] = r
            mask[i, length - len(r) :] = True
    return ids, mask


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the texts' words (Li et al. 2016): falls as a
    policy collapses onto a few replies."""
    grams, total = set(), 0
    for t in texts:
        w = t.split()
        g = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
        grams.update(g)
        total += len(g)
    return len(grams) / total if total else 0.0
