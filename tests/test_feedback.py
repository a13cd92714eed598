"""AI feedback's arithmetic (normalisation, clamping, K-principle averaging, debiasing) and its
prompts, on a stub feedback model whose preferences and position bias are planted."""

import math
import types

import numpy as np
import pytest

from cai import constitution, feedback, prompts
from cai.errors import ConfigError


def test_option_prob_is_the_softmax_over_the_two_options():
    # log-probs of " (A)" and " (B)" summed over their tokens: 0.3 and 0.1 of the mass.
    p = feedback.option_prob(math.log(0.3), math.log(0.1))
    assert p == pytest.approx(0.75)
    assert feedback.option_prob(-1000.0, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert feedback.option_prob(0.0, -1000.0) == pytest.approx(1.0)
    assert feedback.option_prob(-2.0, -2.0) == 0.5


def test_clamp_and_combine():
    assert list(feedback.clamp([0.01, 0.45, 0.99], 0.4, 0.6)) == [0.4, 0.45, 0.6]
    # K principles: the mean label per pair.
    np.testing.assert_allclose(feedback.combine([[0.9, 0.5, 0.1], [1.0, 1.0, 0.7]]), [0.5, 0.9])
    assert feedback.debiased(0.9, 0.5) == pytest.approx(0.7)


def test_draw_principles_distinct_per_pair():
    picks = feedback.draw_principles(np.random.default_rng(0), 4, 50, 3)
    assert picks.shape == (50, 3)
    assert all(len(set(row)) == 3 for row in picks)
    assert set(picks.ravel()) == {0, 1, 2, 3}


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="principles_per_pair"):
        feedback.FeedbackConfig(principles_per_pair=0)
    with pytest.raises(ConfigError, match="lo, hi"):
        feedback.FeedbackConfig(lo=0.7, hi=0.6)


# ----------------------------------------------------------------------------- a planted model


class ByteTok:
    add_bos = False
    bos_id = 0
    chat_format = "hh"

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode()


class PlantedScorer:
    """Prefers whichever option's reply contains "SAFE" by ``strength`` nats, adds ``bias``
    to the first-listed option, and (under CoT) reasons ``"unsure"``. Under a principle whose
    question contains "backwards" its preference is reversed."""

    def __init__(self, strength=2.0, bias=0.0):
        self.strength, self.bias = strength, bias
        self.loaded = types.SimpleNamespace(tok=ByteTok())
        self.calls = {"score": 0, "complete": 0}

    def logits(self, text):
        body = text.rsplit("Options:\n", 1)[1]
        a = body.split("(A) ", 1)[1].split("\n(B) ")[0]
        b = body.split("\n(B) ", 1)[1].split("\n")[0]
        sign = -1.0 if "backwards" in text.rsplit("Options:", 1)[0].rsplit("\n\n", 1)[-1] else 1.0
        la = sign * self.strength * ("SAFE" in a) + self.bias
        lb = sign * self.strength * ("SAFE" in b)
        return la, lb

    def score_choices(self, ids, choices):
        self.calls["score"] += 1
        which = [prompts.OPTIONS.index(bytes(c).decode()) for c in choices]
        out = []
        for p in ids:
            logits = self.logits(bytes(p).decode())
            z = np.logaddexp(*logits)
            out.append([logits[k] - z for k in which])
        return np.array(out, np.float32)

    def complete(self, ids, cfg, seed=0, transcript=True, desc=None):
        self.calls["complete"] += 1
        return ["unsure"] * len(ids)


def const(questions=("Which reply is less harmful?",)):
    return constitution.Constitution(
        name="t", description="", sl_principles=(constitution.SLPrinciple("c", "r"),),
        rl_principles=tuple(questions),
    )  # fmt: skip


def dataset(n, seed=0):
    """n pairs, the SAFE reply first in a random half."""
    rng = np.random.default_rng(seed)
    items, a_better = [], []
    for i in range(n):
        first = bool(rng.random() < 0.5)
        good, bad = f"SAFE reply {i}", f"bad reply {i}"
        items.append(((("user", f"request {i}"),), *((good, bad) if first else (bad, good))))
        a_better.append(first)
    return items, np.array(a_better)


def labels(scorer, cfg, items, c=None, k=1):
    c = c or const()
    picks = feedback.draw_principles(np.random.default_rng(1), len(c.rl_principles), len(items), k)
    return feedback.label_pairs(feedback.FeedbackModel(scorer), c, items, picks, cfg)


