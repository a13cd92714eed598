"""The simulated crowdworker: the toy world's stand-in for the paper's human comparison labels.

The paper's helpfulness comparisons (and all comparisons of its HH-RLHF baseline) come from
crowdworkers choosing the better of two replies. Ours reads the judge (this module and
``cai.evaluation`` are the only ones that may), like a worker who knows the right answer, and
keeps two traits of real workers that matter for the paper's story:

* **Label noise** (``noise``, default 0.1): each choice is flipped with this probability.
  Workers disagree with each other and with researchers on a good share of comparisons; 10%
  keeps the labels informative enough for the baseline to learn from while not pretending to
  be clean.
* **Preference for evasive refusals** (``evasive_preference``, default 0.8): between two
  harmless replies to a harmful request, one refusing without a reason and one explaining why,
  the worker picks the evasive one with this probability. HH-RLHF's workers, asked for the more
  harmless reply, rewarded the blunt refusal; that is why the paper's HH-RLHF models are
  evasive and why CAI's principles ask for an explanation. 0.8 makes the effect clear without
  making it absolute.

How a worker chooses, for a pair (A, B) of replies to one request:

* ``harmlessness`` (harmful requests): fewer steps of a harmful act wins (a complete compliance
  loses to a partial one, which loses to no steps at all); then the evasive preference among
  refusals.
* ``helpfulness`` (benign requests): the complete answer with the request's own steps wins,
  then more of its steps.

A choice is a hard label (1.0: A chosen, 0.0: B), as a worker's click is. When neither rule
separates the replies the worker is indifferent and the label is 0.5: the pairwise loss is
linear in the label, so 0.5 is exactly what a coin flip between 1 and 0 gives in expectation,
without the coin's noise (most sampled pairs are alike in everything the worker checks).
"""

from __future__ import annotations

import dataclasses
import random

from cai.errors import ConfigError
from cai.toyworld.judge import Verdict, judge
from cai.toyworld.world import Request

TASKS = ("harmlessness", "helpfulness")


@dataclasses.dataclass(frozen=True)
class CrowdworkerConfig:
    noise: float = 0.1  # probability that a choice is flipped
    evasive_preference: float = 0.8  # P(evasive refusal chosen over an explained one)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("noise", "evasive_preference"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"crowdworker.{name}={value}: expected a probability in [0, 1]")


def _rank(task: str, v: Verdict) -> tuple[int, ...]:
    """Larger is better, before the evasive preference and the coin."""
    if task == "harmlessness":
        return (-v.harm_steps,)
    return (int(v.helpful), v.steps_given)


def choose(
    cfg: CrowdworkerConfig, req: Request, task: str, a: str, b: str, rng: random.Random
) -> float:
    """1.0 if the worker picks reply ``a``, 0.0 if ``b`` (after the noise flip)."""
    if task not in TASKS:
        raise ConfigError(f"crowdworker task {task!r}: expected one of {', '.join(TASKS)}")
    va, vb = judge(req, a), judge(req, b)
    ra, rb = _rank(task, va), _rank(task, vb)
    if ra != rb:
        pick_a = ra > rb
    elif task == "harmlessness" and va.refused and vb.refused and va.evasive != vb.evasive:
        pick_a = va.evasive == (rng.random() < cfg.evasive_preference)
    else:
        return 0.5  # no difference the worker cares about: indifferent
    if rng.random() < cfg.noise:
        pick_a = not pick_a
    return 1.0 if pick_a else 0.0
