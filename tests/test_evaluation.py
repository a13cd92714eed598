"""Evaluation figures from hand-made replies, and the real ``cai.main`` on the smoke config
writing ``summary.json["base"]`` with per-slice figures."""

import json
import random
import subprocess
import sys

import pytest

from cai import evaluation
from cai.toyworld import corpus, world
from cai.toyworld.judge import judge

W = world.generate(world.WorldConfig())
PROMPTS = [p for ps in world.eval_prompts(W).values() for p in ps]


def reply(prompt: world.Prompt, behaviour: str) -> str:
    req, rng = W.by_id(prompt.request_id), random.Random(0)
    if behaviour == "comply":
        return corpus.compliant(req, rng)
    if behaviour == "evade":
        return "I can't help with that."
    if behaviour == "wrong_object":  # complies, but about another object of the same act
        other = next(r for r in W.split("train") if r.family == req.family)
        return corpus.compliant(other, rng)
    return corpus.explained_refusal(req, rng) if req.harmful else corpus.compliant(req, rng)


def figures(behaviour: str) -> dict:
    replies = [reply(p, behaviour) for p in PROMPTS]
    verdicts, records = evaluation.judge_replies(W, PROMPTS, replies)
    assert len(records) == len(PROMPTS)
    return evaluation.summarize(verdicts, [True, False], [False, False, True], [True])


def test_helpful_only_model_figures():
    s = figures("comply")
    assert s["harmless_rate"] == 0.0 and s["helpful_rate"] == 1.0 and s["evasive_rate"] == 0.0
    assert s["critique_accuracy"] == 0.5 and s["critique_false_alarm"] == pytest.approx(1 / 3)
    assert s["comparison_accuracy"] == 1.0
    assert set(s["slices"]) == set(world.EVAL_SLICES)
    assert s["slices"]["adversarial"]["harmless_rate"] == 0.0
    assert s["slices"]["dual_use"]["helpful_rate"] == 1.0
    assert s["slices"]["direct"]["n"] == len(world.eval_prompts(W)["direct"])


def test_harmless_and_explaining_model_figures():
    s = figures("explain")
    assert s["harmless_rate"] == 1.0 and s["helpful_rate"] == 1.0 and s["evasive_rate"] == 0.0
    assert s["slices"]["direct"]["explained_refusal_rate"] == 1.0


def test_evasive_model_figures():
    s = figures("evade")
    assert s["harmless_rate"] == 1.0 and s["helpful_rate"] == 0.0 and s["evasive_rate"] == 1.0
    assert s["slices"]["benign"]["evasive_rate"] == 1.0
    assert s["slices"]["direct"]["explained_refusal_rate"] == 0.0


def test_wrong_object_compliance_is_harmful_and_counted():
    s = figures("wrong_object")
    assert s["harmless_rate"] == 0.0 and s["helpful_rate"] == 0.0
    assert s["slices"]["adversarial"]["wrong_entity_rate"] == 1.0
    assert figures("comply")["slices"]["direct"]["wrong_entity_rate"] == 0.0


def test_corpus_answers_get_the_verdicts_they_are_written_for():
    """The judge's any-object step patterns must not fire on refusals: every request, several
    phrasings of each kind of answer."""
    for req in W.requests:
        for seed in range(3):
            rng = random.Random(seed)
            v = judge(req, corpus.compliant(req, rng))
            assert v.harmful == req.harmful and v.helpful != req.harmful and v.steps_given == 3
            if req.harmful:
                v = judge(req, corpus.explained_refusal(req, rng))
                assert not v.harmful and v.refused and v.explained and v.harm_steps == 0
                assert judge(req, corpus.knowledge(req, rng)).harm_steps == 0


def test_reply_is_cut_where_the_next_turn_starts():
    assert evaluation.cut(" First, x. Then, y.\n\nHuman: more?") == "First, x. Then, y."
    assert evaluation.cut(" Critique text.\n\nRevisionRequest: ...") == "Critique text."


def test_main_pretrains_and_evaluates_the_toy_world(repo, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cai.main", f"--config={repo}/experiments/pretrain_toy.py:smoke",
         f"--workdir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = json.loads((tmp_path / "summary.json").read_text())["base"]
    for key in ("harmless_rate", "helpful_rate", "evasive_rate", "critique_accuracy"):
        assert 0.0 <= base[key] <= 1.0, key
    assert set(base["slices"]) == set(world.EVAL_SLICES)
    records = [json.loads(line) for line in (tmp_path / "evaluate/base.jsonl").open()]
    assert {r["slice"] for r in records} == {*world.EVAL_SLICES, "critique"}
    # The tokenizer was trained on the corpus and travels with the checkpoint.
    assert (tmp_path / "pretrain/tokenizer.model").exists()
    meta = next((tmp_path / "pretrain/checkpoints").glob("*/metadata/metadata"))
    assert json.loads(meta.read_text())["tokenizer"]["kind"] == "sentencepiece"
    assert list((tmp_path / "data/toy_world").glob("corpus_*/1.0.0/*.array_record*"))


@pytest.mark.parametrize("arg", [None, "smoke"])
def test_pretrain_toy_config_converts(repo, arg):
    import importlib.util

    from cai import configs, pretrain
    from cai.model import ModelConfig

    spec = importlib.util.spec_from_file_location(
        "pretrain_toy", repo / "experiments/pretrain_toy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    model = configs.to_dataclass(ModelConfig, config.model, "model")
    data = configs.to_dataclass(pretrain.DataConfig, config.pretrain.data, "pretrain.data")
    assert data.source == "toy_world" and model.vocab_size >= data.vocab_size
    configs.to_dataclass(corpus.CorpusConfig, config.pretrain.corpus, "pretrain.corpus")
    configs.to_dataclass(evaluation.EvalConfig, config.evaluate, "evaluate")
    configs.to_dataclass(world.WorldConfig, config.world, "world")
    with pytest.raises(ValueError, match="unknown variant"):
        module.get_config("nope")
