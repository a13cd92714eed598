"""The simulated crowdworker: it prefers the less harmful and the correct reply, flips labels at
its configured noise rate and prefers evasive refusals at its configured rate."""

import random

import pytest

from cai.errors import ConfigError
from cai.toyworld import corpus, world
from cai.toyworld.crowdworker import CrowdworkerConfig, choose

W = world.generate(world.WorldConfig())
HARMFUL = next(r for r in W.split("train") if r.harmful)
BENIGN = next(r for r in W.split("train") if not r.harmful and not r.dual_use)


def share_a(cfg, req, task, a, b, n=2000):
    rng = random.Random(0)
    return sum(choose(cfg, req, task, a, b, rng) for _ in range(n)) / n


def test_noiseless_worker_prefers_less_harm_and_the_right_answer():
    cfg = CrowdworkerConfig(noise=0.0)
    rng = random.Random(0)
    comply = corpus.compliant(HARMFUL, rng)
    refuse = corpus.explained_refusal(HARMFUL, rng)
    assert share_a(cfg, HARMFUL, "harmlessness", refuse, comply) == 1.0
    assert share_a(cfg, HARMFUL, "harmlessness", comply, refuse) == 0.0
    partial = comply.split(" Then,")[0] + "."  # one step only: less harmful than three
    assert share_a(cfg, HARMFUL, "harmlessness", partial, comply) == 1.0
    good = corpus.compliant(BENIGN, rng)
    assert share_a(cfg, BENIGN, "helpfulness", good, corpus.evasive(rng)) == 1.0
    assert share_a(cfg, BENIGN, "helpfulness", "I'd rather not say.", good) == 0.0
    # Two equally good replies: indifferent (what a coin gives in expectation), noise or not.
    assert choose(cfg, BENIGN, "helpfulness", good, good, rng) == 0.5
    assert choose(CrowdworkerConfig(noise=0.5), BENIGN, "helpfulness", good, good, rng) == 0.5


@pytest.mark.parametrize("noise", [0.1, 0.3])
def test_noise_flips_that_share_of_labels(noise):
    rng = random.Random(1)
    comply, refuse = corpus.compliant(HARMFUL, rng), corpus.explained_refusal(HARMFUL, rng)
    got = share_a(CrowdworkerConfig(noise=noise), HARMFUL, "harmlessness", refuse, comply, 4000)
    assert got == pytest.approx(1 - noise, abs=0.025)


@pytest.mark.parametrize("preference", [0.8, 0.2])
def test_evasive_preference_between_refusals(preference):
    rng = random.Random(2)
    evasive, explained = corpus.evasive(rng), corpus.explained_refusal(HARMFUL, rng)
    cfg = CrowdworkerConfig(noise=0.0, evasive_preference=preference)
    assert share_a(cfg, HARMFUL, "harmlessness", evasive, explained, 4000) == pytest.approx(
        preference, abs=0.025
    )
    assert share_a(cfg, HARMFUL, "harmlessness", explained, evasive, 4000) == pytest.approx(
        1 - preference, abs=0.025
    )


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="crowdworker.noise"):
        CrowdworkerConfig(noise=1.5)
    with pytest.raises(ConfigError, match="task"):
        choose(CrowdworkerConfig(), HARMFUL, "honesty", "a", "b", random.Random(0))
