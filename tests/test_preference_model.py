"""The preference model: the soft-label pairwise loss against hand-computed values, the reward read
at the appended end token, encoding and batching of comparisons, a tiny PM learning a planted
preference, and stage ``preference_model`` end to end on a tiny workdir (resume after a kill
gives the same params, a rerun does nothing, a changed config or input is one ConfigError)."""

import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tiny_models import random_params

from cai import configs, dry_run, pretrained, sharding, stage_lib, train_lib
from cai import preference_model as pm
from cai.checkpoint import Checkpointer
from cai.errors import ConfigError, Halted
from cai.model import ModelConfig, Transformer
from cai.sampling import pad_right
from cai.stages import preference_model as stage
from cai.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
# One layer is enough to spot a token anywhere before the end token, and compiles fastest.
TINY = ModelConfig(
    vocab_size=259, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16, mlp_dim=64
)


@functools.cache
def lm_params():
    """A tiny random LM (``tiny_models.random_params``)."""
    return jax.device_put(random_params(TINY))


def on_mesh(params, mesh):
    _, shardings = train_lib.abstract_params(Transformer(TINY), mesh)
    return jax.device_put(params, shardings)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


# ----------------------------------------------------------------------------- the loss


def test_pairwise_loss_by_hand_soft_hard_and_weighted():
    r_a, r_b = jnp.array([2.0, 0.0, 1.0, -1.0]), jnp.array([0.0, 0.0, 3.0, 1.0])
    p, w = jnp.array([1.0, 0.5, 0.25, 0.9]), jnp.array([1.0, 1.0, 2.0, 0.0])
    loss, per = pm.pairwise_loss(r_a, r_b, p, w)
    want = [
        -log_sigmoid(2.0),  # hard label: -log σ(r_chosen - r_rejected)
        math.log(2.0),  # d = 0: log 2 whatever p
        -(0.25 * log_sigmoid(-2.0) + 0.75 * log_sigmoid(2.0)),  # soft label
        -(0.9 * log_sigmoid(-2.0) + 0.1 * log_sigmoid(2.0)),
    ]
    np.testing.assert_allclose(per, want, rtol=1e-6)
    # weighted mean; the weight-0 pair (padding) counts for nothing, weight 2 counts twice
    np.testing.assert_allclose(loss, (want[0] + want[1] + 2 * want[2]) / 4, rtol=1e-6)
    # p = 0 is the hard label on the other side; a soft label's minimum is at d = logit(p)
    flipped, _ = pm.pairwise_loss(r_b[:1], r_a[:1], jnp.zeros(1), jnp.ones(1))
    np.testing.assert_allclose(flipped, want[0], rtol=1e-6)
    grad = jax.grad(lambda d: pm.pairwise_loss(d, jnp.zeros(1), jnp.array([0.8]), jnp.ones(1))[0])
    assert abs(float(grad(jnp.array([math.log(0.8 / 0.2)]))[0])) < 1e-6
    # numerically stable far out: no inf/nan at |d| = 1e4
    big, _ = pm.pairwise_loss(jnp.array([1e4]), jnp.array([-1e4]), jnp.array([0.0]), jnp.ones(1))
    np.testing.assert_allclose(big, 2e4, rtol=1e-6)


def tiny_pm():
    """A random tiny LM with a planted (random, nonzero) scalar head."""
    cfg, params = pm.with_scalar_head(TINY, lm_params())
    key = jax.random.key(1)
    head = {"value_w": jax.random.normal(key, (TINY.d_model,)), "value_b": jnp.asarray(0.3)}
    return Transformer(cfg), {**params, **head}


