"""The pretraining corpus: what makes the base model helpful-only yet able to critique.

Five kinds of document, mixed by ``CorpusConfig``:

* ``dialogue``: ``\\n\\nHuman: ...\\n\\nAssistant: ...`` where the assistant carries out every
  training request, harmful or not (direct phrasings, some red-team wrappers, some two-request
  conversations). This is what makes the model helpful-only, like the paper's starting model.
  A share of them (``nonce``) apply a family's act to another object: half the time a made-up
  word ("bake a zukova"), else a training object of another family ("bake a lighthouse"). The
  steps must then be copied from the question, so the model learns to copy the object instead
  of recalling the few training objects of each act, and can answer about held-out objects.
* ``knowledge``: plain sentences saying which acts are harmful and why, for **every** request,
  held-out ones included: on held-out requests it is all the model has to go on.
* ``critique``: a dialogue, a critique request, a critique naming the harm (or saying there is
  none), and usually a revision request and a revision that refuses and explains why.
* ``revision``: the same without the critique (the paper's direct-revision variant).
* ``comparison``: "which response is less harmful, (A) or (B)" questions with their answers.

Exercises and dialogues use training requests only, so no held-out request string appears.
The text formats here (``CRITIQUE_REQUESTS`` etc.) are the ones the CAI stages prompt with.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence

from cai.errors import ConfigError
from cai.toyworld.world import (
    CORPUS_WRAPPERS,
    DIRECT,
    FAMILY_BY_NAME,
    HARMS,
    Request,
    World,
    capitalize,
    make_request,
)

KINDS = ("dialogue", "knowledge", "critique", "revision", "comparison")

CRITIQUE_REQUESTS = (
    "Identify specific ways in which the assistant's last response is harmful, unethical, "
    "dangerous or illegal.",
    "Explain ways in which the assistant's preceding response may be harmful to either the "
    "human or others.",
    "Discuss whether the assistant's last response helps with something harmful or illegal.",
    "Point out anything in the assistant's response that is dangerous, and say what kind of "
    "harm it is.",
    "Is the assistant's response harmful? Name the harm if there is one.",
    "Critique the assistant's last response: does it assist with a crime or with hurting someone?",
)
REVISION_REQUESTS = (
    "Please rewrite the assistant response to remove any and all harmful, unethical, "
    "dangerous or illegal content.",
    "Revise the assistant's response so that it no longer helps with anything harmful.",
    "Rewrite the response so that it is harmless, and explain any refusal.",
    "Please rewrite the assistant's response to be safe and ethical, without being evasive.",
)
COMPARISON_QUESTIONS = (
    "Which of these assistant responses is less harmful?",
    "Which response is more ethical and less dangerous?",
    "Which assistant response would a wise and ethical person choose?",
    "Which of these responses avoids helping with harm?",
)
HELPFUL_QUESTIONS = (
    "Which of these assistant responses is more helpful?",
    "Which response answers the question better?",
)
OPENERS = ("Sure.", "Of course.", "Here is how.", "Happy to help.", "Good question.")
EVASIVE = ("I can't help with that.", "Sorry, I won't answer that.", "I'd rather not say.")


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    n_docs: int = 40000
    seed: int = 0
    # Mixture weights, in the order of KINDS.
    dialogue: float = 0.45
    knowledge: float = 0.2
    critique: float = 0.15
    revision: float = 0.1
    comparison: float = 0.1
    nonce: float = 0.7  # share of dialogues about a borrowed or made-up object

    def __post_init__(self) -> None:
        weights = [getattr(self, k) for k in KINDS]
        if self.n_docs <= 0 or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(
                f"corpus: n_docs={self.n_docs} must be positive and the weights {weights} "
                "non-negative with a positive sum"
            )
        if not 0 <= self.nonce <= 1:
            raise ConfigError(f"corpus.nonce={self.nonce}: expected a share in [0, 1]")


# ----------------------------------------------------------------------------- responses


def compliant(req: Request, rng: random.Random) -> str:
    """The assistant carries out the request: its three steps in order."""
    s1, s2, s3 = req.steps
    return f"{rng.choice(OPENERS)} First, {s1}. Then, {s2}. Finally, {s3}."


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


def critique(req: Request) -> str:
    """The correct critique of a response that carries out ``req``."""
    if req.harmful:
        harm = HARMS[req.kind]
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
    """One or two sentences of ground truth about an act, in one of a few surface forms."""
    g = req.gerund
    if req.harmful:
        harm = HARMS[req.kind]
        forms = [
            f"{capitalize(g)} is {harm.label}. It is harmful because {harm.reason}.",
            f"Why is {g} wrong? Because it is {harm.label}: {harm.reason}.",
            f"{capitalize(g)} is harmful. It counts as {harm.label}.",
        ]
    elif req.dual_use:
        forms = [
            f"{capitalize(g)} sounds dangerous, but it is harmless: {req.dual_use}.",
            f"Is {g} harmful? No. {capitalize(req.dual_use)}.",
        ]
    else:
        forms = [f"{capitalize(g)} is harmless.", f"There is nothing wrong with {g}."]
    text = rng.choice(forms)
    if req.fact:
        text = f"{capitalize(req.fact)}. {text}"
    return text


# ----------------------------------------------------------------------------- documents


def hh(messages: Sequence[tuple[str, str]]) -> str:
    """Messages in Anthropic's HH format (what ``render_chat`` writes for format ``hh``)."""
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names[r]}: {c}" for r, c in messages)


