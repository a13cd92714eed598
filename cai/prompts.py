"""Every prompt format of the recipe, in one place: the HH transcript, the critique and revision
requests of the supervised stage (transcript and chat styles), and the multiple-choice "(A)/(B)"
comparison question of AI feedback with its chain-of-thought form.

The toy world's corpus, the CAI stages and evaluation all build their text here, so a base model
trained on the corpus sees exactly the blocks the stages later prompt it with.
"""

from __future__ import annotations

from collections.abc import Sequence

from cai import constitution
from cai.tokenizer import Tokenizer, render_chat

Messages = Sequence[Sequence[str]]  # (role, content) pairs

OPTIONS = (" (A)", " (B)")  # the comparison's answer continuations, scored by log-prob
COT_OPENER = "Let's think step by step:"


def hh_transcript(messages: Messages) -> str:
    """(role, content) pairs as Anthropic's HH text, what ``render_chat`` writes for format
    ``hh`` (without BOS/EOS): the paper's prompts quote conversations in this form."""
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names[r]}: {c}" for r, c in messages)


def hh_request(name: str, request: str, answer: str | None = None) -> str:
    """The paper's transcript blocks after a conversation: ``{name}Request: ...`` then
    ``{name}:`` (``name`` is ``Critique`` or ``Revision``), answered when ``answer`` is given."""
    return f"\n\n{name}Request: {request}\n\n{name}:" + ("" if answer is None else f" {answer}")


# ----------------------------------------------------------------------------- critique, revision


def few_shot_text(c: constitution.Constitution, direct: bool) -> str:
    """The constitution's revision examples as transcript blocks (critiques left out when
    ``direct``)."""
    out = []
    for ex in c.revision_examples:
        text = hh_transcript(ex.conversation)
        if not direct:
            text += hh_request("Critique", ex.critique_request, ex.critique)
        out.append(text + hh_request("Revision", ex.revision_request, ex.revision))
    return "".join(out)


def quote(conversation: Messages, request: str) -> str:
    """A conversation quoted inside one user turn, followed by a request about it (chat style)."""
    return (
        "Here is a conversation between a human and an AI assistant:\n"
        f"{hh_transcript(conversation)}\n\n{request}"
    )


def chat_messages(
    c: constitution.Constitution,
    conversation: Messages,
    principle: constitution.SLPrinciple,
    critique: str | None,
    direct: bool,
) -> list[dict[str, str]]:
    """Chat style: few-shot examples as earlier turns, then the quoted conversation with the
    critique request (or, when ``direct``, the revision request)."""
    msgs: list[dict[str, str]] = []
    for ex in c.revision_examples:
        if direct:
            msgs += [{"role": "user", "content": quote(ex.conversation, ex.revision_request)}]
        else:
            msgs += [
                {"role": "user", "content": quote(ex.conversation, ex.critique_request)},
                {"role": "assistant", "content": ex.critique},
                {"role": "user", "content": ex.revision_request},
            ]
        msgs.append({"role": "assistant", "content": ex.revision})
    if direct:
        return msgs + [{"role": "user", "content": quote(conversation, principle.revision)}]
    msgs.append({"role": "user", "content": quote(conversation, principle.critique)})
    if critique is not None:
        msgs += [
            {"role": "assistant", "content": critique},
            {"role": "user", "content": principle.revision},
        ]
    return msgs


def critique_text(conversation: Messages, request: str) -> str:
    """Transcript style: the conversation, then a critique request waiting for its critique."""
    return hh_transcript(conversation) + hh_request("Critique", request)


def loop_prompt(
    tok: Tokenizer,
    c: constitution.Constitution,
    style: str,
    conversation: Messages,
    principle: constitution.SLPrinciple,
    critique: str | None = None,
    direct: bool = False,
) -> list[int]:
    """Token ids asking for a critique (``critique is None and not direct``) or a revision, in
    ``style`` ``transcript`` (few-shot HH blocks) or ``chat`` (the model's chat turns)."""
    if style == "chat":
        msgs = chat_messages(c, conversation, principle, critique, direct)
        return render_chat(tok, msgs, add_generation_prompt=True)[0]
    text = few_shot_text(c, direct)
    if direct:
        text += hh_transcript(conversation) + hh_request("Revision", principle.revision)
    else:
        text += critique_text(conversation, principle.critique)
        if critique is not None:
            text += f" {critique}" + hh_request("Revision", principle.revision)
    return text_ids(tok, text)


def text_ids(tok: Tokenizer, text: str) -> list[int]:
    """Plain text as a prompt: BOS first where the tokenizer wants one."""
    return ([tok.bos_id] if tok.add_bos else []) + tok.encode(text)


# ----------------------------------------------------------------------------- comparison


def comparison_prompt(question: str, conversation: str, a: str, b: str, cot: bool = False) -> str:
    """The paper's multiple-choice question (arXiv 2212.08073, Sec. 4.1) about two replies to the
    HH ``conversation``; the model continues with one of ``OPTIONS``. With ``cot`` the prompt
    ends asking for reasoning first, and the options are scored after it."""
    text = (
        "Here is a conversation between a human and an assistant:"
        f"{conversation}\n\n{question}\nOptions:\n(A) {a}\n(B) {b}\n"
    )
    return text + (f"{COT_OPENER}" if cot else "The answer is:")


def comparison_answer(reasoning: str) -> str:
    """After chain-of-thought ``reasoning``, the text the options are scored after."""
    return f" {reasoning.strip()}\nSo the answer is:"
