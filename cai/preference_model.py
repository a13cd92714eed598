"""The preference model (PM) of the RL half of the paper: a language model with a scalar head that
scores a conversation, trained on pairs of replies with soft labels.

**Score.** The PM is the policy's architecture with a linear head on the final hidden state,
``r(x) = w · h_T(x) + b`` (``ModelConfig.scalar_head``: ``value_w`` [D], ``value_b`` []).
The conversation, with the scored reply as its final assistant turn, is rendered in the
model's chat format and one end-of-sequence token is put at the end; the score is read at
that token, the last real token of the row (``encode``).

**Loss.** For a comparison of replies A and B to the same conversation with soft label
``p = P(A is better)`` (from a feedback model's normalised option probabilities, or a human
label), with ``d = r_A − r_B``:

    ℓ(d, p) = −[p · log σ(d) + (1 − p) · log σ(−d)]

the cross-entropy between ``p`` and the Bradley-Terry probability ``σ(d)``; ``p ∈ {0, 1}`` is
the usual hard-label loss ``−log σ(r_chosen − r_rejected)``. The paper found soft labels much
better than hard ones. A batch's loss is the weighted mean ``Σ_i w_i ℓ_i / Σ_i w_i`` with
``w_i`` the weight of the pair's task: HH-RLHF (arXiv 2204.05862) found up-weighting the
harmlessness comparisons (2-3x) against the helpfulness ones helped when both are mixed, which
is how the paper trains the RL-CAI PM (human helpfulness labels + AI harmlessness labels).

Only the reward difference is trained, so a PM's scores have an arbitrary offset: the stage
records the mean and standard deviation of its rewards on held-out comparisons
(``reward_stats.json``) so RL can centre and scale them.

This module is the library: the loss, initialising a PM from a language model, the comparison
records, their encoding and batching, and ``RewardModel`` for scoring text. Stage
``preference_model`` (``cai/stages/preference_model.py``) trains one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from cai import sharding
from cai.errors import ConfigError
from cai.model import ModelConfig, Transformer, last_token
from cai.sampling import bucket, pad_right
from cai.tokenizer import Tokenizer, render_chat
from cai.train_lib import abstract_params

if TYPE_CHECKING:
    from cai.stage_lib import Loaded

TASKS = ("harmlessness", "helpfulness")

Messages = Sequence[Sequence[str]]  # (role, content) pairs


# ----------------------------------------------------------------------------- the loss


def pairwise_loss(
    r_a: jax.Array, r_b: jax.Array, p: jax.Array, weight: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(weighted mean loss, per-pair loss [B]) of ``ℓ = −[p log σ(r_a − r_b) + (1 − p) log
    σ(r_b − r_a)]``, with ``log σ`` computed stably (``jax.nn.log_sigmoid``). The mean is
    ``Σ w ℓ / Σ w``; pairs of weight 0 (padding) count for nothing."""
    d = (r_a - r_b).astype(jnp.float32)
    p = p.astype(jnp.float32)
    per_pair = -(p * jax.nn.log_sigmoid(d) + (1.0 - p) * jax.nn.log_sigmoid(-d))
    w = weight.astype(jnp.float32)
    return jnp.sum(w * per_pair) / jnp.maximum(jnp.sum(w), 1e-8), per_pair


def rewards_of(params: Any, tokens: jax.Array, mask: jax.Array, model: Transformer) -> jax.Array:
    """The score of each row [N]: the scalar head at the row's last real token."""
    out = model.apply({"params": params}, tokens, mask, compute_logits=False)
    return last_token(out.values, mask)


