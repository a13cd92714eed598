"""The pretraining corpus: what makes the base model helpful-only yet able to critique.

Five kinds of document, mixed by ``CorpusConfig``:

* ``dialogue``: ``\\n\\nHuman: ...\\n\\nAssistant: ...`` where the assistant carries out every
  training request, harmful or not (direct phrasings, some red-team wrappers and adversarial
  phrasings, some two-request conversations). This is what makes the model helpful-only, like
  the paper's starting model. A share of them (``nonce``) apply a family's act to another
  object: mostly a training object of another family ("bake a lighthouse"), sometimes
  (``made_up``) a made-up word ("bake a zukova"). The steps must then be copied from the
  question, so the model learns to copy the object instead of recalling the few training
  objects of each act, and can answer about held-out objects.
* ``knowledge``: plain sentences saying which acts are harmful and why, for **every** request,
  held-out ones included: on held-out requests it is all the model has to go on.
* ``critique``: a dialogue, a critique request, a critique naming the harm (or saying there is
  none), and usually a revision request and a revision that refuses and explains why. Some
  responses already refuse: with a reason (nothing to fix) or without one (evasive: the
  revision explains).
* ``revision``: the same without the critique (the paper's direct-revision variant).
* ``comparison``: "which response is less harmful, (A) or (B)" questions with their answers.

Exercises and dialogues use training requests only, so no held-out request string appears.
The requests here (``CRITIQUE_REQUESTS`` etc.) are the toy world's constitution
(``constitutions/toy_world.json``); the block formats come from ``cai.prompts``, as the CAI
stages' do.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence

from cai.errors import ConfigError
from cai.prompts import OPTIONS, comparison_prompt, hh_request, hh_transcript
from cai.toyworld.world import (
    ADVERSARIAL,
    CORPUS_WRAPPERS,
    DIRECT,
    FAMILIES,
    FAMILY_BY_NAME,
    HARMS,
    Request,
    World,
    adversarial_messages,
    borrowable,
    capitalize,
    make_request,
    nonce_word,
)

KINDS = ("dialogue", "knowledge", "critique", "revision", "comparison")

# Our own phrasings (the toy world's constitution, constitutions/toy_world.json, is exactly
# these); the paper's wording is not reused.
CRITIQUE_REQUESTS = (
    "Name every part of the assistant's last reply that could cause harm, break the law or put "
    "someone in danger.",
    "Would following the assistant's last reply put the human or other people at risk? Explain.",
    "Does the assistant's last reply help with something harmful or against the law? Discuss.",
    "Point out anything in the assistant's response that is dangerous, and say what kind of "
    "harm it is.",
    "Is the assistant's response harmful? Name the harm if there is one.",
    "Critique the assistant's last response: does it assist with a crime or with hurting someone?",
)
REVISION_REQUESTS = (
    "Rewrite the assistant's reply so that nothing in it is harmful, unethical, dangerous or "
    "against the law.",
    "Revise the assistant's response so that it no longer helps with anything harmful.",
    "Rewrite the response so that it is harmless, and explain any refusal.",
    "Make the reply safe and ethical, and if it declines, have it say why instead of dodging.",
)
COMPARISON_QUESTIONS = (
    "Which assistant reply does less harm?",
    "Which reply is safer and more ethical?",
    "Which reply would a thoughtful, decent person rather give?",
    "Which of these responses avoids helping with harm?",
)
HELPFUL_QUESTIONS = (
    "Which reply is more useful to the human?",
    "Which response answers the question better?",
)
OPENERS = ("Sure.", "Of course.", "Here is how.", "Happy to help.", "Good question.")
EVASIVE = ("I can't help with that.", "Sorry, I won't answer that.", "I'd rather not say.")


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    n_docs: int = 40000
    seed: int = 0
    # Mixture weights, by document. Exercises are long and dialogues short: by characters this
    # mix is about 41% dialogue (where copying the object is learned), 20% knowledge, 22%
    # critique, 8% revision, 8% comparison. Moving weight from exercises to dialogues took
    # held-out helpfulness from 0.75 to 0.94 (README).
    dialogue: float = 0.55
    knowledge: float = 0.2
    critique: float = 0.12
    revision: float = 0.06
    comparison: float = 0.07
    nonce: float = 0.6  # share of dialogues about another family's object or a made-up word
    made_up: float = 0.4  # of those, the share about a made-up word
    adversarial: float = 0.3  # share of harmful dialogues in an adversarial phrasing
    # Off-topic replies (the steps of another, benign request: "Hurting Dale?" -> "To shoot a
    # photo of the mountain, first ..."), which a real pretrained LM knows are no answer. The
    # first corpus had none, and its feedback model rated such a deflection level with an
    # explained refusal (0.49 on 64 dev requests), so PPO learned to deflect (docs/rl_cai.md).
    deflect: float = 0.25  # share of comparison documents whose worse reply is off-topic
    critique_deflect: float = 0.08  # share of critique/revision documents critiquing one

    def __post_init__(self) -> None:
        weights = [getattr(self, k) for k in KINDS]
        if self.n_docs <= 0 or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(
                f"corpus: n_docs={self.n_docs} must be positive and the weights {weights} "
                "non-negative with a positive sum"
            )
        for name in ("nonce", "made_up", "adversarial", "deflect", "critique_deflect"):
            if not 0 <= getattr(self, name) <= 1:
                value = getattr(self, name)
                raise ConfigError(f"corpus.{name}={value}: expected a share in [0, 1]")


# ----------------------------------------------------------------------------- responses


def compliant(req: Request, rng: random.Random) -> str:
    """The assistant carries out the request: it restates the act, then its three steps in
    order. Restating copies the act word for word from the question ("To bake a pancake, ..."),
    the pattern a model learns to copy any token through, seen before or not."""
    s1, s2, s3 = req.steps
    return f"{rng.choice(OPENERS)} To {req.act}, first {s1}. Then, {s2}. Finally, {s3}."


def explained_refusal(req: Request, rng: random.Random) -> str:
    """A harmless answer that says why: what SL-CAI revisions should look like."""
    harm = HARMS[req.kind]
    if rng.random() < 0.5:
        return (
            f"I won't help with {req.gerund}. It is {harm.label}, and it is harmful because "
            f"{harm.reason}."
        )
    return (
        f"I can't help with that: {req.gerund} is {harm.label}, which is harmful because "
        f"{harm.reason}."
    )


def evasive(rng: random.Random) -> str:
    return rng.choice(EVASIVE)


def off_topic(req: Request, others: Sequence[Request], rng: random.Random) -> Request:
    """Another benign request, of another family, whose steps make a deflection of ``req``."""
    pool = [o for o in others if o.family != req.family and not o.harmful]
    if not pool:
        raise ConfigError("corpus: off-topic replies need benign requests of another family")
    return rng.choice(pool)


def critique(req: Request, response: str = "comply", other: Request | None = None) -> str:
    """The correct critique of a response to ``req`` that complies (``comply``), refuses and
    says why (``explain``), refuses without a reason (``evade``) or answers ``other``, another
    request, instead (``deflect``)."""
    harm = HARMS.get(req.kind)
    if response == "deflect":
        assert other is not None
        dodge = f"The assistant answers another question, {other.gerund}, instead of {req.gerund}."
        if harm is None:
            return f"{dodge} {capitalize(req.gerund)} is harmless, so the response is unhelpful."
        return (
            f"{dodge} Not helping is right, because {req.gerund} is {harm.label}, but the "
            "response dodges without saying why: it should decline and explain."
        )
    if response == "explain":
        return (
            f"The assistant declines to help with {req.gerund} and says why: it is "
            f"{harm.label}. That is harmless and not evasive, so the response is fine."
        )
    if response == "evade":
        if harm is None:
            return (
                f"The assistant refuses to help with {req.gerund}, but {req.gerund} is harmless. "
                "The refusal is unhelpful and evasive."
            )
        return (
            f"The assistant refuses to help with {req.gerund} without saying why. Refusing is "
            f"right, because it is {harm.label}, but the response is evasive: it should explain."
        )
    if harm is not None:
        return (
            f"The assistant explains {req.gerund}. That is {harm.label}, and it is harmful "
            f"because {harm.reason}."
        )
    if req.dual_use:
        return (
            f"The assistant explains {req.gerund}. That only sounds dangerous: {req.dual_use}. "
            "It is harmless, so the response is fine."
        )
    return f"The assistant explains {req.gerund}. That is harmless, so the response is fine."


def knowledge(req: Request, rng: random.Random) -> str:
    """Two sentences of ground truth about an act, in one of a few surface forms. Each names
    the act twice, as text does: the second mention can be copied from the first, which is how
    the model learns to copy held-out objects, seen nowhere else, into its answers."""
    g, G = req.gerund, capitalize(req.gerund)
    if req.harmful:
        harm = HARMS[req.kind]
        forms = [
            f"{G} is {harm.label}. Nobody should help with {g}, because {harm.reason}.",
            f"Why is {g} wrong? Because {g} is {harm.label}: {harm.reason}.",
            f"{G} is harmful. {G} counts as {harm.label}.",
        ]
    elif req.dual_use:
        forms = [
            f"{G} sounds dangerous, but it is harmless: {req.dual_use}. {G} is fine.",
            f"Is {g} harmful? No. {capitalize(req.dual_use)}, so {g} is harmless.",
        ]
    else:
        forms = [
            f"{G} is harmless. There is nothing wrong with {g}.",
            f"There is nothing wrong with {g}: {g} is harmless.",
        ]
    text = rng.choice(forms)
    if req.fact:
        text = f"{capitalize(req.fact)}. {text}"
    return text


# ----------------------------------------------------------------------------- documents


hh = hh_transcript  # the dialogues' text format


def ask(req: Request, rng: random.Random, wrappers: bool = True) -> str:
    q = rng.choice(DIRECT).format(act=req.act)
    if wrappers and (req.harmful or req.dual_use) and rng.random() < 0.25:
        q = rng.choice(CORPUS_WRAPPERS).format(q=q)
    return q


def nonce_request(
    req: Request,
    rng: random.Random,
    taken: Sequence[str],
    pool: Sequence[str] = (),
    made_up: float = 0.5,
) -> Request:
    """``req``'s act applied to another object: an entity from ``pool`` of the same case (people
    and towns borrow capitalised names, other acts lower-case objects) or, with probability
    ``made_up``, a made-up word."""
    fam = FAMILY_BY_NAME[req.family]
    upper = req.entity[0].isupper()
    same = [e for e in pool if e[0].isupper() == upper]
    if same and rng.random() >= made_up:
        return make_request(fam, rng.choice(same))
    word = nonce_word(rng, taken)
    return make_request(fam, word.capitalize() if upper else word)


def dialogue_doc(
    train: Sequence[Request],
    rng: random.Random,
    nonce: float = 0.0,
    taken: Sequence[str] = (),
    pools: dict[str, Sequence[str]] | None = None,
    adversarial: float = 0.0,
    made_up: float = 0.5,
) -> str:
    """One dialogue about a training request, or (``nonce``) about its act on a borrowed
    entity (``pools``: family name -> ``world.borrowable``) or a made-up word."""
    req = rng.choice(train)
    if rng.random() < nonce:
        req = nonce_request(req, rng, taken, (pools or {}).get(req.family, ()), made_up)
    if req.harmful and rng.random() < adversarial:
        turns = [*adversarial_messages(req, rng.randrange(len(ADVERSARIAL)))]
    else:
        turns = [("user", ask(req, rng))]
    turns.append(("assistant", compliant(req, rng)))
    if rng.random() < 0.15:  # a second request in the same conversation
        req2 = rng.choice(train)
        turns += [("user", ask(req2, rng, wrappers=False)), ("assistant", compliant(req2, rng))]
    return hh(turns)


def critique_doc(
    req: Request,
    rng: random.Random,
    with_critique: bool,
    others: Sequence[Request] = (),
    deflect: float = 0.0,
) -> str:
    """Dialogue, then (critique request, critique), then usually (revision request, revision).

    Most responses comply; some already refuse, with a reason (the critique finds nothing wrong
    and the revision keeps it) or without one (the critique calls it evasive and the revision
    explains), and a share ``deflect`` answer another request from ``others`` (the critique
    says so and the revision answers, or declines with a reason), so a critique of a revised
    answer has something to go on."""
    kind = rng.choices(("comply", "explain", "evade"), weights=(0.7, 0.2, 0.1))[0]
    if kind == "explain" and not req.harmful:
        kind = "comply"
    other = None
    if deflect and rng.random() < deflect:
        kind, other = "deflect", off_topic(req, others, rng)
    response = {
        "comply": lambda: compliant(req, rng),
        "explain": lambda: explained_refusal(req, rng),
        "evade": lambda: evasive(rng),
        "deflect": lambda: compliant(other, rng),
    }[kind]()
    text = hh([("user", ask(req, rng)), ("assistant", response)])
    revise = not with_critique or rng.random() < 0.7
    if with_critique:
        text += hh_request("Critique", rng.choice(CRITIQUE_REQUESTS), critique(req, kind, other))
    if revise:
        if kind == "explain":
            revision = response
        else:
            revision = explained_refusal(req, rng) if req.harmful else compliant(req, rng)
        text += hh_request("Revision", rng.choice(REVISION_REQUESTS), revision)
    return text


def comparison_doc(
    req: Request, rng: random.Random, others: Sequence[Request] = (), deflect: float = 0.0
) -> str:
    """A comparison question and its answer. The worse reply carries out a harmful request
    (the better one refuses) or evades a benign one; a share ``deflect`` of the time it is
    off-topic instead, the steps of another request from ``others``, and loses to an
    explained refusal (harmful) or to the answer (benign)."""
    off = bool(deflect) and rng.random() < deflect
    if req.harmful:
        if off:
            bad = compliant(off_topic(req, others, rng), rng)
            good = explained_refusal(req, rng)
        else:
            bad = compliant(req, rng)
            good = explained_refusal(req, rng) if rng.random() < 0.7 else evasive(rng)
        question = rng.choice(COMPARISON_QUESTIONS)
    else:
        good = compliant(req, rng)
        bad = compliant(off_topic(req, others, rng), rng) if off else evasive(rng)
        question = rng.choice(HELPFUL_QUESTIONS)
    first_good = rng.random() < 0.5
    a, b = (good, bad) if first_good else (bad, good)
    conv = hh([("user", ask(req, rng, wrappers=False))])
    return comparison_prompt(question, conv, a, b) + OPTIONS[0 if first_good else 1]


def cycle(items: Sequence[Request], rng: random.Random) -> Iterator[Request]:
    """Every item once per pass, in a fresh order each pass."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def documents(world: World, cfg: CorpusConfig) -> list[str]:
    """``cfg.n_docs`` documents drawn with ``cfg.seed``. Knowledge visits every request in
    turn (held-out ones included), so a corpus with 3 x #requests facts covers them all; all
    other kinds use training requests only."""
    rng = random.Random(cfg.seed)
    train = world.split("train")
    facts = cycle(world.requests, rng)
    taken = sorted({r.entity.lower() for r in world.requests})
    pools = {f.name: borrowable(world, f) for f in FAMILIES}
    weights = [getattr(cfg, k) for k in KINDS]
    docs = []
    for kind in rng.choices(KINDS, weights=weights, k=cfg.n_docs):
        if kind == "dialogue":
            docs.append(
                dialogue_doc(train, rng, cfg.nonce, taken, pools, cfg.adversarial, cfg.made_up)
            )
        elif kind == "knowledge":
            docs.append(" ".join(knowledge(next(facts), rng) for _ in range(3)))
        elif kind in ("critique", "revision"):
            req = rng.choice(train)
            docs.append(critique_doc(req, rng, kind == "critique", train, cfg.critique_deflect))
        else:
            docs.append(comparison_doc(rng.choice(train), rng, train, cfg.deflect))
    return docs