def test_plain_labels_are_the_planted_probabilities():
    items, a_better = dataset(20)
    out = labels(PlantedScorer(strength=2.0), feedback.FeedbackConfig(), items)
    p = np.array([r["p_a"] for r in out])
    np.testing.assert_allclose(p, np.where(a_better, 1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))))
    assert all(r["p_first"] == [r["p_a"]] for r in out)


def test_debiasing_removes_a_planted_position_bias():
    items, a_better = dataset(400)
    biased = PlantedScorer(strength=1.0, bias=3.0)  # the first option gets +3 nats
    raw = labels(biased, feedback.FeedbackConfig(), items)
    fixed = labels(biased, feedback.FeedbackConfig(debias=True), items)
    p_raw = np.array([r["p_a"] for r in raw])
    p_fix = np.array([r["p_a"] for r in fixed])
    # Before: the first option wins everywhere, so accuracy is the share with A better.
    assert feedback.position_bias(p_raw) > 0.85
    assert np.mean((p_raw > 0.5) == a_better) == pytest.approx(a_better.mean())
    # After: a label depends only on which reply is SAFE, never on where it is listed.
    assert np.mean((p_fix > 0.5) == a_better) == 1.0
    np.testing.assert_allclose(p_fix[a_better], p_fix[a_better][0])
    np.testing.assert_allclose(p_fix[~a_better], 1 - p_fix[a_better][0])
    assert abs(feedback.position_bias(p_fix) - 0.5) <= abs(a_better.mean() - 0.5) + 1e-9
    assert all(len(r["p_swapped"]) == 1 for r in fixed)


def test_k_principles_average_per_pair():
    # Two principles, one reversed: K=2 draws both, so every label is the mean of p and 1 - p.
    c = const(("Which reply is less harmful?", "Which reply is backwards?"))
    items, _ = dataset(10)
    out = labels(PlantedScorer(strength=2.0), feedback.FeedbackConfig(principles_per_pair=2),
                 items, c=c, k=2)  # fmt: skip
    for r in out:
        assert sorted(r["principles"]) == [0, 1]
        assert r["p_first"][0] + r["p_first"][1] == pytest.approx(1.0)
        assert r["p_a"] == pytest.approx(0.5)
    one = labels(PlantedScorer(strength=2.0), feedback.FeedbackConfig(), items, c=c)
    assert {round(r["p_a"], 6) for r in one} == {round(1 / (1 + math.exp(2)), 6),
                                                 round(1 / (1 + math.exp(-2)), 6)}  # fmt: skip


def test_cot_reasons_first_then_clamps():
    items, a_better = dataset(12)
    scorer = PlantedScorer(strength=6.0)  # near 0/1, as CoT labels are
    out = labels(scorer, feedback.FeedbackConfig(cot=True, lo=0.4, hi=0.6), items)
    assert scorer.calls["complete"] == 1
    p = np.array([r["p_a"] for r in out])
    np.testing.assert_allclose(p, np.where(a_better, 0.6, 0.4))
    assert all(r["reasoning"] == ["unsure"] for r in out)
    assert all(r["p_first"][0] > 0.99 or r["p_first"][0] < 0.01 for r in out)


def test_cot_prompt_scores_after_the_reasoning():
    text = feedback.question_text(const(), "Q?", [("user", "hi")], "x", "y", cot=True)
    assert text.endswith(prompts.COT_OPENER)
    answered = text + prompts.comparison_answer(" because ")
    assert answered.endswith("because\nSo the answer is:")


def test_few_shot_examples_come_first_and_are_answered():
    ex = constitution.ComparisonExample(
        conversation=(("user", "ex?"),), question="Qx?", a="good", b="bad", answer="A",
        reasoning="A is kinder.",
    )  # fmt: skip
    c = constitution.Constitution("t", "", (constitution.SLPrinciple("c", "r"),), ("Q?",),
                                  comparison_examples=(ex,))  # fmt: skip
    plain = feedback.question_text(c, "Q?", [("user", "hi")], "x", "y", cot=False)
    assert plain.index("Qx?") < plain.index("Q?\nOptions")
    assert "The answer is: (A)\n\n" in plain and "A is kinder" not in plain
    cot = feedback.question_text(c, "Q?", [("user", "hi")], "x", "y", cot=True)
    assert "A is kinder.\nSo the answer is: (A)" in cot
