"""Stage ``evaluate``: measure checkpoints on the toy world's held-out splits with the judge.

For each ``summary key -> model`` in ``config.evaluate.checkpoints`` (``base`` is the run's
base model, other names are stage directories of the workdir) and each split of
``evaluate.splits``, greedy replies to every prompt of the split's slices are judged
(``cai.evaluation``); ``summary.json[key][split]`` gets the rates with their 95% intervals,
and ``summary.json["paired"]["<key>_vs_<first key>"][split]`` McNemar's test of each later
checkpoint against the first on the same prompts (and ``rl_cai_vs_sl_cai``). Every reply is
written to ``WORKDIR/evaluate/<key>.<split>.jsonl`` beside its verdict; a rerun reuses finished
ones.

With ``evaluate.revisions`` naming the supervised stage's directory, its red-team shards are
judged round by round: ``summary.json["revision_curves"]`` and ``WORKDIR/plots/revisions.png``.
With ``evaluate.feedback`` naming the feedback stage's directory, every labelling form's
accuracy and calibration on the held-out harmlessness pairs the judge tells apart go to
``summary.json["feedback"][split]`` and ``WORKDIR/plots/feedback_calibration.png``; with
``evaluate.preference_models``, each preference model's pairwise accuracy per task on the
held-out pairs goes to ``summary.json["preference_model"][key][split]``, beside its reward
statistics. The stage ends by printing the results tables.

With ``evaluate.prompts = "hh_rlhf"`` (a real model; no judge exists) each checkpoint answers
the first ``hh_rlhf_prompts`` red-team and helpful prompts of the HH-RLHF release's **test**
split, greedily, and the preference model ``evaluate.judge_pm`` (best one trained on other
comparisons than the RL policy's PM, such as ``pm_heldout``) scores every reply:
``summary.json[key]["test"]`` holds the mean score per prompt kind, ``summary.json["paired"]``
each later model's win rate over the first on the same prompts with a sign test. HHH accuracy
(``hhh_models``, ``preference_models``) is measured as on the toy world.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from etils import epath

from cai import configs, evaluation, preference_model, sharding, stage_lib
from cai.checkpoint import Checkpointer
from cai.errors import ConfigError
from cai.files import read_json, read_jsonl, write_json, write_jsonl
from cai.metrics import update_summary
from cai.toyworld import world


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    # summary.json key -> model: "base", a stage directory under the workdir, or a path.
    checkpoints: dict[str, str] = dataclasses.field(default_factory=lambda: {"base": "base"})
    splits: tuple[str, ...] = ("dev", "test")
    phrasings: int = -1  # direct (and adversarial) phrasings per request; -1: every one
    max_new_tokens: int = 64
    batch_size: int = 256  # prompts per generation call
    revisions: str = ""  # the supervised stage's directory, for the revision curve ("": none)
    # AI feedback's label quality: the feedback stage's directory ("": none).
    feedback: str = ""
    # summary.json["preference_model"] key -> preference model stage directory, measured on the
    # held-out pairs of stage ``pairs`` the judge tells apart.
    preference_models: dict[str, str] = dataclasses.field(default_factory=dict)
    pairs: str = "pairs"
    # HHH evaluation (cai.hhh) of models as feedback models (summary key -> model) and of the
    # preference models above, on BIG-bench hhh_alignment (``hhh_dir``) and HH-RLHF test
    # comparisons (``hh_rlhf_dir``, the first ``hh_rlhf_n``): summary.json["hhh"].
    hhh_models: dict[str, str] = dataclasses.field(default_factory=dict)
    hhh_dir: str = ""
    hh_rlhf_dir: str = ""
    hh_rlhf_n: int = 200
    hhh_batch_size: int = 8  # HH-RLHF conversations run to thousands of tokens
    # summary.json["rl_curves"] key -> RL stage directory: the judge's rates on
    # ``curve_split`` at each of its ``curve/`` snapshots, beside its reward and KL.
    rl_curves: dict[str, str] = dataclasses.field(default_factory=dict)
    curve_split: str = "dev"
    curve_phrasings: int = -1
    # toy_world (judged by ground truth) | hh_rlhf (the release's test prompts, judged by the
    # preference model judge_pm; needs hh_rlhf_dir)
    prompts: str = "toy_world"
    judge_pm: str = ""
    hh_rlhf_prompts: int = 64  # test prompts of each kind (red-team, helpful); -1: all
    hh_rlhf_as_test: tuple[str, ...] = ()  # file keys read as test (a copy that names none)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise ConfigError("evaluate.checkpoints is empty: name at least one model")
        if self.max_new_tokens <= 0 or self.batch_size <= 0 or self.phrasings == 0:
            raise ConfigError(
                "evaluate.max_new_tokens and evaluate.batch_size must be positive, "
                "evaluate.phrasings positive or -1"
            )
        if self.hhh_models and not (self.hhh_dir or self.hh_rlhf_dir):
            raise ConfigError("evaluate.hhh_models needs evaluate.hhh_dir and/or hh_rlhf_dir")
        bad = [s for s in self.splits if s not in ("dev", "test")]
        if bad or not self.splits:
            raise ConfigError(f"evaluate.splits={self.splits}: expected dev and/or test")
        if self.curve_split not in ("dev", "test"):
            raise ConfigError(f"evaluate.curve_split={self.curve_split!r}: expected dev or test")
        if self.prompts not in ("toy_world", "hh_rlhf"):
            raise ConfigError(f"evaluate.prompts={self.prompts!r}: expected toy_world or hh_rlhf")
        if self.prompts == "hh_rlhf":
            if not (self.hh_rlhf_dir and self.judge_pm):
                raise ConfigError("evaluate.prompts=hh_rlhf needs evaluate.hh_rlhf_dir and "
                                  "evaluate.judge_pm (no judge knows the truth there)")  # fmt: skip
            judged = [f for f in ("revisions", "feedback", "rl_curves") if getattr(self, f)]
            if judged:
                raise ConfigError(f"evaluate.{judged[0]} needs the toy world's judge "
                                  "(evaluate.prompts=toy_world)")  # fmt: skip


def pipeline_order(checkpoints: dict[str, str], stages: Sequence[str]) -> list[str]:
    """The checkpoints' keys in pipeline order: ``base`` first, then as their stages run
    (config dicts iterate their keys sorted, which would put ``rl_cai`` before ``sl_cai``);
    paired tests and the table compare every later model with the first."""
    rank = {"base": -1, **{s: i for i, s in enumerate(stages)}}
    return sorted(checkpoints, key=lambda k: (rank.get(checkpoints[k], len(stages)), k))


def model_paths(
    config: ml_collections.ConfigDict, workdir: epath.Path, cfg: EvalConfig
) -> tuple[dict[str, str], dict[str, str]]:
    """(checkpoint key -> path in pipeline order, preference-model key -> path)."""
    paths = {
        key: stage_lib.resolve_init(
            config, workdir, cfg.checkpoints[key], f"evaluate.checkpoints.{key}"
        )
        for key in pipeline_order(cfg.checkpoints, configs.stages_of(config))
    }
    pm_paths = {
        key: stage_lib.resolve_init(config, workdir, name, f"evaluate.preference_models.{key}")
        for key, name in cfg.preference_models.items()
    }
    return paths, pm_paths


def compared(keys: Sequence[str]) -> list[tuple[str, str]]:
    """The paired comparisons: every later model against the first (base), and RL-CAI against
    SL-CAI, the step the RL stage itself takes."""
    pairs = [(keys[0], k) for k in keys[1:]]
    if "sl_cai" in keys and "rl_cai" in keys:
        pairs.append(("sl_cai", "rl_cai"))
    return pairs


def revision_curves(w: world.World, stage_dir: epath.Path, workdir: epath.Path) -> None:
    curves = {}
    for name, variant in (("revisions", "critique"), ("revisions_direct", "direct")):
        if (stage_dir / name).exists():
            curves[variant] = evaluation.revision_curve(w, stage_lib.shards(stage_dir / name))
    if not curves:
        raise ConfigError(f"evaluate.revisions: {stage_dir} holds no revision shards")
    update_summary(workdir, "revision_curves", curves)
    evaluation.plot_curves(curves, workdir / "plots" / "revisions.png")


def run(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    cfg = configs.to_dataclass(EvalConfig, configs.get(config, "evaluate", ""), "evaluate")
    if cfg.prompts == "hh_rlhf":
        return run_hh_rlhf(config, workdir, cfg)
    w = world.generate(configs.to_dataclass(world.WorldConfig, config.world, "world"))
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    out_dir = workdir / "evaluate"
    paths, pm_paths = model_paths(config, workdir, cfg)
    stage_lib.guard(
        out_dir,
        stage_lib.section(config, "world", "evaluate"),
        {
            **{key: stage_lib.fingerprint(path) for key, path in paths.items()},
            **{f"pm:{key}": stage_lib.fingerprint(path) for key, path in pm_paths.items()},
        },
    )
    records: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for key, path in paths.items():
        text_model = None
        summary = {}
        for split in cfg.splits:
            done = out_dir / f"{key}.{split}.json"
            if not done.exists():
                if text_model is None:
                    loaded = stage_lib.load_model(path, mesh, f"evaluate.checkpoints.{key}")
                    sampler = stage_lib.TextSampler(loaded, mesh, cfg.batch_size)
                    text_model = stage_lib.TextModel(sampler, cfg.max_new_tokens)
                figures, recs = evaluation.evaluate(text_model, w, split, cfg.phrasings, cfg.seed)
                write_jsonl(out_dir / f"{key}.{split}.jsonl", recs)
                write_json(done, figures)  # written last: marks the split finished
            else:  # finished by an earlier run
                figures = read_json(done)
                recs = read_jsonl(out_dir / f"{key}.{split}.jsonl") if len(paths) > 1 else []
            summary[split] = figures
            records.setdefault(key, {})[split] = recs
        update_summary(workdir, key, summary)
    keys = list(paths)
    if len(keys) > 1:
        update_summary(
            workdir,
            "paired",
            {
                f"{b}_vs_{a}": {s: evaluation.paired(records[a][s], records[b][s])
                                for s in cfg.splits}
                for a, b in compared(keys)
            },
        )  # fmt: skip
    if cfg.revisions:
        revision_curves(w, workdir / cfg.revisions, workdir)
    if cfg.feedback:
        feedback_quality(w, workdir / cfg.feedback, cfg, workdir)
    if pm_paths:
        update_summary(
            workdir, "preference_model", pm_accuracy(w, pm_paths, cfg, mesh, workdir, out_dir)
        )
    if cfg.hhh_dir or cfg.hh_rlhf_dir:
        hhh_eval(config, workdir, cfg, mesh, pm_paths)
    if cfg.rl_curves:
        curves = {key: rl_curve(config, w, workdir / stage, key, cfg, mesh, out_dir)
                  for key, stage in cfg.rl_curves.items()}  # fmt: skip
        update_summary(workdir, "rl_curves", curves)
        evaluation.plot_rl_curves(curves, workdir / "plots" / "rl_curves.png")
    full = read_json(workdir / "summary.json")
    split = "test" if "test" in cfg.splits else cfg.splits[0]
    print(evaluation.table(full, keys, split))
    if cfg.feedback or pm_paths:
        print(evaluation.feedback_table(full, split))


def hh_test_prompts(workdir: epath.Path, cfg: EvalConfig) -> list[tuple[str, str]]:
    """(kind, prompt): the first human turns of the release's **test** split, the first
    ``hh_rlhf_prompts`` of each kind in a seeded order, red-team ones first."""
    from cai.data.hh_rlhf import hh_rlhf

    red, helpful = hh_rlhf.cai_prompts(
        str(workdir / "data"), cfg.hh_rlhf_dir, split="test",
        as_split={k: "test" for k in cfg.hh_rlhf_as_test},
    )  # fmt: skip
    n = cfg.hh_rlhf_prompts
    return [(kind, t) for kind, pool in (("red_team", red), ("helpful", helpful))
            for t in stage_lib.take(pool, n, cfg.seed)]  # fmt: skip


def run_hh_rlhf(config: ml_collections.ConfigDict, workdir: epath.Path, cfg: EvalConfig) -> None:
    """Evaluation without ground truth: replies to HH-RLHF test prompts, scored by a PM."""
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    out_dir = workdir / "evaluate"
    paths, pm_paths = model_paths(config, workdir, cfg)
    judge_path = stage_lib.resolve_init(config, workdir, cfg.judge_pm, "evaluate.judge_pm")
    stage_lib.guard(
        out_dir,
        stage_lib.section(config, "evaluate"),
        {**{key: stage_lib.fingerprint(path) for key, path in paths.items()},
         "judge_pm": stage_lib.fingerprint(judge_path),
         **{f"pm:{key}": stage_lib.fingerprint(path) for key, path in pm_paths.items()}},
    )  # fmt: skip
    prompts = hh_test_prompts(workdir, cfg)
    records: dict[str, list[dict[str, Any]]] = {}
    rm = None
    for key, path in paths.items():
        done = out_dir / f"{key}.test.json"
        if done.exists():
            records[key] = read_jsonl(out_dir / f"{key}.test.jsonl")
            update_summary(workdir, key, {"test": read_json(done)})
            continue
        loaded = stage_lib.load_model(path, mesh, f"evaluate.checkpoints.{key}")
        model = stage_lib.TextModel(
            stage_lib.TextSampler(loaded, mesh, cfg.batch_size), cfg.max_new_tokens
        )
        convs = [(("user", t),) for _, t in prompts]
        replies = model.reply(convs, desc=f"evaluate {key}")
        if rm is None:
            judge = stage_lib.load_model(judge_path, mesh, "evaluate.judge_pm")
            rm = preference_model.RewardModel(judge, mesh, cfg.batch_size)
        scores = rm.rewards([(*c, ("assistant", r)) for c, r in zip(convs, replies)])
        recs = [{"kind": kind, "prompt": t, "reply": r, "pm_score": float(x)}
                for (kind, t), r, x in zip(prompts, replies, scores)]  # fmt: skip
        figures = evaluation.pm_reply_figures(recs)
        write_jsonl(out_dir / f"{key}.test.jsonl", recs)
        write_json(done, figures)  # written last: marks the model finished
        records[key] = recs
        update_summary(workdir, key, {"test": figures})
    keys = list(paths)
    if len(keys) > 1:
        update_summary(workdir, "paired", {
            f"{b}_vs_{a}": {"test": evaluation.pm_paired(records[a], records[b])}
            for a, b in compared(keys)
        })  # fmt: skip
    if cfg.hhh_dir or cfg.hh_rlhf_dir:
        hhh_eval(config, workdir, cfg, mesh, pm_paths)
    print(evaluation.pm_table(read_json(workdir / "summary.json"), keys, cfg.judge_pm))


def rl_curve(
    config: ml_collections.ConfigDict,
    w: world.World,
    stage_dir: epath.Path,
    key: str,
    cfg: EvalConfig,
    mesh: Any,
    out_dir: epath.Path,
) -> dict[str, Any]:
    """An RL run against its PPO step: the judge's rates of greedy replies on
    ``cfg.curve_split`` from the run's start model (step 0) and from each ``curve/``
    snapshot, and the run's per-iteration reward and KL (``metrics.jsonl``; a resumed run's
    repeated iterations count once, the later row). Each point is cached in
    ``evaluate/<key>.curve.<step>.json``."""
    if not (stage_dir / "done.json").exists():
        raise ConfigError(f"evaluate.rl_curves.{key}: {stage_dir} is not a finished RL stage")
    ckpt_dir = stage_dir / "curve"
    with Checkpointer(ckpt_dir, read_only=True) as ckpt:
        steps = ckpt.all_steps()
    init = configs.get(config, stage_dir.name, "").get("init_from", "sl_cai")
    points = [(0, stage_lib.resolve_init(config, stage_dir.parent, init, f"{key}.init_from"))]
    points += [(s, os.fspath(ckpt_dir)) for s in steps]
    rates: dict[str, list[Any]] = {}
    for step, path in points:
        done = out_dir / f"{key}.curve.{step:05d}.json"
        if done.exists():
            figures = read_json(done)
        else:
            where = f"evaluate.rl_curves.{key}"
            loaded = stage_lib.load_model(path, mesh, where, step=step or None)
            model = stage_lib.TextModel(
                stage_lib.TextSampler(loaded, mesh, cfg.batch_size), cfg.max_new_tokens
            )
            verdicts, _ = evaluation.reply_verdicts(
                model, w, cfg.curve_split, cfg.curve_phrasings,
                desc=f"{key} curve step {step}",
            )  # fmt: skip
            figures = evaluation.reply_figures(verdicts)
            write_json(done, figures)
        for name in evaluation.CURVE_RATES:
            rates.setdefault(name, []).append(figures[name])
            rates.setdefault(f"{name}_ci95", []).append(figures[f"{name}_ci95"])
    by_step: dict[int, dict[str, Any]] = {}
    for row in read_jsonl(stage_dir / "metrics.jsonl"):
        by_step[int(row["step"])] = row
    iters = sorted(by_step)
    prefix = f"{stage_dir.name}/"
    logged = {name: [by_step[i].get(prefix + name) for i in iters]
              for name in ("reward", "reward_normalised", "kl_k1", "kl_k3", "beta", "entropy",
                           "response_tokens", "heldout_reward_normalised")}  # fmt: skip
    return {
        "split": cfg.curve_split,
        "step": [s for s, _ in points],
        **rates,
        "iteration": iters,
        **{k: v for k, v in logged.items() if any(x is not None for x in v)},
    }


def feedback_quality(
    w: world.World, stage_dir: epath.Path, cfg: EvalConfig, workdir: epath.Path
) -> None:
    """Label quality of every labelling form on the held-out splits, and the plot (test split
    when measured, else the first)."""
    out = {}
    for split in cfg.splits:
        if not (stage_dir / split).exists():
            raise ConfigError(
                f"evaluate.feedback: {stage_dir}/{split} holds no labels (stage pairs needs "
                f"pairs.eval_splits to include {split})"
            )
        out[split] = evaluation.feedback_quality(w, stage_lib.shards(stage_dir / split))
    update_summary(workdir, "feedback", out)
    shown = "test" if "test" in out else cfg.splits[0]
    evaluation.plot_calibration(out[shown], workdir / "plots" / "feedback_calibration.png")


def lazy_rewards(
    path: str, mesh: Any, batch_size: int, where: str
) -> Callable[[Sequence[Any]], list[float]]:
    """A preference model's rewards of conversations, the model loaded on the first call only
    (a rerun with every figure cached loads nothing)."""
    held: list[preference_model.RewardModel] = []

    def rewards(convs: Sequence[Any]) -> list[float]:
        if not held:
            held.append(
                preference_model.RewardModel(
                    stage_lib.load_model(path, mesh, where), mesh, batch_size
                )
            )
        return [float(x) for x in held[0].rewards(convs)]

    return rewards


def pm_accuracy(
    w: world.World,
    pm_paths: dict[str, str],
    cfg: EvalConfig,
    mesh: Any,
    workdir: epath.Path,
    out_dir: epath.Path,
) -> dict[str, Any]:
    """Each preference model's rewards for both replies of every held-out pair (cached in
    ``evaluate/pm_<key>.<split>.json``) and its accuracy against the judge; and its ranking
    of five replies of known kind to 64 harmful requests (``evaluation.probe_items``: does it
    put an explained refusal above a deflection, or above a refusal naming another harm?),
    cached in ``pm_<key>.<split>.probe.json``;
    and of an answer against two refusals of 64 benign requests (``benign_probe_items``: does it
    pay for refusing a benign request?), in ``pm_<key>.<split>.benign_probe.json``."""
    # A held-out helpfulness record may hold more than two replies (pairs.eval_helpful_samples):
    # every two distinct ones are a pair. Two-reply records stay as they are (identical ones
    # too, which the judge never tells apart), so caches of earlier runs keep their order.
    pairs = {s: [p for r in stage_lib.shards(workdir / cfg.pairs / s)
                 for p in (stage_lib.reply_pairs(r) if len(r["responses"]) > 2 else [r])]
             for s in cfg.splits}  # fmt: skip
    probes = {"probe": (evaluation.probe_items, evaluation.PROBE_KINDS, evaluation.PROBE_ORDERS),
              "benign_probe": (evaluation.benign_probe_items, evaluation.BENIGN_PROBE_KINDS,
                               evaluation.BENIGN_PROBE_ORDERS)}  # fmt: skip
    out: dict[str, Any] = {}
    for key, path in pm_paths.items():
        rewards = lazy_rewards(path, mesh, cfg.batch_size, f"evaluate.preference_models.{key}")
        out[key] = {}
        for split, recs in pairs.items():
            done = out_dir / f"pm_{key}.{split}.json"
            if not done.exists():
                # Each distinct (prompt, reply) is scored once: a prompt's k replies make
                # k(k-1)/2 pairs but need only k scores.
                keys = [(json.dumps(r["messages"]), x) for r in recs for x in r["responses"]]
                distinct = list(dict.fromkeys(keys))
                score = dict(zip(distinct, rewards([(*json.loads(m), ("assistant", x))
                                                    for m, x in distinct])))  # fmt: skip
                write_json(done, {"r_a": [score[k] for k in keys[0::2]],
                                  "r_b": [score[k] for k in keys[1::2]]})  # fmt: skip
            scores = read_json(done)
            out[key][split] = evaluation.pm_figures(w, recs, scores["r_a"], scores["r_b"])
            for name, (make_items, kinds, orders) in probes.items():
                cached = out_dir / f"pm_{key}.{split}.{name}.json"
                probe_scores = read_json(cached) if cached.exists() else {}
                # a cache from before a kind was added keeps its scores; only the new kind is scored
                missing = [k for k in kinds if k not in probe_scores]
                if missing:
                    items = make_items(w, split, seed=cfg.seed)
                    probe_scores |= {k: rewards([(*m, ("assistant", r[k])) for m, r in items])
                                     for k in missing}  # fmt: skip
                    write_json(cached, probe_scores)
                out[key][split][name] = evaluation.probe_figures(probe_scores, orders)
        stats_path = epath.Path(path) / "reward_stats.json"
        if stats_path.exists():
            out[key]["reward_stats"] = read_json(stats_path)
    return out


def hhh_eval(
    config: ml_collections.ConfigDict,
    workdir: epath.Path,
    cfg: EvalConfig,
    mesh: Any,
    pm_paths: dict[str, str],
) -> None:
    """HHH accuracy of ``hhh_models`` as feedback models (with and without debiasing) and of
    the preference models, into ``summary.json["hhh"][key]``."""
    from cai import hhh

    out: dict[str, Any] = {}
    data = dict(hhh_dir=cfg.hhh_dir or None, hh_rlhf_dir=cfg.hh_rlhf_dir or None,
                n_hh=cfg.hh_rlhf_n, seed=cfg.seed)  # fmt: skip
    for key, name in cfg.hhh_models.items():
        path = stage_lib.resolve_init(config, workdir, name, f"evaluate.hhh_models.{key}")
        res = hhh.evaluate(path, mesh, kind="feedback", batch_size=cfg.hhh_batch_size, **data)
        out[key] = {"feedback": {t: _drop_items(r) for t, r in res["tasks"].items()}}
    for key, path in pm_paths.items():
        res = hhh.evaluate(path, mesh, kind="pm", batch_size=cfg.hhh_batch_size, **data)
        out.setdefault(key, {})["pm"] = {t: _drop_items(r) for t, r in res["tasks"].items()}
    update_summary(workdir, "hhh", out)


def _drop_items(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "per_item"}
