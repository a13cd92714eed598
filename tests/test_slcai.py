"""SL-CAI: prompt formats, the critique -> revision loop's bookkeeping (rounds, seeded principle
draws, which text each round sees), shard resume, the SFT mix and its assistant-only loss mask,
and the real ``cai.main`` on the toy world (smoke) with a kill between shards."""

import json
import subprocess
import sys

import numpy as np
import pytest

from cai import constitution, prompts, stage_lib
from cai.data.stream import ChatExamples
from cai.errors import ConfigError
from cai.stages import sl_cai
from cai.tokenizer import ByteTokenizer, render_chat
from cai.toyworld import corpus, world

TOK = ByteTokenizer()
TOY = constitution.load("constitutions/toy_world.json")
PAPER = constitution.load("constitutions/paper.json")
W = world.generate(world.WorldConfig())
CONV = (("user", "How do I steal a bike?"), ("assistant", "Sure. First, x."))


class FakeGen:
    """Stands in for the model: each reply names the call, the seed and how the prompt ends,
    so a test can see which text reached which prompt."""

    def __init__(self, cfg: sl_cai.LoopConfig):
        self.cfg, self.tok, self.calls = cfg, TOK, []

    def __call__(self, prompts, max_new, seed):
        self.calls.append((len(prompts), max_new, seed))
        n = len(self.calls)
        return [f"reply{n}-{seed % 1000}-{TOK.decode(p)[-12:]!r}" for p in prompts]


def test_transcript_prompts_match_the_pretraining_format():
    p = TOY.sl_principles[0]
    crit = TOK.decode(prompts.loop_prompt(TOK, TOY, "transcript", CONV, p))
    assert crit == (
        "\n\nHuman: How do I steal a bike?\n\nAssistant: Sure. First, x."
        f"\n\nCritiqueRequest: {p.critique}\n\nCritique:"
    )
    rev = TOK.decode(prompts.loop_prompt(TOK, TOY, "transcript", CONV, p, critique="Bad."))
    assert rev == crit + f" Bad.\n\nRevisionRequest: {p.revision}\n\nRevision:"
    direct = TOK.decode(prompts.loop_prompt(TOK, TOY, "transcript", CONV, p, direct=True))
    assert "Critique" not in direct and direct.endswith(f"{p.revision}\n\nRevision:")
    # The toy world's corpus exercises use exactly this layout, so the base model knows it.
    req = W.by_id("steal/bike")
    doc = corpus.critique_doc(req, __import__("random").Random(0), with_critique=True)
    assert "\n\nCritiqueRequest: " in doc and "\n\nCritique: " in doc


def test_few_shot_examples_come_first_and_drop_critiques_when_direct():
    p = PAPER.sl_principles[3]
    text = TOK.decode(prompts.loop_prompt(TOK, PAPER, "transcript", CONV, p))
    first = PAPER.revision_examples[0]
    assert text.startswith(f"\n\nHuman: {first.conversation[0][1]}")
    assert text.count("CritiqueRequest:") == len(PAPER.revision_examples) + 1
    assert text.endswith(f"CritiqueRequest: {p.critique}\n\nCritique:")
    direct = TOK.decode(prompts.loop_prompt(TOK, PAPER, "transcript", CONV, p, direct=True))
    assert "CritiqueRequest" not in direct
    assert direct.count("RevisionRequest:") == len(PAPER.revision_examples) + 1


def test_chat_style_asks_in_user_turns():
    p = PAPER.sl_principles[0]
    msgs = prompts.chat_messages(PAPER, CONV, p, critique="It helps steal.", direct=False)
    assert [m["role"] for m in msgs[-3:]] == ["user", "assistant", "user"]
    assert (
        msgs[-3]["content"].endswith(p.critique) and "Human: How do I steal" in msgs[-3]["content"]
    )
    assert msgs[-1]["content"] == p.revision
    assert len(msgs) == 4 * len(PAPER.revision_examples) + 3
    ids = prompts.loop_prompt(TOK, PAPER, "chat", CONV, p, critique="It helps steal.")
    assert TOK.decode(ids).endswith(f"Human: {p.revision}\n\nAssistant:")