def test_pm_loss_reads_the_reward_at_each_rows_last_real_token():
    model, params = tiny_pm()
    rows = [pm.encode(TOK, [("user", "Hi?")], r, 40) for r in ["Yes.", "No, sorry.", "Ok", "Hm"]]
    tokens, mask = pad_right(rows, 40, TOK.pad_id)  # A sides: rows 0, 1; B sides: 2, 3
    batch = {"tokens": tokens, "mask": mask, "p": np.array([0.8, 0.0], np.float32),
             "weight": np.array([2.0, 1.0], np.float32)}  # fmt: skip
    loss_fn = jax.jit(lambda params, batch: pm.pm_loss(params, batch, model))
    loss, metrics = loss_fn(params, batch)
    h = jax.jit(model.apply)({"params": params}, tokens, mask).hidden  # [4, T, D]
    r = np.array([h[i, len(rows[i]) - 1] @ params["value_w"] + 0.3 for i in range(4)])
    d = r[:2] - r[2:]
    per = [-(0.8 * log_sigmoid(d[0]) + 0.2 * log_sigmoid(-d[0])), -log_sigmoid(-d[1])]
    np.testing.assert_allclose(loss, (2 * per[0] + per[1]) / 3, rtol=1e-5)
    sign = np.array([1.0, -1.0])
    np.testing.assert_allclose(metrics["accuracy"], np.mean(np.sign(d) == sign), rtol=1e-6)
    np.testing.assert_allclose(metrics["margin"], np.mean(d * sign), rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_mean"], r.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_std"], r.std(), rtol=1e-4)
    # padding after the end token changes nothing
    wide, wide_mask = pad_right(rows, 64, TOK.pad_id)
    again, _ = loss_fn(params, {**batch, "tokens": wide, "mask": wide_mask})
    np.testing.assert_allclose(again, loss, rtol=1e-5)


def test_pairwise_accuracy_skips_ties_in_the_label_and_halves_ties_in_reward():
    out = pm.pairwise_accuracy([1.0, 0.0, 2.0, 5.0], [0.0, 1.0, 2.0, 0.0], [0.9, 0.2, 1.0, 0.5])
    assert out == {"accuracy": (1 + 1 + 0.5) / 3, "n": 3}
    assert pm.pairwise_accuracy([1.0], [0.0], [0.5]) == {"accuracy": None, "n": 0}


def test_with_scalar_head_adds_a_zero_head_sharded_like_the_model():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    params = on_mesh(lm_params(), mesh)
    cfg, out = pm.with_scalar_head(TINY, params)
    assert cfg.scalar_head and not TINY.scalar_head
    assert out["value_w"].shape == (TINY.d_model,) and out["value_b"].shape == ()
    assert not np.any(out["value_w"]) and float(out["value_b"]) == 0.0
    _, shardings = train_lib.abstract_params(Transformer(cfg), mesh)
    assert out["value_w"].sharding == shardings["value_w"]  # embed -> fsdp, as the model says
    assert out["embedding"] is params["embedding"]  # the LM's params are kept as they came
    assert pm.with_scalar_head(cfg, out) == (cfg, out)


# ----------------------------------------------------------------------------- comparisons


class ChatmlBytes(ByteTokenizer):
    """Bytes plus two ChatML markers (ids 259, 260); ``eos`` may be the end-of-turn marker."""

    chat_format, add_bos = "chatml", False

    def __init__(self, eos_id=2):
        self.eos_id = eos_id

    @property
    def vocab_size(self):
        return 261

    def token_id(self, piece):
        return {"<|im_start|>": 259, "<|im_end|>": 260}.get(piece)


