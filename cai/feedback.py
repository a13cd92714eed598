"""AI feedback: a feedback model's multiple-choice answer turned into a soft preference label.

The paper's RL stage (arXiv 2212.08073, Sec. 4.1) asks a *feedback model* which of two replies
to a conversation is better under one principle of the constitution, as a multiple-choice
question with options ``(A)`` and ``(B)``; the probabilities it puts on the two options,
normalised, are the preference model's soft targets. For a comparison with question ``q``:

* **label** (``option_prob``). With ``ℓ_A = Σ_t log p(t | prompt)`` over the tokens of the
  continuation ``" (A)"`` and ``ℓ_B`` likewise,

      p_A = exp ℓ_A / (exp ℓ_A + exp ℓ_B) = σ(ℓ_A − ℓ_B),

  the softmax restricted to the two options: whatever mass the model puts elsewhere drops out.
* **principles** (``principles_per_pair`` = K). The paper draws *one* principle per comparison
  at random: the ensemble is over the dataset. With K > 1 (beyond the paper) K distinct
  principles are drawn per pair and their labels averaged, ``p = (1/K) Σ_k p_A^(k)``, which
  trades K scoring passes for less label noise per pair.
* **chain of thought** (``cot``). The prompt ends with ``"Let's think step by step:"``; the model
  writes its reasoning, then ``"So the answer is:"`` and the options are scored after that.
  Such probabilities sit near 0 or 1 and are badly calibrated, so they are clamped:
  ``p = min(max(p_A, lo), hi)`` with ``[lo, hi] = [0.4, 0.6]`` in the paper.
* **position debiasing** (``debias``, beyond the paper). Models favour one position. Asking
  again with the replies swapped gives ``p'_A`` (the probability of the *second* option in the
  swapped prompt), and ``p = (p_A + p'_A) / 2`` cancels any bias that only depends on the
  position: if the model adds ``δ`` to whichever reply comes first, ``p_A = x + δ`` and
  ``p'_A = x − δ``. The bias is reported as the mean probability given to the first-listed
  option, before and after (``position_bias``): for two replies sampled from the same model
  the order is arbitrary, so it should be 0.5.

Everything here is text in and numbers out: the feedback model may use another tokenizer and
chat format than the policy that wrote the replies (``FeedbackModel`` wraps one model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from scipy import special

from cai import constitution, prompts
from cai.errors import ConfigError
from cai.tokenizer import render_chat

Messages = Sequence[Sequence[str]]  # (role, content) pairs


@dataclasses.dataclass(frozen=True)
class FeedbackConfig:
    """How a comparison is asked and turned into a label (``config.feedback.labels``)."""

    principles_per_pair: int = 1  # K: 1 is the paper (one random principle per comparison)
    cot: bool = False  # chain of thought before the answer, then clamp to [lo, hi]
    lo: float = 0.4
    hi: float = 0.6
    debias: bool = False  # ask in both orders and average
    style: str = "text"  # text: a plain-text prompt (pretrained LMs); chat: a user turn
    cot_tokens: int = 48  # reasoning length

    def __post_init__(self) -> None:
        if self.principles_per_pair < 1:
            raise ConfigError(
                f"feedback.principles_per_pair={self.principles_per_pair}: must be at least 1"
            )
        if not 0.0 <= self.lo <= self.hi <= 1.0:
            raise ConfigError(
                f"feedback clamp [lo, hi] = [{self.lo}, {self.hi}]: need 0 <= lo <= hi <= 1"
            )
        if self.style not in ("text", "chat"):
            raise ConfigError(f"feedback.style={self.style!r}: expected text or chat")
        if self.cot_tokens < 1:
            raise ConfigError("feedback.cot_tokens must be positive")


# ----------------------------------------------------------------------------- label arithmetic


def option_prob(logp_a: np.ndarray | float, logp_b: np.ndarray | float) -> np.ndarray:
    """p_A = σ(ℓ_A − ℓ_B): the two options' probabilities renormalised to sum to one."""
    return special.expit(np.asarray(logp_a, np.float64) - np.asarray(logp_b, np.float64))