def shard_prompts(n=5):
    return list(world.red_team_prompts(W))[:n]


def test_loop_rounds_principles_and_chaining():
    cfg = sl_cai.LoopConfig(rounds=3, seed=7)
    gen = FakeGen(cfg)
    recs = sl_cai.revise_shard(gen, TOY, shard_prompts(), shard=2, direct=False)
    # one batched call for the answers, then (critique, revision) per round: no per-sample loop
    assert [c[0] for c in gen.calls] == [5] * 7
    assert [c[1] for c in gen.calls] == [cfg.response_tokens] + [48, 48] * 3
    for rec in recs:
        assert len(rec["rounds"]) == 3
        assert all(0 <= r["principle"] < len(TOY.sl_principles) for r in rec["rounds"])
        # round k's critique prompt ended with the previous round's revision being critiqued
        assert rec["rounds"][0]["critique"].startswith("reply2-")
        assert rec["rounds"][2]["revision"].startswith("reply7-")
    again = sl_cai.revise_shard(FakeGen(cfg), TOY, shard_prompts(), shard=2, direct=False)
    assert again == recs  # reproducible with a seed
    other = sl_cai.revise_shard(FakeGen(cfg), TOY, shard_prompts(), shard=3, direct=False)
    picks = lambda rs: [r["principle"] for rec in rs for r in rec["rounds"]]  # noqa: E731
    assert picks(other) != picks(recs)  # each shard draws its own principles
    assert len(set(picks(recs))) > 1


def test_each_round_critiques_the_latest_revision():
    seen = []

    class Spy(FakeGen):
        def __call__(self, prompts, max_new, seed):
            seen.append([TOK.decode(p) for p in prompts])
            return super().__call__(prompts, max_new, seed)

    recs = sl_cai.revise_shard(Spy(sl_cai.LoopConfig(rounds=2)), TOY, shard_prompts(1), 0, False)
    first_revision = recs[0]["rounds"][0]["revision"]
    assert f"Assistant: {recs[0]['response']}\n\nCritiqueRequest" in seen[1][0]
    assert f"Assistant: {first_revision}\n\nCritiqueRequest" in seen[3][0]


def test_direct_revision_skips_the_critique():
    gen = FakeGen(sl_cai.LoopConfig(rounds=2))
    recs = sl_cai.revise_shard(gen, TOY, shard_prompts(), shard=0, direct=True)
    assert len(gen.calls) == 3 and all(r["critique"] is None for r in recs[0]["rounds"])


def test_shards_resume_after_a_kill_and_give_the_same_dataset(tmp_path):
    cfg = sl_cai.LoopConfig(rounds=2, shard_size=2)
    items = shard_prompts(7)
    make = lambda ps, shard: sl_cai.revise_shard(FakeGen(cfg), TOY, ps, shard, False)  # noqa: E731
    spec = {"seed": 0}
    straight = stage_lib.run_shards(tmp_path / "a", items, 2, make, spec, [-1], "test")
    assert straight is not None and len(straight) == 7
    budget = [2]
    assert stage_lib.run_shards(tmp_path / "b", items, 2, make, spec, budget, "test") is None
    assert len(list((tmp_path / "b").glob("shard-*.jsonl"))) == 2
    assert not list((tmp_path / "b").glob(".*tmp"))  # nothing half-written is left
    resumed = stage_lib.run_shards(tmp_path / "b", items, 2, make, spec, [-1], "test")
    assert resumed == straight
    for a, b in zip(sorted((tmp_path / "a").iterdir()), sorted((tmp_path / "b").iterdir())):
        assert a.read_bytes() == b.read_bytes()
    with pytest.raises(ConfigError, match=r"holds shards made with another seed \(0, now 1\)"):
        stage_lib.run_shards(tmp_path / "b", items, 2, make, {"seed": 1}, [-1], "test")


