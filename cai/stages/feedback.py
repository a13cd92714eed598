"""Stage ``feedback``: AI labels for the harmlessness pairs, from a feedback model's log-probs.

For every harmlessness pair of stage ``pairs`` (two identical replies are no comparison and
are skipped) the feedback model (``feedback.init_from``; the
base model by default, a pretrained LM as in the paper) answers the multiple-choice question of
a principle drawn at random from ``feedback.constitution``'s RL principles, and the normalised
option probabilities are the label (``cai.feedback`` has the equations). ``feedback.labels``
chooses the form used for training: principles per pair, chain of thought with clamping,
position debiasing. Helpfulness pairs are not labelled here: their labels are "human" ones
(stage ``human_feedback``), as in the paper.

On the held-out splits the same pairs are labelled under every form of ``feedback.variants``
as well (one principle, K principles, CoT clamped, debiased), so evaluation can set each
form's accuracy and calibration against the judge; nothing trains on those splits.

Output: ``WORKDIR/feedback/<split>/shard-*.jsonl``, one record per harmlessness pair: the pair's
fields, ``p_a`` (the label of ``feedback.labels``), ``principles``, ``p_first`` (p(A) in the
stored order, per principle) and, on held-out splits, ``variants: {name: {...}}``. The stage
reads only text, so the feedback model may have another tokenizer than the policy.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from cai import configs, constitution, feedback, sharding, stage_lib
from cai.errors import ConfigError, Halted
from cai.metrics import update_summary
from cai.sampling import SamplingConfig

SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class FeedbackStageConfig:
    init_from: str = "base"  # the feedback model: "base", a stage dir or a checkpoint path
    constitution: str = "constitutions/toy_world.json"
    pairs: str = "pairs"  # the stage directory holding the pairs
    compare_k: int = 4  # K of the "k_principles" variant measured on held-out splits
    variants: tuple[str, ...] = ("one_principle", "k_principles", "cot_clamped", "debiased")
    batch_size: int = 256  # prompts per scoring / generation call
    shard_size: int = 256  # pairs per output shard
    seed: int = 0
    halt_after_shards: int = 0

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ConfigError(
                f"feedback.variants: unknown {bad[0]!r} (known: {', '.join(VARIANTS)})"
            )
        if self.compare_k < 1 or self.batch_size < 1 or self.shard_size < 1:
            raise ConfigError("feedback.compare_k, batch_size and shard_size must be positive")


VARIANTS = ("one_principle", "k_principles", "cot_clamped", "debiased")


def variant_configs(cfg: FeedbackStageConfig, labels: feedback.FeedbackConfig) -> dict:
    """The held-out comparison forms, each as a FeedbackConfig (the training form's style,
    clamp and reasoning length)."""
    base = dataclasses.replace(labels, principles_per_pair=1, cot=False, debias=False)
    forms = {
        "one_principle": base,
        "k_principles": dataclasses.replace(base, principles_per_pair=cfg.compare_k),
        "cot_clamped": dataclasses.replace(base, cot=True),
        "debiased": dataclasses.replace(base, debias=True),
    }
    return {name: forms[name] for name in cfg.variants}


def stage_config(**labels: Any) -> ml_collections.ConfigDict:
    cd = configs.as_dict(FeedbackStageConfig())
    cd.labels = configs.as_dict(feedback.FeedbackConfig(**labels))
    return cd


def shard_rng(cfg: FeedbackStageConfig, split: str, shard: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, SPLITS.index(split), shard])


def label_shard(
    fm: feedback.FeedbackModel,
    const: constitution.Constitution,
    cfg: FeedbackStageConfig,
    labels: feedback.FeedbackConfig,
    split: str,
    batch: list[dict[str, Any]],
    shard: int,
) -> list[dict[str, Any]]:
    """Labels for one shard of pairs. Principles are drawn per pair from the shard's own seed;
    the training form uses the first ``principles_per_pair`` draws and every held-out form the
    first one or ``compare_k``, so the forms differ only in how they ask."""
    rng = shard_rng(cfg, split, shard)
    k = max(labels.principles_per_pair, cfg.compare_k)
    picks = feedback.draw_principles(rng, len(const.rl_principles), len(batch), k)
    seed = int(rng.integers(2**31))
    items = [(r["messages"], r["responses"][0], r["responses"][1]) for r in batch]

    def label(form: feedback.FeedbackConfig) -> list[dict[str, Any]]:
        sampling = SamplingConfig(max_new_tokens=form.cot_tokens, temperature=0.0)
        return feedback.label_pairs(
            fm, const, items, picks[:, : form.principles_per_pair], form, sampling, seed
        )

    main = label(labels)
    out = [{**r, **m} for r, m in zip(batch, main)]
    if split != "train":
        forms = {name: label(form) for name, form in variant_configs(cfg, labels).items()}
        for i, rec in enumerate(out):
            rec["variants"] = {name: labs[i] for name, labs in forms.items()}
    return out


def run(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    sc = configs.get(config, "feedback", "")
    labels = configs.to_dataclass(feedback.FeedbackConfig, configs.get(sc, "labels", "feedback"),
                                  "feedback.labels")  # fmt: skip
    cfg = configs.to_dataclass(
        FeedbackStageConfig, {k: v for k, v in sc.items() if k != "labels"}, "feedback"
    )
    const = constitution.load(cfg.constitution)
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    stage_dir = workdir / "feedback"
    pairs_dir = workdir / cfg.pairs
    splits = [s for s in SPLITS if (pairs_dir / s).exists()]
    if "train" not in splits:
        raise ConfigError(f"feedback.pairs: {pairs_dir}/train holds no pairs (run stage pairs)")
    # Two identical replies make no comparison (a label could only be position bias, and the
    # PM's gradient on them is zero): they are skipped.
    data = {s: [r for r in stage_lib.shards(pairs_dir / s)
                if r["task"] == "harmlessness" and r["responses"][0] != r["responses"][1]]
            for s in splits}  # fmt: skip
    init = stage_lib.resolve_init(config, workdir, cfg.init_from, "feedback.init_from")
    stage_lib.guard(
        stage_dir,
        {**stage_lib.section(config, "feedback"),
         "constitution_file": stage_lib.fingerprint_file(const.path)},
        {"init_from": stage_lib.fingerprint(init),
         **{f"pairs/{s}": stage_lib.fingerprint_shards(pairs_dir / s) for s in splits}},
    )  # fmt: skip
    loaded = stage_lib.load_model(init, mesh, "feedback.init_from", model_config=config.model)
    fm = feedback.FeedbackModel(stage_lib.TextSampler(loaded, mesh, cfg.batch_size), labels.style)
    budget = [cfg.halt_after_shards or -1]
    t0 = time.time()
    summary: dict[str, Any] = {"labels": dataclasses.asdict(labels)}
    seconds: dict[str, float] = {}  # per split: train labels, dev/test measure every form
    for split in splits:
        t_split = time.time()
        spec = {"init_from": init, "constitution": const.path, "n_pairs": len(data[split]),
                "labels": dataclasses.asdict(labels), "seed": cfg.seed,
                "variants": list(cfg.variants), "compare_k": cfg.compare_k}  # fmt: skip
        recs = stage_lib.run_shards(
            stage_dir / split,
            data[split],
            cfg.shard_size,
            lambda b, shard, s=split: label_shard(fm, const, cfg, labels, s, b, shard),
            spec,
            budget,
            f"feedback: {split}",
        )
        if recs is None:
            raise Halted(f"stopped after {cfg.halt_after_shards} new shards")
        first = [p for r in recs for p in r["p_first"]]
        summary[split] = {
            "pairs": len(recs),
            "mean_label": float(np.mean([r["p_a"] for r in recs])) if recs else None,
            "p_first_listed": feedback.position_bias(first),
        }
        seconds[split] = round(time.time() - t_split, 1)
    summary["seconds_this_run"] = round(time.time() - t0, 1)
    summary["split_seconds_this_run"] = seconds
    update_summary(workdir, "feedback_stage", summary)