def pm_loss(
    params: Any, batch: Mapping[str, jax.Array], model: Transformer
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The soft-label pairwise loss, usable as ``train_lib.fit(loss_fn=...)``.

    ``batch``: ``tokens`` / ``mask`` [2B, T] (rows ``0..B-1`` the A replies, ``B..2B-1`` the B
    replies of the same pairs, right-padded, each ending in the end token), ``p`` [B] =
    P(A better), ``weight`` [B] (task weight; 0 for padding). With ``d = r_A − r_B``::

        loss = Σ_i w_i ℓ_i / Σ_i w_i,   ℓ_i = −[p_i log σ(d_i) + (1 − p_i) log σ(−d_i)]

    Metrics, over pairs of positive weight: ``accuracy`` (sign of ``d`` agrees with
    ``p − 1/2``, on pairs with ``p ≠ 1/2``; a tie counts half), ``margin`` (mean of
    ``d · sign(p − 1/2)`` on those pairs), ``reward_mean`` / ``reward_std`` (both sides)."""
    r = rewards_of(params, batch["tokens"], batch["mask"], model)  # [2B]
    p, w = batch["p"].astype(jnp.float32), batch["weight"].astype(jnp.float32)
    n = p.shape[0]
    r_a, r_b = r[:n], r[n:]
    loss, _ = pairwise_loss(r_a, r_b, p, w)
    d = r_a - r_b
    real = (w > 0).astype(jnp.float32)
    decided = real * (p != 0.5)
    sign = jnp.sign(p - 0.5)
    agree = jnp.where(d == 0, 0.5, (jnp.sign(d) == sign).astype(jnp.float32))
    n_decided = jnp.maximum(jnp.sum(decided), 1.0)
    rows = jnp.concatenate([real, real])
    n_rows = jnp.maximum(jnp.sum(rows), 1.0)
    mean = jnp.sum(rows * r) / n_rows
    var = jnp.sum(rows * jnp.square(r - mean)) / n_rows
    return loss, {
        "accuracy": jnp.sum(decided * agree) / n_decided,
        "margin": jnp.sum(decided * d * sign) / n_decided,
        "reward_mean": mean,
        "reward_std": jnp.sqrt(var),
        "pairs": jnp.sum(real),
    }


def pairwise_accuracy(r_a: Any, r_b: Any, p_a: Any) -> dict[str, Any]:
    """How often the PM prefers the reply the label prefers, on pairs with ``p_a ≠ 0.5`` (a tie
    in reward counts half): ``{"accuracy": float or None when no pair decides, "n": pairs}``."""
    r_a, r_b, p_a = (np.asarray(x, np.float64) for x in (r_a, r_b, p_a))
    keep = p_a != 0.5
    if not keep.any():
        return {"accuracy": None, "n": 0}
    d, want = (r_a - r_b)[keep], np.sign(p_a[keep] - 0.5)
    agree = np.where(d == 0, 0.5, (np.sign(d) == want).astype(np.float64))
    return {"accuracy": float(agree.mean()), "n": int(keep.sum())}


# ----------------------------------------------------------------------------- initialising


def with_scalar_head(
    lm_cfg: ModelConfig, lm_params: Any, mesh: Mesh | None = None
) -> tuple[ModelConfig, Any]:
    """A PM from a language model: its config with ``scalar_head=True`` and its params with a
    zero head added (``value_w`` [D], ``value_b`` []), so every reward starts at 0 and the
    first gradient step sees the LM's features. The LM's params are kept as they are (with
    their shardings); the two new leaves get the model's own logical partitioning on ``mesh``
    (by default the mesh the params already live on), or plain arrays without one. A model
    that already has a scalar head is returned unchanged."""
    if lm_cfg.scalar_head:
        return lm_cfg, lm_params
    cfg = dataclasses.replace(lm_cfg, scalar_head=True)
    if mesh is None:
        leaf = next(iter(jax.tree.leaves(lm_params)), None)
        leaf_sharding = getattr(leaf, "sharding", None)
        if isinstance(leaf_sharding, NamedSharding):
            mesh = leaf_sharding.mesh
    D, dt = cfg.d_model, cfg.weight_dtype
    zeros = {"value_w": np.zeros((D,), dt), "value_b": np.zeros((), dt)}
    if mesh is None:
        head = {k: jnp.asarray(v) for k, v in zeros.items()}
    else:
        _, shardings = abstract_params(Transformer(cfg), mesh)
        head = {k: jax.device_put(v, shardings[k]) for k, v in zeros.items()}
    return cfg, {**lm_params, **head}


# ----------------------------------------------------------------------------- comparisons


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two replies ``a`` and ``b`` to the conversation ``messages`` (ending with a user turn),
    with ``p_a`` = P(a is better) and the ``task`` the label judges."""

    messages: tuple[tuple[str, str], ...]
    a: str
    b: str
    p_a: float
    task: str


def read_comparisons(
    records: Sequence[Mapping[str, Any]], where: str = "records"
) -> list[Comparison]:
    """Comparisons from JSON records ``{"messages": [[role, content], ...], "responses": [a, b],
    "p_a": float, "task": "harmlessness" | "helpfulness", ...}`` (other keys ignored). A
    record that does not fit fails naming ``where`` and its index."""
    out = []
    for i, rec in enumerate(records):
        at = f"{where} record {i}"
        missing = [k for k in ("messages", "responses", "p_a", "task") if k not in rec]
        if missing:
            raise ConfigError(f"{at}: no {missing[0]!r} key (keys: {', '.join(sorted(rec))})")
        try:
            messages = tuple((str(r), str(c)) for r, c in rec["messages"])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{at}: messages must be [role, content] pairs ({e})") from e
        if not messages or messages[-1][0] != "user":
            raise ConfigError(f"{at}: messages must end with a user turn")
        roles = {r for r, _ in messages} - {"system", "user", "assistant"}
        if roles:
            raise ConfigError(f"{at}: role {sorted(roles)[0]!r} is not system, user or assistant")
        responses = rec["responses"]
        if not isinstance(responses, (list, tuple)) or len(responses) != 2:
            raise ConfigError(f"{at}: responses must be a list of two replies")
        try:
            p_a = float(rec["p_a"])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{at}: p_a={rec['p_a']!r} is not a number") from e
        if not 0.0 <= p_a <= 1.0:  # also rejects NaN
            raise ConfigError(f"{at}: p_a={p_a} is outside [0, 1]")
        if rec["task"] not in TASKS:
            raise ConfigError(f"{at}: task={rec['task']!r}: expected one of {', '.join(TASKS)}")
        out.append(Comparison(messages, str(responses[0]), str(responses[1]), p_a, rec["task"]))
    return out


def heldout_split(
    comparisons: Mapping[str, Sequence[Comparison]], fraction: float, seed: int
) -> tuple[dict[str, list[Comparison]], dict[str, list[Comparison]]]:
    """(train, held out), each task -> comparisons in their input order. The split is by
    conversation, across tasks: a seeded ``fraction`` of the distinct conversations (at least
    one when the fraction is positive, never all) is held out with every pair that continues
    it, so no held-out prompt is ever trained on, whichever task's pair it appears in. Every
    stage that trains on comparisons splits with this, so two of them given the same sources,
    fraction and seed train on the same pairs."""
    convs = list(dict.fromkeys(c.messages for comps in comparisons.values() for c in comps))
    n = len(convs)
    k = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    held = {convs[i] for i in np.random.default_rng(seed).permutation(n)[:k]}
    train = {t: [c for c in comps if c.messages not in held] for t, comps in comparisons.items()}
    out = {t: [c for c in comps if c.messages in held] for t, comps in comparisons.items()}
    return train, out


def halves(
    comparisons: Mapping[str, Sequence[Comparison]], seed: int
) -> tuple[dict[str, list[Comparison]], dict[str, list[Comparison]]]:
    """Two disjoint halves of ``comparisons`` by conversation (as ``heldout_split``, with
    every pair of a prompt on one side): PMs trained on each see the same kind of data and no
    common prompt, so the second one's score is an independent check on a policy trained
    against the first (HH-RLHF, arXiv 2204.05862, Sec. 4.2)."""
    convs = list(dict.fromkeys(c.messages for comps in comparisons.values() for c in comps))
    order = np.random.default_rng([seed, 2]).permutation(len(convs))
    first = {convs[i] for i in order[: len(convs) // 2]}
    one = {t: [c for c in comps if c.messages in first] for t, comps in comparisons.items()}
    two = {t: [c for c in comps if c.messages not in first] for t, comps in comparisons.items()}
    return one, two


# ----------------------------------------------------------------------------- encoding


def _encode(
    tok: Tokenizer, messages: Messages, response: str, seq_len: int
) -> tuple[list[int], bool]:
    chat = [{"role": r, "content": c} for r, c in messages]
    chat.append({"role": "assistant", "content": response})
    ids, _ = render_chat(tok, chat, add_generation_prompt=False)
    if not ids or ids[-1] != tok.eos_id:
        ids.append(tok.eos_id)
    if len(ids) <= seq_len:
        return ids, False
    keep_bos = tok.add_bos and ids[0] == tok.bos_id and seq_len > 1
    tail = ids[len(ids) - (seq_len - keep_bos) :]
    return ([tok.bos_id] if keep_bos else []) + tail, True


def encode(tok: Tokenizer, messages: Messages, response: str, seq_len: int) -> list[int]:
    """Token ids of the conversation ``messages`` with ``response`` as its final assistant
    turn, ending in exactly one end token (``tok.eos_id``), where the PM reads its score.

    The text is ``render_chat(..., add_generation_prompt=False)``. In the HH format that already
    ends the last assistant turn with EOS (``"...\\n\\nAssistant: {response}" EOS``), so nothing
    is added; ChatML and Gemma end the turn with their end-of-turn marker and a newline
    (``"{response}<|im_end|>\\n"``), after which EOS is appended. Either way the last id is the
    one end token and the response's own text is never edited. A sequence longer than
    ``seq_len`` is cut from the left, keeping the reply and the end token (and the BOS a model
    that starts with one always saw first)."""
    return _encode(tok, messages, response, seq_len)[0]


class PairBatches:
    """Comparisons as PM training batches, ``batch(step)`` a pure function of ``step``.

    The comparisons are visited as one stream: epoch ``e`` is the permutation drawn from
    ``(seed, e)``, and batch ``k`` is items ``kB .. kB + B - 1`` of that stream, so every pair is
    seen once per epoch, however ``B`` divides their number, and a resumed run sees the
    batches an uninterrupted one would have. Each batch holds ``tokens`` / ``mask`` [2B,
    seq_len] (A sides then B sides), ``p`` [B] and ``weight`` [B] (``weights[task]``)."""

    def __init__(
        self,
        comparisons: Sequence[Comparison],
        tok: Tokenizer,
        seq_len: int,
        batch_size: int,
        seed: int,
        weights: Mapping[str, float],
    ):
        if not comparisons:
            raise ConfigError("no comparisons to train the preference model on")
        unknown = sorted({c.task for c in comparisons} - set(weights))
        if unknown:
            raise ConfigError(f"comparisons of task {unknown[0]!r} have no loss weight")
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.pad_id = tok.pad_id
        self.truncated = 0
        self.a: list[np.ndarray] = []  # int32 ids, unpadded: a batch pads only its own rows
        self.b: list[np.ndarray] = []
        for c in comparisons:
            for side, text in ((self.a, c.a), (self.b, c.b)):
                ids, cut = _encode(tok, c.messages, text, seq_len)
                side.append(np.asarray(ids, np.int32))
                self.truncated += cut
        self.p = np.asarray([c.p_a for c in comparisons], np.float32)
        self.weight = np.asarray([weights[c.task] for c in comparisons], np.float32)

    def __len__(self) -> int:
        return len(self.p)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.p))

    def indices(self, step: int) -> np.ndarray:
        """The comparisons of batch ``step``."""
        n = len(self.p)
        k = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, pos = k // n, k % n
        orders = {int(e): self._order(int(e)) for e in np.unique(epochs)}
        return np.asarray([orders[int(e)][i] for e, i in zip(epochs, pos)], np.int64)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        return self.take(self.indices(step))

    def take(self, idx: Sequence[int]) -> dict[str, np.ndarray]:
        """The batch of the comparisons ``idx`` (any of them, in that order)."""
        rows = [self.a[i] for i in idx] + [self.b[i] for i in idx]
        tokens = np.full((len(rows), self.seq_len), self.pad_id, np.int32)
        mask = np.zeros((len(rows), self.seq_len), bool)
        for j, row in enumerate(rows):
            tokens[j, : len(row)] = row
            mask[j, : len(row)] = True
        return {"tokens": tokens, "mask": mask, "p": self.p[idx], "weight": self.weight[idx]}


# ----------------------------------------------------------------------------- scoring text


class RewardModel:
    """A trained PM behind text: ``rewards`` scores conversations ending with the assistant turn
    being scored, ``compare`` scores two replies to the same conversations.

    Rows go through one jitted, sharded function in chunks of ``batch_size``; each chunk is
    right-padded to a power-of-two length and its row count rounded up to (data-axes size) x
    (a power of two), so a long run compiles a few shapes; with ``fixed_shape`` every chunk is
    padded to ``batch_size`` x ``seq_len``, one shape for the whole run (what RL, scoring every
    iteration, wants). Conversations longer than ``seq_len`` are cut from the left as in
    training (counted in ``truncated``)."""

    def __init__(
        self,
        loaded: Loaded,
        mesh: Mesh,
        batch_size: int = 256,
        seq_len: int = 1024,
        fixed_shape: bool = False,
    ):
        if not loaded.model_cfg.scalar_head:
            raise ConfigError(f"{loaded.path}: not a preference model (it has no scalar head)")
        sharding.check_batch(batch_size, mesh, "reward model batch_size")
        self.loaded, self.mesh, self.batch_size, self.seq_len = loaded, mesh, batch_size, seq_len
        self.fixed_shape = fixed_shape
        self.truncated = 0
        model = loaded.model

        def run(params: Any, tokens: jax.Array, mask: jax.Array) -> jax.Array:
            with sharding.activation_context(mesh):
                return rewards_of(params, tokens, mask, model)

        b = sharding.batch_sharding(mesh, 2)
        self._fn = jax.jit(run, in_shardings=(None, b, b))

    def _rows(self, n: int) -> int:
        m = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        return m * bucket(-(-n // m), minimum=1)

    def rewards(self, conversations: Sequence[Messages]) -> np.ndarray:
        """The PM's score [N] (float32) of each conversation's final assistant turn."""
        tok, ids = self.loaded.tok, []
        for i, conv in enumerate(conversations):
            if not conv or conv[-1][0] != "assistant":
                raise ConfigError(f"conversation {i}: the scored turn must be the assistant's")
            row, cut = _encode(tok, conv[:-1], conv[-1][1], self.seq_len)
            ids.append(row)
            self.truncated += cut
        out = np.zeros((len(ids),), np.float32)
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size]
            n_rows = self.batch_size if self.fixed_shape else self._rows(len(chunk))
            rows = chunk + [[tok.pad_id]] * (n_rows - len(chunk))
            length = self.seq_len if self.fixed_shape else bucket(max(map(len, rows)))
            tokens, mask = pad_right(rows, length, tok.pad_id)
            r = jax.device_get(self._fn(self.loaded.params, tokens, mask))
            out[start : start + len(chunk)] = r[: len(chunk)]
        return out

    def compare(
        self, messages_list: Sequence[Messages], a_list: Sequence[str], b_list: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(r_a, r_b): the scores of replies ``a`` and ``b`` to each conversation."""
        if not len(messages_list) == len(a_list) == len(b_list):
            raise ConfigError("compare: messages, a and b must have the same length")
        convs = [(*m, ("assistant", a)) for m, a in zip(messages_list, a_list)]
        convs += [(*m, ("assistant", b)) for m, b in zip(messages_list, b_list)]
        r = self.rewards(convs)
        n = len(a_list)
        return r[:n], r[n:]