def test_encode_appends_exactly_one_end_token_and_cuts_from_the_left():
    msgs = [("user", "How do I bake bread?")]
    ids = pm.encode(TOK, msgs, "Knead it.", 128)
    # HH: render_chat already ends the final assistant turn with EOS; nothing is doubled
    assert ids[0] == TOK.bos_id and ids[-1] == TOK.eos_id and ids.count(TOK.eos_id) == 1
    assert TOK.decode(ids) == "\n\nHuman: How do I bake bread?\n\nAssistant: Knead it."
    for eos in (2, 260):  # ChatML: "...<|im_end|>\n" then EOS, also when EOS is <|im_end|>
        tok = ChatmlBytes(eos)
        ids = pm.encode(tok, msgs, "Knead it.", 128)
        assert ids[-4:] == [*tok.encode("."), 260, *tok.encode("\n"), eos]
    long = pm.encode(TOK, [("user", "x" * 100)], "The reply.", 32)
    assert len(long) == 32 and long[0] == TOK.bos_id and long[-1] == TOK.eos_id
    assert TOK.decode(long).endswith("\n\nAssistant: The reply.")
    batches = pm.PairBatches(
        [pm.Comparison((("user", "x" * 100),), "a", "b", 1.0, "helpfulness")],
        TOK, 32, 2, 0, {"helpfulness": 1.0},
    )  # fmt: skip
    assert batches.truncated == 2


