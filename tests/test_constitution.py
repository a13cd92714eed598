"""Constitution files: the shipped ones load, and malformed ones fail naming file and field."""

import json
from pathlib import Path

import pytest

from cai import constitution
from cai.errors import ConfigError
from cai.toyworld.corpus import COMPARISON_QUESTIONS, CRITIQUE_REQUESTS, REVISION_REQUESTS


def test_shipped_files_load():
    names = constitution.shipped()
    assert {"constitutions/paper.json", "constitutions/minimal.json"} <= set(names)
    assert "constitutions/toy_world.json" in names
    for name in names:
        c = constitution.load(name)
        assert c.name and c.sl_principles and c.rl_principles
        assert Path(c.path).is_absolute()


def test_paper():
    c = constitution.load("constitutions/paper.json")
    assert len(c.sl_principles) == 16 and len(c.rl_principles) == 16
    texts = [t for p in c.sl_principles for t in (p.critique, p.revision)] + list(c.rl_principles)
    assert all(t.strip() for t in texts) and len(set(texts)) == len(texts)
    assert len(c.revision_examples) == 3 and len(c.comparison_examples) == 2
    assert all(e.conversation[-1][0] == "assistant" for e in c.revision_examples)
    assert all(e.conversation[-1][0] == "user" and e.reasoning for e in c.comparison_examples)
    assert {e.answer for e in c.comparison_examples} == {"A", "B"}
    assert c.cot_preamble == "Let's think step by step:"


def test_minimal():
    c = constitution.load("constitutions/minimal.json")
    assert len(c.sl_principles) == 1 and len(c.rl_principles) == 1
    assert c.revision_examples == () and c.comparison_examples == () and c.cot_preamble == ""


def test_toy_world_matches_corpus():
    """The toy base model was pretrained on exactly these texts; the two must never drift."""
    c = constitution.load("constitutions/toy_world.json")
    assert [p.critique for p in c.sl_principles] == list(CRITIQUE_REQUESTS)
    assert [p.revision for p in c.sl_principles] == [
        REVISION_REQUESTS[i % 4] for i in range(len(CRITIQUE_REQUESTS))
    ]
    assert c.rl_principles == COMPARISON_QUESTIONS
    assert c.revision_examples == () and c.comparison_examples == ()


def test_relative_path_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert constitution.load("constitutions/paper.json").name == "paper"


def _valid() -> dict:
    return {
        "name": "t",
        "description": "",
        "sl_principles": [{"critique": "c?", "revision": "r."}],
        "rl_principles": ["q?"],
        "few_shot": {
            "revision": [
                {
                    "conversation": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"},
                    ],
                    "critique_request": "c?",
                    "critique": "fine",
                    "revision_request": "r.",
                    "revision": "hello",
                }
            ],
            "comparison": [
                {
                    "conversation": [{"role": "user", "content": "hi"}],
                    "question": "q?",
                    "a": "x",
                    "b": "y",
                    "answer": "A",
                }
            ],
        },
    }


def _error(tmp_path: Path, data: dict | str) -> str:
    path = tmp_path / "x.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    with pytest.raises(ConfigError) as info:
        constitution.load(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def test_valid_fixture_loads(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(_valid()))
    c = constitution.load(str(path))
    assert c.comparison_examples[0].reasoning == ""
    assert c.revision_examples[0].conversation == (("user", "hi"), ("assistant", "hello"))


def _edit(fn) -> dict:
    data = _valid()
    fn(data)
    return data


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d["sl_principles"][0].pop("critique"), "sl_principles[0].critique: missing"),
        (lambda d: d.pop("rl_principles"), "rl_principles: missing"),
        (lambda d: d.update(sl_principles=[]), "sl_principles: empty list"),
        (
            lambda d: d.update(principals=[]),
            "unknown field 'principals' (did you mean 'sl_principles'?)",
        ),
        (
            lambda d: d["few_shot"]["revision"][0].update(critque="x"),
            "few_shot.revision[0]: unknown field 'critque' (did you mean 'critique'?)",
        ),
        (lambda d: d.update(name=3), "name: expected a string, got int"),
        (lambda d: d.update(rl_principles="q?"), "rl_principles: expected a list, got string"),
        (lambda d: d["rl_principles"].append("  "), "rl_principles[1]: empty string"),
        (
            lambda d: d["few_shot"]["revision"][0]["conversation"][1].update(role="bot"),
            "few_shot.revision[0].conversation[1].role: expected 'user' or 'assistant', got 'bot'",
        ),
        (
            lambda d: d["few_shot"]["revision"][0]["conversation"].pop(),
            "few_shot.revision[0].conversation: must end with an assistant turn, got a user turn",
        ),
        (
            lambda d: d["few_shot"]["comparison"][0]["conversation"].append(
                {"role": "assistant", "content": "x"}
            ),
            "few_shot.comparison[0].conversation: must end with a user turn",
        ),
        (
            lambda d: d["few_shot"]["comparison"][0].update(answer="C"),
            "few_shot.comparison[0].answer: expected 'A' or 'B', got 'C'",
        ),
    ],
)
def test_schema_errors(tmp_path, edit, expected):
    assert expected in _error(tmp_path, _edit(edit))


def test_invalid_json(tmp_path):
    message = _error(tmp_path, '{\n  "name": "t",\n  "description": oops\n}')
    assert "invalid JSON at line 3" in message


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        constitution.load("constitutions/nope.json")
    message = str(info.value)
    assert message.startswith("constitutions/nope.json: file not found")
    assert str(tmp_path / "constitutions/nope.json") in message
    assert str(constitution.REPO / "constitutions/nope.json") in message