def clamp(p: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    """Chain-of-thought labels are near 0/1 and overconfident: p ↦ min(max(p, lo), hi)."""
    return np.clip(np.asarray(p, np.float64), lo, hi)


def debiased(p_first: np.ndarray | float, p_swapped_second: np.ndarray | float) -> np.ndarray:
    """(p_A asked A-first + p_A asked B-first) / 2; the second is the swapped prompt's
    probability of its *second* option, which is A there."""
    return (np.asarray(p_first, np.float64) + np.asarray(p_swapped_second, np.float64)) / 2.0


def combine(per_principle: np.ndarray) -> np.ndarray:
    """[n, K] labels under K principles -> [n]: their mean (K = 1: the label itself)."""
    return np.asarray(per_principle, np.float64).mean(axis=-1)


def position_bias(p_first_listed: Sequence[float]) -> float:
    """Mean probability given to whichever option is listed first (0.5: no bias)."""
    return float(np.mean(p_first_listed)) if len(p_first_listed) else float("nan")


def draw_principles(rng: np.random.Generator, n_principles: int, n: int, k: int) -> np.ndarray:
    """[n, k] principle indices, distinct within a row when k <= n_principles."""
    if k <= n_principles:
        return np.stack([rng.choice(n_principles, size=k, replace=False) for _ in range(n)])
    return rng.integers(n_principles, size=(n, k))


# ----------------------------------------------------------------------------- prompts


def few_shot(c: constitution.Constitution, cot: bool) -> str:
    """The constitution's worked comparisons, each answered (with its reasoning under CoT)."""
    out = []
    for ex in c.comparison_examples:
        convo = prompts.hh_transcript(ex.conversation)
        text = prompts.comparison_prompt(ex.question, convo, ex.a, ex.b, cot=cot)
        if cot:
            text += prompts.comparison_answer(ex.reasoning or f"Reply ({ex.answer}) is better.")
        out.append(f"{text} ({ex.answer})\n\n")
    return "".join(out)


def question_text(
    c: constitution.Constitution, question: str, messages: Messages, a: str, b: str, cot: bool
) -> str:
    """Few-shot examples, then the question about two replies to ``messages`` (a conversation
    ending with the user turn both replies answer)."""
    convo = prompts.hh_transcript(messages)
    return few_shot(c, cot) + prompts.comparison_prompt(question, convo, a, b, cot=cot)


# ----------------------------------------------------------------------------- the model side


class Scorer(Protocol):
    """What ``FeedbackModel`` needs of a model (``cai.stage_lib.TextSampler`` or a test stub)."""

    loaded: Any

    def complete(self, prompts: Sequence[list[int]], cfg: Any, seed: int = 0,
                 transcript: bool = True, desc: str | None = None) -> list[str]: ...  # fmt: skip

    def score_choices(
        self, prompts: Sequence[list[int]], choices: Sequence[list[int]]
    ) -> np.ndarray: ...


class FeedbackModel:
    """One feedback model behind text: ``labels`` answers comparison texts with p(first option).

    ``style`` ``text`` feeds the question as plain text (a pretrained LM continues it);
    ``chat`` puts it in a user turn and opens the assistant's turn with the answer's lead-in,
    so an instruct model answers in its own format."""

    def __init__(self, scorer: Scorer, style: str = "text"):
        self.scorer, self.style = scorer, style
        self.tok = scorer.loaded.tok
        self.options = [self.tok.encode(o) for o in prompts.OPTIONS]
        # Answers by prompt text: labelling forms that ask the same question (the first of K
        # principles, the stored order of a debiased pair) share one scoring pass. Greedy
        # reasoning is deterministic, so it is shared the same way.
        self._p: dict[str, float] = {}
        self._reasons: dict[str, str] = {}

    def ids(self, text: str) -> list[int]:
        if self.style == "text":
            return prompts.text_ids(self.tok, text)
        # chat: the question is the user turn; its final lead-in line opens the reply.
        body, _, lead = text.rpartition("\n")
        msgs = [{"role": "user", "content": body}]
        return render_chat(self.tok, msgs, add_generation_prompt=True)[0] + self.tok.encode(lead)

    def option_logprobs(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ℓ_A, ℓ_B) for each prompt text: the summed log-probs of ``" (A)"`` and ``" (B)"``."""
        ids = [self.ids(t) for t in texts]
        both = np.asarray(self.scorer.score_choices(ids, self.options), np.float64)
        return both[:, 0], both[:, 1]  # one prompt pass for both options

    def p_first(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised probability of option (A) for each prompt text."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._p))
        if todo:
            la, lb = self.option_logprobs(todo)
            self._p.update(zip(todo, option_prob(la, lb).tolist()))
        return np.array([self._p[t] for t in texts], np.float64)

    def reason(self, texts: Sequence[str], sampling: Any, seed: int) -> list[str]:
        """Chain-of-thought continuations of prompts ending with the CoT opener, cut at the
        first blank line (remembered by text only when greedy)."""
        greedy = getattr(sampling, "temperature", 0.0) == 0.0
        todo = [t for t in dict.fromkeys(texts) if not (greedy and t in self._reasons)]
        if todo:
            new = self.scorer.complete([self.ids(t) for t in todo], sampling, seed, transcript=True)
            fresh = dict(zip(todo, new))
            if greedy:
                self._reasons.update(fresh)
        else:
            fresh = {}
        return [fresh[t] if t in fresh else self._reasons[t] for t in texts]

    def p_first_cot(
        self, texts: Sequence[str], sampling: Any, seed: int
    ) -> tuple[np.ndarray, list[str]]:
        """(unclamped p(A) after reasoning, the reasoning) for CoT prompt texts."""
        reasons = self.reason(texts, sampling, seed)
        answered = [t + prompts.comparison_answer(r) for t, r in zip(texts, reasons)]
        return self.p_first(answered), reasons


def label_pairs(
    fm: FeedbackModel,
    c: constitution.Constitution,
    items: Sequence[tuple[Messages, str, str]],
    picks: np.ndarray,
    cfg: FeedbackConfig,
    sampling: Any = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Labels for (messages, a, b) comparisons under principles ``picks`` [n, K]:
    per pair ``p_a`` (the label after K-averaging, debiasing and, under CoT, clamping),
    ``p_first`` [K] (p(A) asked in the stored order, unclamped) and, when debiasing,
    ``p_swapped`` [K] (p(A) asked with B listed first)."""
    n, k = picks.shape
    qs = [c.rl_principles[picks[i, j]] for i in range(n) for j in range(k)]
    rows = [items[i] for i in range(n) for _ in range(k)]
    texts = [question_text(c, q, m, a, b, cfg.cot) for q, (m, a, b) in zip(qs, rows)]
    reasons: list[str] = []
    if cfg.cot:
        first, reasons = fm.p_first_cot(texts, sampling, seed)
    else:
        first = fm.p_first(texts)
    first = first.reshape(n, k)
    swapped = None
    per = first
    if cfg.debias:
        texts_ba = [question_text(c, q, m, b, a, cfg.cot) for q, (m, a, b) in zip(qs, rows)]
        if cfg.cot:
            p_b_first, _ = fm.p_first_cot(texts_ba, sampling, seed + 1)
        else:
            p_b_first = fm.p_first(texts_ba)
        swapped = 1.0 - p_b_first.reshape(n, k)
        per = debiased(first, swapped)
    if cfg.cot:
        per = clamp(per, cfg.lo, cfg.hi)
    label = combine(per)
    out = []
    for i in range(n):
        rec: dict[str, Any] = {
            "p_a": float(label[i]),
            "principles": [int(x) for x in picks[i]],
            "p_first": [float(x) for x in first[i]],
        }
        if swapped is not None:
            rec["p_swapped"] = [float(x) for x in swapped[i]]
        if reasons:
            rec["reasoning"] = reasons[i * k : (i + 1) * k]
        out.append(rec)
    return out
