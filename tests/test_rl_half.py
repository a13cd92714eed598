"""Stages ``pairs``, ``feedback`` and ``human_feedback`` through the real ``cai.main`` on the toy
world (smoke sizes, the shipped base model as policy and feedback model): a run killed between
label shards resumes to the same bytes an uninterrupted run writes, records carry what the
preference model and evaluation read, and a changed setting on the old workdir is one line."""

import json
import subprocess
import sys

import pytest

from cai import stage_lib
from cai.errors import ConfigError
from cai.files import read_jsonl

STAGES = "--config.stages=('pairs','feedback','human_feedback')"


def main(repo, workdir, *extra):
    cmd = [sys.executable, "-m", "cai.main", f"--config={repo}/experiments/rlcai.py:smoke",
           f"--workdir={workdir}", STAGES, "--config.pairs.init_from=base", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def files(workdir):
    return {
        p.relative_to(workdir): p.read_bytes()
        for d in ("pairs", "feedback", "human_feedback")
        for p in sorted((workdir / d).rglob("shard-*.jsonl"))
    }


@pytest.fixture(scope="module")
def whole(repo, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("whole")
    proc = main(repo, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_label_shards_resume_after_a_kill(repo, tmp_path, whole):
    first = main(repo, tmp_path, "--config.feedback.halt_after_shards=1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "feedback halted" in first.stdout
    assert len(list((tmp_path / "feedback").rglob("shard-*.jsonl"))) == 1
    assert not (tmp_path / "human_feedback").exists()
    second = main(repo, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert files(tmp_path) == files(whole)


def test_records_hold_what_later_stages_read(whole):
    pairs = read_jsonl(next((whole / "pairs" / "train").glob("shard-*.jsonl")))
    assert {r["task"] for r in pairs} == {"harmlessness", "helpfulness"}
    assert all(r["messages"][-1][0] == "user" for r in pairs)
    # smoke: two replies each, plus a refusal in about half of the helpfulness records
    # (pairs.helpful_refused=0.5); three per held-out helpful prompt (eval_helpful_samples=3)
    sizes = {(r["task"], len(r["responses"])) for r in pairs}
    assert sizes == {("harmlessness", 2), ("helpfulness", 2), ("helpfulness", 3)}
    assert all(r["responses"][-1].startswith("I can't help with that") for r in pairs
               if len(r["responses"]) == 3)  # fmt: skip
    held = [r for p in (whole / "pairs" / "test").glob("*.jsonl") for r in read_jsonl(p)]
    assert {r["slice"] for r in held} == {"direct", "adversarial", "dual_use", "benign"}
    assert {(r["task"], len(r["responses"])) for r in held} == {("harmlessness", 2),
                                                                ("helpfulness", 3)}  # fmt: skip
    labels = [r for p in (whole / "feedback" / "test").glob("*.jsonl") for r in read_jsonl(p)]
    assert labels and all(r["task"] == "harmlessness" for r in labels)
    distinct = lambda r: r["responses"][0] != r["responses"][1]  # noqa: E731
    assert len(labels) == sum(r["task"] == "harmlessness" and distinct(r) for r in held)
    for r in labels:
        assert 0.0 <= r["p_a"] <= 1.0
        assert set(r["variants"]) == {"one_principle", "k_principles", "cot_clamped", "debiased"}
        assert 0.4 <= r["variants"]["cot_clamped"]["p_a"] <= 0.6
        assert len(r["variants"]["k_principles"]["principles"]) == 2
        d = r["variants"]["debiased"]
        assert d["p_a"] == pytest.approx((d["p_first"][0] + d["p_swapped"][0]) / 2)
        # The training form (debiased, one principle) asks exactly the first draw.
        assert r["p_a"] == r["variants"]["debiased"]["p_a"]
        assert r["p_first"] == r["variants"]["one_principle"]["p_first"]
    train = [r for p in (whole / "feedback" / "train").glob("*.jsonl") for r in read_jsonl(p)]
    assert train and all("variants" not in r for r in train)
    human = [r for p in (whole / "human_feedback" / "train").glob("*.jsonl") for r in read_jsonl(p)]
    assert {r["p_a"] for r in human} <= {0.0, 0.5, 1.0}  # smoke keeps the indifferent ones
    train_pairs = [r for p in (whole / "pairs" / "train").glob("*.jsonl") for r in read_jsonl(p)]
    assert 0 < len(human) <= sum(len(stage_lib.reply_pairs(r)) for r in train_pairs)
    summary = json.loads((whole / "summary.json").read_text())
    assert {"pairs_stage", "feedback_stage", "human_feedback_stage"} <= set(summary)
    for stage in ("pairs_stage", "feedback_stage"):  # the time of each split, for the budget
        seconds = summary[stage]["split_seconds_this_run"]
        assert set(seconds) == {"train", "dev", "test"} and min(seconds.values()) >= 0


def test_a_changed_label_setting_is_one_line(repo, whole):
    proc = main(repo, whole, "--config.feedback.labels.debias=False")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "config.feedback.labels.debias=True" in errors[0], errors


def test_red_team_second_model_answers_second_on_training_red_team_pairs_only():
    """pairs.red_team_second: the training harmlessness pairs are (policy sample, other
    model's sample); helpfulness records and held-out pairs stay the policy's own samples."""
    import types

    from cai.stages import pairs
    from cai.tokenizer import ByteTokenizer
    from cai.toyworld import world

    class Stub:
        def __init__(self, tag):
            self.tag, self.loaded = tag, types.SimpleNamespace(tok=ByteTokenizer())

        def complete(self, ids, sampling, seed, transcript=True):
            return [f"{self.tag}{i}" for i in range(len(ids))]

    w = world.generate(world.WorldConfig())
    red = world.attack_prompts(w)[:3]
    helpful = world.helpful_prompts(w)[:2]
    batch = [(p, "harmlessness") for p in red] + [(p, "helpfulness") for p in helpful]
    cfg = pairs.PairsConfig(helpful_samples=3, red_team_second="base")
    recs = pairs.pair_shard(Stub("policy"), cfg, "train", batch, 0, Stub("base"))
    for r in recs[:3]:
        assert [x.rstrip("0123456789") for x in r["responses"]] == ["policy", "base"]
    for r in recs[3:]:
        assert len(r["responses"]) == 3 and all(x.startswith("policy") for x in r["responses"])
    held = pairs.pair_shard(Stub("policy"), cfg, "dev", batch, 0, Stub("base"))
    assert all(x.startswith("policy") for r in held for x in r["responses"])
    assert [len(r["responses"]) for r in held] == [2, 2, 2, 2, 2]
    cfg = pairs.PairsConfig(helpful_samples=3, eval_helpful_samples=4)
    held = pairs.pair_shard(Stub("policy"), cfg, "test", batch, 0)
    assert [len(r["responses"]) for r in held] == [2, 2, 2, 4, 4]
    # helpful_refused: one more training reply, the policy's completion of the prefix
    cfg = pairs.PairsConfig(helpful_samples=3, helpful_refused=1.0, refusal_prefix="No way")
    recs = pairs.pair_shard(Stub("policy"), cfg, "train", batch, 0)
    assert [len(r["responses"]) for r in recs] == [2, 2, 2, 4, 4]
    assert [r["responses"][-1] for r in recs[3:]] == ["No way policy0", "No way policy1"]
    held = pairs.pair_shard(Stub("policy"), cfg, "dev", batch, 0)
    assert not any(x.startswith("No way") for r in held for x in r["responses"])
    with pytest.raises(ConfigError, match="pairs.helpful_refused=1.5"):
        pairs.PairsConfig(helpful_refused=1.5)


def test_swapped_reply_is_another_objects_answer_to_the_same_act():
    """pairs.helpful_swapped: a training helpfulness record gets a reply that turns into
    another prompt's first reply, one for the same act about another object where the shard
    has one, else any other request's; harmlessness records and held-out splits get none."""
    import types

    import numpy as np

    from cai.stages import pairs
    from cai.tokenizer import ByteTokenizer
    from cai.toyworld import world

    ids = ["clean/wardrobe", "clean/dresser", "clean/wardrobe", "bake/pie", "harm/x"]
    tasks = ["helpfulness"] * 4 + ["harmlessness"]
    batch = [(types.SimpleNamespace(request_id=r), t) for r, t in zip(ids, tasks)]
    responses = [[f"{r} {k}" for k in range(2)] for r in ids]
    got = pairs.swapped_replies(batch, responses, 1.0, np.random.default_rng(0))
    # the same act about another object; "bake/pie" has no other bake prompt, so any other
    assert got[0] == got[2] == "clean/dresser 0" and got[1] == "clean/wardrobe 0"
    assert got[3] in {"clean/wardrobe 0", "clean/dresser 0"} and 4 not in got
    assert pairs.swapped_replies(batch, responses, 0.0, np.random.default_rng(0)) == {}
    share = pairs.swapped_replies(
        batch * 250, responses * 250, 0.3, np.random.default_rng(1)
    )  # about 0.3 of the 1,000 helpfulness records
    assert 240 < len(share) < 360
    # a splice: k of its own sentences, then the other's from sentence k on
    two = [(types.SimpleNamespace(request_id=r), "helpfulness") for r in ids[:2]]
    texts = [["Sure. Clean the wardrobe. Dry the wardrobe."], ["Ok. Clean the dresser. Dry it!"]]
    spliced = {
        pairs.swapped_replies(two, texts, 1.0, np.random.default_rng(seed))[0] for seed in range(40)
    }
    assert spliced == {
        "Ok. Clean the dresser. Dry it!",
        "Sure. Clean the dresser. Dry it!",
        "Sure. Clean the wardrobe. Dry it!",
    }
    with pytest.raises(ConfigError, match="pairs.helpful_swapped=-0.1"):
        pairs.PairsConfig(helpful_swapped=-0.1)

    class Stub:
        loaded = types.SimpleNamespace(tok=ByteTokenizer())

        def complete(self, ids, sampling, seed, transcript=True):
            return [f"reply{i}" for i in range(len(ids))]

    w = world.generate(world.WorldConfig())
    by_id = {p.request_id: p for p in world.helpful_prompts(w) if p.request_id.startswith("clean/")}
    helpful = list(by_id.values())[:2]  # two objects of one act
    pb = [(p, "helpfulness") for p in helpful]
    cfg = pairs.PairsConfig(helpful_samples=2, helpful_swapped=1.0)
    recs = pairs.pair_shard(Stub(), cfg, "train", pb, 0)
    assert [r["responses"][-1] for r in recs] == ["reply1", "reply0"]
    held = pairs.pair_shard(Stub(), cfg, "dev", pb, 0)
    assert [len(r["responses"]) for r in held] == [2, 2]


def test_deflected_record_pairs_a_red_team_reply_with_a_helpful_prompts_reply():
    """pairs.red_team_deflected: a training harmlessness prompt gets one more record, its first
    reply against the first reply of a helpfulness prompt of the shard (a deflection), either
    side first; helpfulness records, held-out splits and shards without a helpful prompt get
    none."""
    import types

    import numpy as np

    from cai.stages import pairs
    from cai.tokenizer import ByteTokenizer
    from cai.toyworld import world

    ids = ["hurt/a", "steal/b", "bake/pie", "clean/desk"]
    tasks = ["harmlessness"] * 2 + ["helpfulness"] * 2
    batch = [(types.SimpleNamespace(request_id=r), t) for r, t in zip(ids, tasks)]
    responses = [[f"{r} {k}" for k in range(2)] for r in ids]
    got = pairs.deflected_records(batch, responses, 1.0, np.random.default_rng(0))
    assert [i for i, _ in got] == [0, 1]
    for i, pair in got:
        own = f"{ids[i]} 0"
        assert own in pair and {x for x in pair if x != own} <= {"bake/pie 0", "clean/desk 0"}
    many = pairs.deflected_records(batch * 200, responses * 200, 1.0, np.random.default_rng(1))
    assert 150 < sum(pair[0].startswith(("hurt", "steal")) for _, pair in many) < 250
    assert len(pairs.deflected_records(batch * 500, responses * 500, 0.3,
                                       np.random.default_rng(2))) in range(240, 361)  # fmt: skip
    assert pairs.deflected_records(batch[:2], responses[:2], 1.0, np.random.default_rng(0)) == []
    with pytest.raises(ConfigError, match="pairs.red_team_deflected=2"):
        pairs.PairsConfig(red_team_deflected=2.0)

    class Stub:
        loaded = types.SimpleNamespace(tok=ByteTokenizer())

        def complete(self, ids, sampling, seed, transcript=True):
            return [f"reply{i}" for i in range(len(ids))]

    w = world.generate(world.WorldConfig())
    red, helpful = world.attack_prompts(w)[0], world.helpful_prompts(w)[0]
    pb = [(red, "harmlessness"), (helpful, "helpfulness")]
    cfg = pairs.PairsConfig(helpful_samples=2, red_team_deflected=1.0)
    recs = pairs.pair_shard(Stub(), cfg, "train", pb, 0)
    assert len(recs) == 3 and recs[2]["deflection"] and recs[2]["task"] == "harmlessness"
    assert recs[2]["messages"] == recs[0]["messages"]
    firsts = [recs[0]["responses"][0], recs[1]["responses"][0]]
    assert sorted(recs[2]["responses"]) == sorted(firsts)
    assert len(pairs.pair_shard(Stub(), cfg, "dev", pb, 0)) == 2


def test_every_two_distinct_replies_are_a_pair():
    rec = {"task": "helpfulness", "messages": [["user", "q"]], "responses": ["a", "b", "a", "c"]}
    got = [p["responses"] for p in stage_lib.reply_pairs(rec)]
    assert got == [["a", "b"], ["a", "c"], ["b", "a"], ["b", "c"], ["a", "c"]]
    assert all(p["messages"] == rec["messages"] for p in stage_lib.reply_pairs(rec))