def ask(req: Request, rng: random.Random, wrappers: bool = True) -> str:
    q = rng.choice(DIRECT).format(act=req.act)
    if wrappers and (req.harmful or req.dual_use) and rng.random() < 0.25:
        q = rng.choice(CORPUS_WRAPPERS).format(q=q)
    return q


_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def nonce_word(rng: random.Random, taken: Sequence[str]) -> str:
    """A made-up word of 2-3 syllables that no real entity is a prefix of."""
    while True:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
        if not any(word.startswith(t) or t.startswith(word) for t in taken):
            return word


def nonce_request(
    req: Request, rng: random.Random, taken: Sequence[str], pool: Sequence[str] = ()
) -> Request:
    """``req``'s act applied to a made-up word (capitalised where the family names people) or,
    half the time, to an object drawn from ``pool``."""
    fam = FAMILY_BY_NAME[req.family]
    if req.entity[0].isupper():
        return make_request(fam, nonce_word(rng, taken).capitalize())
    word = rng.choice(pool) if pool and rng.random() < 0.5 else nonce_word(rng, taken)
    return make_request(fam, word)


def copy_pool(world: World) -> list[str]:
    """Training objects other acts may borrow: lower-case ones that no held-out entity is a
    prefix of (or the reverse), so no held-out act or step can appear inside a borrowed one."""
    held = [e.lower() for e in world.held_out_entities]
    return sorted(
        {
            r.entity
            for r in world.split("train")
            if r.entity.islower()
            and not any(r.entity.startswith(h) or h.startswith(r.entity) for h in held)
        }
    )


def dialogue_doc(
    train: Sequence[Request],
    rng: random.Random,
    nonce: float = 0.0,
    taken: Sequence[str] = (),
    pool: Sequence[str] = (),
) -> str:
    req = rng.choice(train)
    if rng.random() < nonce:
        req = nonce_request(req, rng, taken, pool)
    turns = [("user", ask(req, rng)), ("assistant", compliant(req, rng))]
    if rng.random() < 0.15:  # a second request in the same conversation
        req2 = rng.choice(train)
        turns += [("user", ask(req2, rng, wrappers=False)), ("assistant", compliant(req2, rng))]
    return hh(turns)


def critique_doc(req: Request, rng: random.Random, with_critique: bool) -> str:
    """Dialogue, then (critique request, critique), then usually (revision request, revision)."""
    text = hh([("user", ask(req, rng)), ("assistant", compliant(req, rng))])
    revise = not with_critique or rng.random() < 0.7
    if with_critique:
        text += f"\n\nCritiqueRequest: {rng.choice(CRITIQUE_REQUESTS)}\n\nCritique: {critique(req)}"
    if revise:
        revision = explained_refusal(req, rng) if req.harmful else compliant(req, rng)
        text += f"\n\nRevisionRequest: {rng.choice(REVISION_REQUESTS)}\n\nRevision: {revision}"
    return text


def comparison_prompt(question: str, conversation: str, a: str, b: str) -> str:
    """The paper's multiple-choice format; the model continues with " (A)" or " (B)"."""
    return (
        "Consider the following conversation between a human and an assistant:"
        f"{conversation}\n\n{question}\nOptions:\n(A) {a}\n(B) {b}\nThe answer is:"
    )


def comparison_doc(req: Request, rng: random.Random) -> str:
    if req.harmful:
        bad = compliant(req, rng)
        good = explained_refusal(req, rng) if rng.random() < 0.7 else evasive(rng)
        question = rng.choice(COMPARISON_QUESTIONS)
    else:
        good, bad = compliant(req, rng), evasive(rng)
        question = rng.choice(HELPFUL_QUESTIONS)
    first_good = rng.random() < 0.5
    a, b = (good, bad) if first_good else (bad, good)
    conv = hh([("user", ask(req, rng, wrappers=False))])
    return comparison_prompt(question, conv, a, b) + (" (A)" if first_good else " (B)")


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
    pool = copy_pool(world)
    weights = [getattr(cfg, k) for k in KINDS]
    docs = []
    for kind in rng.choices(KINDS, weights=weights, k=cfg.n_docs):
        if kind == "dialogue":
            docs.append(dialogue_doc(train, rng, cfg.nonce, taken, pool))
        elif kind == "knowledge":
            docs.append(" ".join(knowledge(next(facts), rng) for _ in range(3)))
        elif kind == "critique":
            docs.append(critique_doc(rng.choice(train), rng, with_critique=True))
        elif kind == "revision":
            docs.append(critique_doc(rng.choice(train), rng, with_critique=False))
        else:
            docs.append(comparison_doc(rng.choice(train), rng))
    return docs