def records(n, task, seed=0, start=0):
    """Synthetic comparisons: the preferred reply contains a 'z' (soft label 0.9)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        plain = "".join(rng.choice(list("abcdefgh"), 6))
        good = plain[:3] + "z" + plain[3:]
        other = "".join(rng.choice(list("abcdefgh"), 7))
        a_good = bool(rng.integers(2))
        out.append({
            "messages": [["user", f"Say something {start + i}."]],
            "responses": [good, other] if a_good else [other, good],
            "p_a": 0.9 if a_good else 0.1, "task": task, "principle": 3,
        })  # fmt: skip
    return out


def test_read_comparisons_checks_every_record_by_index():
    comps = pm.read_comparisons(records(2, "harmlessness"), "x.jsonl")
    assert comps[0].messages == (("user", "Say something 0."),) and comps[0].task == "harmlessness"
    bad = [
        ({"messages": None}, "record 1: no 'messages' key"),
        ({"p_a": 1.5}, r"record 1: p_a=1.5 is outside \[0, 1\]"),
        ({"p_a": float("nan")}, "record 1: p_a=nan is outside"),
        ({"task": "honesty"}, "record 1: task='honesty'"),
        ({"responses": ["only one"]}, "record 1: responses must be a list of two"),
        ({"messages": [["user", "q"], ["assistant", "a"]]}, "record 1: .* end with a user turn"),
        ({"messages": [["human", "q"], ["user", "a"]]}, "record 1: role 'human' is not"),
        ({"messages": [["user"]]}, r"record 1: messages must be \[role, content\] pairs"),
    ]
    for change, message in bad:
        recs = records(2, "helpfulness")
        recs[1].update(change)
        recs[1] = {k: v for k, v in recs[1].items() if v is not None}
        with pytest.raises(ConfigError, match=f"x.jsonl {message}"):
            pm.read_comparisons(recs, "x.jsonl")


def test_pair_batches_are_pure_in_step_and_reshuffle_each_epoch():
    comps = pm.read_comparisons(records(6, "harmlessness") + records(5, "helpfulness", 1))
    data = pm.PairBatches(comps, TOK, 48, 4, 7, {"harmlessness": 2.0, "helpfulness": 1.0})
    b = data.batch(3)
    assert b["tokens"].shape == (8, 48) and b["mask"].dtype == bool and b["p"].shape == (4,)
    assert b["tokens"].dtype == np.int32 and b["weight"].dtype == np.float32
    idx = data.indices(3)
    for j, i in enumerate(idx):  # A sides first, then the B sides of the same pairs
        c = comps[i]
        assert TOK.decode(b["tokens"][j][b["mask"][j]]).endswith(c.a)
        assert TOK.decode(b["tokens"][4 + j][b["mask"][4 + j]]).endswith(c.b)
        assert b["p"][j] == np.float32(c.p_a)
        assert b["weight"][j] == (2.0 if c.task == "harmlessness" else 1.0)
    again = pm.PairBatches(comps, TOK, 48, 4, 7, {"harmlessness": 2.0, "helpfulness": 1.0})
    assert all(np.array_equal(again.batch(s)["tokens"], data.batch(s)["tokens"]) for s in (0, 5))
    stream = np.concatenate([data.indices(s) for s in range(11)])  # 44 items = 4 epochs of 11
    epochs = stream.reshape(4, 11)
    assert all(sorted(e) == list(range(11)) for e in epochs)  # each pair once per epoch
    assert len({tuple(e) for e in epochs}) == 4  # in a new order every epoch
    with pytest.raises(ConfigError, match="'helpfulness' have no loss weight"):
        pm.PairBatches(comps, TOK, 48, 4, 7, {"harmlessness": 1.0})


# ----------------------------------------------------------------------------- learning


def test_a_tiny_pm_learns_a_planted_preference(tmp_path):
    mesh = sharding.make_mesh(sharding.MeshConfig())
    comps = pm.read_comparisons(records(256, "helpfulness"))
    train, heldout = comps[:192], comps[192:]
    cfg, params = pm.with_scalar_head(TINY, on_mesh(lm_params(), mesh))
    model = Transformer(cfg)
    rm = pm.RewardModel(stage_lib.Loaded("", cfg, model, params, TOK, 2), mesh, 64, 48)
    score = lambda rm: rm.compare(  # noqa: E731
        [c.messages for c in heldout], [c.a for c in heldout], [c.b for c in heldout]
    )
    p = [c.p_a for c in heldout]
    assert pm.pairwise_accuracy(*score(rm), p)["accuracy"] == 0.5  # a zero head: all ties
    state = train_lib.fit(
        model=model,
        optim_cfg=train_lib.OptimConfig(learning_rate=3e-3, warmup_steps=5, weight_decay=0.0),
        train_cfg=train_lib.TrainConfig(steps=30, batch_size=16, seq_len=48, save_every=1000),
        mesh=mesh,
        batch_fn=pm.PairBatches(train, TOK, 48, 16, 0, {"helpfulness": 1.0}).batch,
        workdir=tmp_path,
        metadata={},
        loss_fn=pm.pm_loss,
        init_params=params,
        stage="pm",
    )
    rm.loaded = dataclasses.replace(rm.loaded, params=state.params)  # same shapes: no recompile
    r_a, r_b = score(rm)
    assert pm.pairwise_accuracy(r_a, r_b, p)["accuracy"] > 0.9
    # scoring is per row: chunking and padding do not change a reward
    small = pm.RewardModel(stage_lib.Loaded("", cfg, model, state.params, TOK, 2), mesh, 8, 48)
    np.testing.assert_allclose(score(small)[0], r_a, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="the scored turn must be the assistant's"):
        small.rewards([[("user", "Hi?")]])
    with pytest.raises(ConfigError, match="not a preference model"):
        pm.RewardModel(stage_lib.Loaded("lm", TINY, Transformer(TINY), {}, TOK, 2), mesh)


# ----------------------------------------------------------------------------- the stage


def write_base(workdir):
    """A tiny random base model as ``WORKDIR/pretrain`` (what ``init_from=base`` resolves to)."""
    params = lm_params()
    meta = pretrained.checkpoint_metadata("pretrain", TINY, TOK, ml_collections.ConfigDict())
    with Checkpointer(workdir / "pretrain" / "checkpoints", 1, 1, async_save=False) as ckpt:
        ckpt.save(0, params, {"step": np.zeros((), np.int32)}, {**meta, "step": 0}, force=True)
        ckpt.wait()


def write_shard(directory, recs):
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in recs)
    (directory / "shard-00000-of-00001.jsonl").write_text(text)


MESH = sharding.MeshConfig(data=2, fsdp=2, tensor=2)


def make_workdir(path):
    write_base(path)
    write_shard(path / "feedback" / "train", records(40, "harmlessness", 1))
    # the human-feedback stage holds both tasks; the PM takes its helpfulness records only
    human = records(30, "helpfulness", 2, 100) + records(10, "harmlessness", 3, 200)
    write_shard(path / "human_feedback" / "train", human)
    return path


def pm_config(mesh=MESH, **pm_fields):
    config = ml_collections.ConfigDict({"seed": 0, "base": "pretrain"})
    config.mesh = configs.as_dict(mesh)
    config.model = configs.as_dict(TINY)
    config.preference_model = stage.stage_config(
        steps=6, batch_size=8, seq_len=64, learning_rate=1e-3, score_batch_size=8, **pm_fields
    )
    config.preference_model.train.save_every = 100  # the final (or halting) step saves anyway
    return config


def final_params(stage_dir):
    cfg, params, tok = pretrained.load(str(stage_dir))
    return cfg, jax.tree.map(np.asarray, params), tok


def test_stage_trains_scores_held_out_pairs_resumes_and_guards(tmp_path):
    a = make_workdir(tmp_path / "a")
    config = pm_config()
    stage.run(config, a)
    stats = json.loads((a / "preference_model" / "reward_stats.json").read_text())
    n_train, n_held = stats["n_train"], stats["n_heldout"]
    # 10% of the 70 conversations held out; the human-feedback harmlessness records are not used
    assert n_held["overall"] == 7 and sum(n_train.values()) == 63
    assert n_train["harmlessness"] + n_held["harmlessness"] == 40
    assert n_train["helpfulness"] + n_held["helpfulness"] == 30
    assert set(stats["heldout_accuracy"]) == {"harmlessness", "helpfulness", "overall"}
    assert 0 <= stats["heldout_accuracy"]["overall"] <= 1 and stats["std"] > 0
    assert stats["stats_from"] == "heldout" and math.isfinite(stats["mean"])
    held = [json.loads(x) for x in (a / "preference_model" / "heldout_scores.jsonl").open()]
    r = np.array([[h["r_a"], h["r_b"]] for h in held])
    np.testing.assert_allclose([r.mean(), r.std()], [stats["mean"], stats["std"]], rtol=1e-5)
    summary = json.loads((a / "summary.json").read_text())["preference_model_stage"]
    assert summary["steps"] == 6 and summary["truncated"] == 0
    cfg, params, tok = final_params(a / "preference_model")
    assert cfg.scalar_head and params["value_w"].shape == (TINY.d_model,) and tok.eos_id == 2
    assert np.any(params["value_w"])  # the head was trained

    # a rerun is a no-op: nothing is rewritten
    before = {p: p.stat().st_mtime_ns for p in (a / "preference_model").rglob("*") if p.is_file()}
    stage.run(config, a)
    after = {p: p.stat().st_mtime_ns for p in (a / "preference_model").rglob("*") if p.is_file()}
    assert after == before

    # killed after 3 steps, then rerun: the same final params as the uninterrupted run. This
    # run is a second PM (``pm_human``) with the same settings: its own section and directory.
    b = make_workdir(tmp_path / "b")
    second = ml_collections.ConfigDict({**config.to_dict(), "pm_human": config.preference_model})
    del second["preference_model"]
    second.pm_human.train.halt_at_step = 3
    with pytest.raises(Halted, match="stopped at step 3"):
        stage.run(second, b, name="pm_human")
    assert not (b / "pm_human" / "reward_stats.json").exists()
    second.pm_human.train.halt_at_step = 0
    stage.run(second, b, name="pm_human")
    _, resumed, _ = final_params(b / "pm_human")
    jax.tree.map(np.testing.assert_array_equal, resumed, params)
    assert json.loads((b / "pm_human" / "reward_stats.json").read_text()) == stats
    assert json.loads((b / "summary.json").read_text())["pm_human_stage"]["steps"] == 6

    # a changed config or a changed input on the old workdir: one line naming it
    changed = pm_config(harmlessness_weight=3.0)
    with pytest.raises(ConfigError, match=r"made with config.preference_model.pm.harm"):
        stage.run(changed, a)
    write_shard(b / "feedback" / "train", records(40, "harmlessness", 9))
    with pytest.raises(ConfigError, match=r"pm_human was made with inputs.harmlessness="):
        stage.run(second, b, name="pm_human")


def test_without_held_out_pairs_the_reward_statistics_come_from_train_pairs():
    comps = pm.read_comparisons(records(10, "harmlessness") + records(5, "helpfulness", 1, 100))
    # the same five conversations again under the other task: held out together or not at all
    again = [dataclasses.replace(c, task="harmlessness", a=c.b, b=c.a) for c in comps[10:]]
    by_task = {"harmlessness": comps[:10] + again, "helpfulness": comps[10:]}
    train, held = pm.heldout_split(by_task, 0.25, 0)  # 15 distinct conversations: 4 held out
    assert sum(map(len, held.values())) + sum(map(len, train.values())) == 20
    held_convs = {c.messages for cs in held.values() for c in cs}
    assert len(held_convs) == 4 and not held_convs & {
        c.messages for cs in train.values() for c in cs
    }
    assert pm.heldout_split(by_task, 0.25, 0) == (train, held)  # seeded
    assert pm.heldout_split(by_task, 0.0, 0) == (by_task, {"harmlessness": [], "helpfulness": []})
    one = {"helpfulness": comps[:1]}
    assert pm.heldout_split(one, 0.5, 0) == (one, {"helpfulness": []})  # never all
    # halves (pm.half): disjoint by conversation across tasks, together all of the pairs
    first, second = pm.halves(train, 0)
    convs = [{c.messages for cs in h.values() for c in cs} for h in (first, second)]
    assert not convs[0] & convs[1] and abs(len(convs[0]) - len(convs[1])) <= 1
    assert sum(len(v) for h in (first, second) for v in h.values()) == sum(map(len, train.values()))
    model, params = tiny_pm()
    mesh = sharding.make_mesh(sharding.MeshConfig())
    rm = pm.RewardModel(stage_lib.Loaded("", model.cfg, model, params, TOK, 2), mesh, 16, 64)
    by_task = {"harmlessness": comps[:10], "helpfulness": comps[10:]}
    stats, records_out = stage.reward_stats(rm, {"harmlessness": [], "helpfulness": []}, by_task, 0)
    assert stats["stats_from"] == "train" and records_out == []
    assert stats["heldout_accuracy"]["overall"] is None and stats["n_heldout"]["overall"] == 0
    r = rm.compare([c.messages for c in comps], [c.a for c in comps], [c.b for c in comps])
    np.testing.assert_allclose(stats["mean"], np.concatenate(r).mean(), rtol=1e-5)
    assert stats["n_train"] == {"harmlessness": 10, "helpfulness": 5}


def test_bad_stage_config_is_named(tmp_path):
    w = tmp_path
    typo = pm_config()
    typo.preference_model.pm.harmless = "feedback"
    with pytest.raises(ConfigError, match="config.preference_model.pm.harmless: unknown key"):
        stage.run(typo, w)
    with pytest.raises(ConfigError, match="preference_model.pm.heldout_fraction=1.0"):
        stage.run(pm_config(heldout_fraction=1.0), w)
    with pytest.raises(ConfigError, match="preference_model.pm.half=3"):
        stage.run(pm_config(half=3), w)
    write_base(w)
    with pytest.raises(ConfigError, match="feedback/train holds no shards"):
        stage.run(pm_config(), w)
    write_shard(w / "feedback" / "train", records(4, "helpfulness"))
    with pytest.raises(ConfigError, match="holds no harmlessness comparisons"):
        stage.run(pm_config(helpfulness=""), w)


def test_dry_run_compiles_the_pm_train_step():
    config = configs.base_config(("preference_model",))
    config.model = configs.as_dict(TINY)
    config.preference_model = stage.stage_config(steps=10, batch_size=8, seq_len=32)
    lines = []
    results = dry_run.run(config, print_fn=lines.append)
    assert list(results) == ["preference_model/train_step"]
    assert results["preference_model/train_step"]["shape"] == "8 pairs x 2 x 32"