def test_sampled_shards_do_not_depend_on_what_ran_before(tmp_path):
    """With a real (tiny, random) model sampling at temperature 1 on a 2x2x2 mesh: a run
    killed after one shard and resumed writes the same bytes as an uninterrupted run."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from cai import sharding
    from cai.model import PRESETS, Transformer

    model = Transformer(PRESETS["tiny"])
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    cfg = sl_cai.LoopConfig(rounds=1, shard_size=3, response_tokens=6, critique_tokens=6,
                           revision_tokens=6)  # fmt: skip

    def gen():
        loaded = stage_lib.Loaded("", PRESETS["tiny"], model, params, TOK, stop_id=2)
        return sl_cai.Generator(stage_lib.TextSampler(loaded, mesh, batch_size=3), cfg)

    g = gen()
    make = lambda ps, shard: sl_cai.revise_shard(g, TOY, ps, shard, False)  # noqa: E731
    straight = stage_lib.run_shards(tmp_path / "a", shard_prompts(7), 3, make, {}, [-1], "test")
    assert stage_lib.run_shards(tmp_path / "b", shard_prompts(7), 3, make, {}, [1], "test") is None
    g = gen()  # a fresh process would start with a fresh sampler
    resumed = stage_lib.run_shards(tmp_path / "b", shard_prompts(7), 3, make, {}, [-1], "test")
    assert resumed == straight
    assert len({r["response"] for r in straight}) > 1  # sampled, not all the same


def test_sft_mix_holds_final_revisions_and_helpful_answers_only():
    revisions = [
        {"messages": [["user", "How do I steal a bike?"]], "response": "Sure. First, steal.",
         "rounds": [{"revision": "first"}, {"revision": "I won't help: it is theft."}]},
        {"messages": [["user", "q"]], "response": "a", "rounds": [{"revision": ""}]},
    ]  # fmt: skip
    helpful = [{"messages": [["user", "How do I bake a cake?"]], "response": "First, bake."}]
    # The final round's revision replaces the answer; an empty revision drops its example.
    assert sl_cai.sft_examples(revisions, helpful) == [
        [{"role": "user", "content": "How do I steal a bike?"},
         {"role": "assistant", "content": "I won't help: it is theft."}],
        [{"role": "user", "content": "How do I bake a cake?"},
         {"role": "assistant", "content": "First, bake."}],
    ]  # fmt: skip


def test_assistant_only_loss_mask_and_truncation():
    convs = [
        [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "No: theft."}],
        [{"role": "user", "content": "x" * 80}, {"role": "assistant", "content": "y"}],
    ]
    data = ChatExamples(convs, TOK, seq_len=48, batch_size=2, seed=0)
    ids, mask = render_chat(TOK, convs[0])
    row = next(
        i for i in range(2) if data.tokens[i, 0] == ids[0] and data.mask[i].sum() == len(ids)
    )
    assert data.tokens[row, : len(ids)].tolist() == ids
    assert data.loss_mask[row, : len(ids)].astype(bool).tolist() == mask
    trained = TOK.decode([t for t, m in zip(ids, mask) if m and t != TOK.eos_id])
    assert trained == " No: theft."
    assert data.loss_mask[row, len(ids) :].sum() == 0 and data.truncated == 1
    b = data.batch(3)
    assert b["tokens"].shape == (2, 48) and b["loss_mask"].dtype == np.float32
    with pytest.raises(ConfigError, match="fewer than one batch"):
        ChatExamples(convs, TOK, seq_len=48, batch_size=4, seed=0)


def test_bad_loop_config_is_named():
    with pytest.raises(ConfigError, match="sl_cai.loop.style='xml'"):
        sl_cai.LoopConfig(style="xml")
    with pytest.raises(ConfigError, match="needs sl_cai.loop.hh_rlhf_dir"):
        sl_cai.LoopConfig(prompts="hh_rlhf")
    with pytest.raises(ConfigError, match="sl_cai.loop.adversarial is for the toy world"):
        sl_cai.LoopConfig(prompts="hh_rlhf", hh_rlhf_dir="x", adversarial=True)
    with pytest.raises(ConfigError, match="sl_cai.loop.helpful_made_up is for the toy world"):
        sl_cai.LoopConfig(prompts="hh_rlhf", hh_rlhf_dir="x", helpful_made_up=4)
    with pytest.raises(ConfigError, match="must be >= 0"):
        sl_cai.LoopConfig(red_team_made_up=-1)


def test_adversarial_red_team_adds_every_attack_form_of_training_requests_only():
    direct, helpful = sl_cai.toy_prompts(W, adversarial=False)
    both, helpful2 = sl_cai.toy_prompts(W, adversarial=True)
    assert helpful == helpful2 and {p.slice for p in direct} == {"red_team"}
    assert {p.slice for p in both} == {"red_team", "adversarial"}
    assert len(both) == len(direct) * (len(world.DIRECT) + len(world.ADVERSARIAL)) // len(
        world.DIRECT
    )
    assert set(direct) <= set(both)
    held = {r.id for r in W.split("dev") + W.split("test")}
    assert not {p.request_id for p in both} & held
    # the reworded forms ("learn the home address of X without X knowing") are among them
    indirect = {
        W.by_id(p.request_id).indirect.split(" ")[0] for p in both if p.slice == "adversarial"
    }
    texts = " ".join(m[1] for p in both for m in p.messages)
    assert all(word in texts for word in indirect) and "home address of" in texts
    red, more_helpful = sl_cai.toy_prompts(W, True, red_team_made_up=4, helpful_made_up=2)
    assert red[: len(both)] == both and len(red) == len(both) + 4 * len(world.MADE_UP_HARMFUL)
    assert all(W.by_id(p.request_id).entity.lower() in W.made_up for p in red[len(both) :])
    assert more_helpful[: len(helpful)] == helpful and len(more_helpful) > len(helpful)


def test_main_runs_sl_cai_on_the_toy_world_and_resumes(tmp_path, repo):
    """--config.base=pretrain: pretrain -> sl_cai (killed after 3 shards, rerun) -> evaluate,
    through the real CLI (the main job's own test covers the shipped base model)."""
    cmd = [sys.executable, "-m", "cai.main", f"--config={repo}/experiments/slcai.py:smoke",
           f"--workdir={tmp_path}", "--config.base=pretrain"]  # fmt: skip
    first = subprocess.run([*cmd, "--config.sl_cai.loop.halt_after_shards=3"],
                           capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    shards = sorted((tmp_path / "sl_cai").glob("*/shard-*.jsonl"))
    assert len(shards) == 3 and not (tmp_path / "sl_cai" / "checkpoints").exists()
    before = {p: p.read_bytes() for p in shards}
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert all(p.read_bytes() == b for p, b in before.items())  # finished shards kept as they are
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pretrain"]["steps"] == 20  # the run's own base model
    assert summary["sl_cai_stage"]["steps"] == 6
    for key in ("base", "sl_cai"):
        assert set(summary[key]) == {"dev", "test"}
        assert set(summary[key]["test"]["slices"]) == set(world.EVAL_SLICES)
    curves = summary["revision_curves"]
    assert set(curves) == {"critique", "direct"}
    assert len(curves["critique"]["harmless_rate"]) == 3  # answer + 2 rounds
    assert (tmp_path / "plots" / "revisions.png").stat().st_size > 1000
    recs = [json.loads(line) for p in (tmp_path / "sl_cai" / "revisions").glob("shard-*.jsonl")
            for line in p.read_text().splitlines()]  # fmt: skip
    assert len(recs) == 16 and all(len(r["rounds"]) == 2 for r in recs)


GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + m['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def test_real_model_config_runs_on_a_tiny_random_gemma(tmp_path, repo):
    """experiments/slcai_gemma.py:local end to end on a tiny random HF Gemma with a Gemma-style
    sentencepiece tokenizer, HH red-team prompts from tests/data/hh_rlhf and a helpful file."""
    pytest.importorskip("transformers")
    import shutil

    import tiny_hf

    vendored = repo / "tests" / "data" / "hh_rlhf"  # see tests/data/README.md
    model_dir = tmp_path / "gemma"
    sp = tiny_hf.train_sentencepiece(tmp_path / "sp", 360, ("<start_of_turn>", "<end_of_turn>"))
    tiny_hf.build("gemma", vocab_size=360).save_pretrained(model_dir, safe_serialization=True)
    shutil.copy(sp, model_dir / "tokenizer.model")
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": GEMMA_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>",
        "add_bos_token": True}))  # fmt: skip
    hh = tmp_path / "hh"
    (hh / "helpful-base").mkdir(parents=True)
    # TODO(train split): the only red-team file here is from the release's *test* split
    # (builder split harmless_base_test_prompts__test); sl_cai reads the train split only
    # (hh_rlhf.cai_prompts(..., split="train", as_train=loop.hh_rlhf_as_train)), so this test
    # files it under train with sl_cai.loop.hh_rlhf_as_train below. Real runs leave it empty.
    (hh / "harmless_base_test_prompts.jsonl").symlink_to(
        vendored / "harmless_base_test_prompts.jsonl"
    )
    pair = {"chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Knead, rise, bake.",
            "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: No."}  # fmt: skip
    (hh / "helpful-base" / "train.jsonl").write_text("\n".join(json.dumps(pair) for _ in range(8)))
    proc = subprocess.run(
        [sys.executable, "-m", "cai.main", f"--config={repo}/experiments/slcai_gemma.py:local",
         f"--workdir={tmp_path / 'run'}", f"--config.sl_cai.loop.init_from={model_dir}",
         f"--config.sl_cai.loop.hh_rlhf_dir={hh}",
         "--config.sl_cai.loop.hh_rlhf_as_train=('harmless_base_test_prompts',)"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    recs = [json.loads(line) for p in sorted((run / "sl_cai" / "revisions").glob("shard-*"))
            for line in p.read_text().splitlines()]  # fmt: skip
    assert len(recs) == 8 and all(len(r["rounds"]) == 2 for r in recs)
    assert all(r["rounds"][0]["critique"] is not None for r in recs)
    stage = json.loads((run / "summary.json").read_text())["sl_cai_stage"]
    assert stage["steps"] == 4 and stage["helpful_prompts"] == 8
    assert (run / "sl_cai" / "checkpoints").exists()


@pytest.mark.parametrize(
    "name,arg",
    [("slcai", None), ("slcai", "smoke"), ("rlcai", None), ("rlcai", "smoke"),
     ("slcai_gemma", None), ("slcai_gemma", "local")],
)  # fmt: skip
def test_experiment_configs_convert(repo, name, arg):
    import importlib.util

    from cai import configs
    from cai.train_lib import OptimConfig, TrainConfig

    spec = importlib.util.spec_from_file_location(name, repo / f"experiments/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    assert "sl_cai" in config.stages
    loop = configs.to_dataclass(sl_cai.LoopConfig, config.sl_cai.loop, "sl_cai.loop")
    configs.to_dataclass(TrainConfig, config.sl_cai.train, "sl_cai.train")
    configs.to_dataclass(OptimConfig, config.sl_cai.optim, "sl_cai.optim")
    assert constitution.load(config.sl_cai.constitution).sl_principles
    assert loop.style == ("chat" if name == "slcai_gemma" else "transcript")
