"""Constitution files: the principles CAI trains from, loaded and checked field by field.

The constitution is the only human input of Constitutional AI (arXiv 2212.08073): no human
harmlessness labels, just a short list of principles. The supervised stage samples a critique
request and its matching revision request; the RL stage samples a multiple-choice comparison
question for the feedback model. Because everything downstream is steered by these texts, a
malformed file must fail loudly and precisely, before any model is loaded: every problem raises
`ConfigError` with one line naming the file and the field path. The schema is documented in
``constitutions/README.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, NoReturn

import cai
from cai.errors import ConfigError

REPO = Path(cai.__file__).resolve().parents[1]
"""Repository root (editable install); relative constitution paths fall back to it."""

Conversation = tuple[tuple[str, str], ...]
"""A conversation as (role, content) pairs, role being "user" or "assistant"."""

ROLES = ("user", "assistant")
_A_TURN = {"user": "a user", "assistant": "an assistant"}


@dataclasses.dataclass(frozen=True)
class SLPrinciple:
    """Supervised stage: a critique request and the revision request that matches it."""

    critique: str
    revision: str


@dataclasses.dataclass(frozen=True)
class RevisionExample:
    """A worked critique-then-revise example for the few-shot prompt."""

    conversation: Conversation  # ends with the assistant turn being critiqued
    critique_request: str
    critique: str
    revision_request: str
    revision: str


@dataclasses.dataclass(frozen=True)
class ComparisonExample:
    """A worked multiple-choice comparison for the few-shot feedback prompt."""

    conversation: Conversation  # ends with the user turn both options answer
    question: str
    a: str
    b: str
    answer: str  # "A" or "B"
    reasoning: str = ""  # shown only in the chain-of-thought variant


@dataclasses.dataclass(frozen=True)
class Constitution:
    """A validated constitution file."""

    name: str
    description: str
    sl_principles: tuple[SLPrinciple, ...]
    rl_principles: tuple[str, ...]
    revision_examples: tuple[RevisionExample, ...] = ()
    comparison_examples: tuple[ComparisonExample, ...] = ()
    cot_preamble: str = ""
    path: str = ""  # the resolved file it was loaded from


def shipped() -> list[str]:
    """The constitution files shipped in the repository, as repo-relative paths."""
    return sorted(f"constitutions/{p.name}" for p in (REPO / "constitutions").glob("*.json"))


def load(path: str) -> Constitution:
    """Load and validate a constitution file.

    `path` is used as is when absolute, else tried relative to the current directory and then
    relative to the repository root. Any problem raises `ConfigError`.
    """
    file = _resolve(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read file: {e}") from e
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from e
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: duplicate field {e.args[0]!r}") from e
    return _Checker(path).constitution(data, str(file))


def _resolve(path: str) -> Path:
    given = Path(path).expanduser()
    tried = [given] if given.is_absolute() else [Path.cwd() / given, REPO / given]
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{path}: file not found (tried {', '.join(str(p) for p in tried)})")


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _kind(value: Any) -> str:
    """A JSON value's type in words, for error messages."""
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


class _Checker:
    """Walks the parsed JSON; every check knows its field path for the error message."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, where: str, message: str) -> NoReturn:
        prefix = f"{self.file}: {where}: " if where else f"{self.file}: "
        raise ConfigError(prefix + message)

    def obj(
        self, value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ):
        if not isinstance(value, dict):
            self.fail(where, f"expected an object, got {_kind(value)}")
        allowed = required + optional
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(where, f"unknown field {key!r}{hint}")
        for key in required:
            if key not in value:
                self.fail(_join(where, key), "missing")
        return value

    def text(self, value: Any, where: str, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            self.fail(where, f"expected a string, got {_kind(value)}")
        if not allow_empty and not value.strip():
            self.fail(where, "empty string")
        return value

    def items(self, value: Any, where: str, non_empty: bool) -> list[Any]:
        if not isinstance(value, list):
            self.fail(where, f"expected a list, got {_kind(value)}")
        if non_empty and not value:
            self.fail(where, "empty list")
        return value

    def conversation(self, value: Any, where: str, last: str) -> Conversation:
        turns = []
        for i, turn in enumerate(self.items(value, where, non_empty=True)):
            at = f"{where}[{i}]"
            self.obj(turn, at, ("role", "content"))
            role = turn["role"]
            if role not in ROLES:
                self.fail(f"{at}.role", f"expected 'user' or 'assistant', got {role!r}")
            turns.append((role, self.text(turn["content"], f"{at}.content")))
        if turns[-1][0] != last:
            got = _A_TURN[turns[-1][0]]
            self.fail(where, f"must end with {_A_TURN[last]} turn, got {got} turn")
        return tuple(turns)

    def revision_example(self, value: Any, where: str) -> RevisionExample:
        keys = ("critique_request", "critique", "revision_request", "revision")
        self.obj(value, where, ("conversation", *keys))
        conv = self.conversation(value["conversation"], f"{where}.conversation", "assistant")
        texts = {k: self.text(value[k], f"{where}.{k}") for k in keys}
        return RevisionExample(conversation=conv, **texts)

    def comparison_example(self, value: Any, where: str) -> ComparisonExample:
        keys = ("question", "a", "b")
        self.obj(value, where, ("conversation", *keys, "answer"), ("reasoning",))
        conv = self.conversation(value["conversation"], f"{where}.conversation", "user")
        texts = {k: self.text(value[k], f"{where}.{k}") for k in keys}
        answer = value["answer"]
        if answer not in ("A", "B"):
            self.fail(f"{where}.answer", f"expected 'A' or 'B', got {answer!r}")
        reasoning = self.text(value.get("reasoning", ""), f"{where}.reasoning", allow_empty=True)
        return ComparisonExample(conversation=conv, answer=answer, reasoning=reasoning, **texts)

    def constitution(self, data: Any, resolved: str) -> Constitution:
        required = ("name", "description", "sl_principles", "rl_principles")
        self.obj(data, "", required, ("few_shot", "cot_preamble"))
        name = self.text(data["name"], "name")
        description = self.text(data["description"], "description", allow_empty=True)
        sl = []
        for i, item in enumerate(self.items(data["sl_principles"], "sl_principles", True)):
            at = f"sl_principles[{i}]"
            self.obj(item, at, ("critique", "revision"))
            sl.append(
                SLPrinciple(
                    self.text(item["critique"], f"{at}.critique"),
                    self.text(item["revision"], f"{at}.revision"),
                )
            )
        rl = [
            self.text(q, f"rl_principles[{i}]")
            for i, q in enumerate(self.items(data["rl_principles"], "rl_principles", True))
        ]
        few = self.obj(data.get("few_shot", {}), "few_shot", (), ("revision", "comparison"))
        revision = self.items(few.get("revision", []), "few_shot.revision", False)
        comparison = self.items(few.get("comparison", []), "few_shot.comparison", False)
        return Constitution(
            name=name,
            description=description,
            sl_principles=tuple(sl),
            rl_principles=tuple(rl),
            revision_examples=tuple(
                self.revision_example(x, f"few_shot.revision[{i}]") for i, x in enumerate(revision)
            ),
            comparison_examples=tuple(
                self.comparison_example(x, f"few_shot.comparison[{i}]")
                for i, x in enumerate(comparison)
            ),
            cot_preamble=self.text(data.get("cot_preamble", ""), "cot_preamble", allow_empty=True),
            path=resolved,
        )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
