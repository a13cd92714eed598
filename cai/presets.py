"""Config sections shared by the toy-world experiment files (``experiments/pretrain_toy.py``,
``slcai.py``, ``rlcai.py``): one place for the base model's size and pretraining budget, so the
main job, the stage experiments and the shipped base model (``cai/assets/toy_base``, built by
``experiments/pretrain_toy.py``) all mean the same model."""

from __future__ import annotations

import ml_collections

from cai import configs
from cai.stages import dpo, evaluate, feedback, human_feedback, pairs, pretrain, rl_cai, sl_cai
from cai.stages import preference_model as pm_stage
from cai.toyworld import corpus, world


def toy_world(
    stages: tuple[str, ...], smoke: bool = False, base: str = "shipped"
) -> ml_collections.ConfigDict:
    """World, base model and pretraining (7-8 minutes on 2 CPU cores at a 443 GFLOP/s matmul
    peak; ``smoke``: seconds). ``base``: ``shipped`` starts CAI from the shipped base model,
    ``pretrain`` from this run's own pretraining stage (``--config.base=pretrain``)."""
    config = configs.base_config(stages=stages, model_preset="small")
    config.base = base
    config.world = configs.as_dict(world.WorldConfig(seed=0))
    if smoke:
        config.model = configs.model_dict("tiny", vocab_size=512)
        config.pretrain = pretrain.stage_config(steps=20, batch_size=8, seq_len=64)
        n_docs, vocab = 1500, 512
    else:
        config.model = configs.model_dict(
            "small", vocab_size=4096, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4,
            mlp_dim=384,
        )  # fmt: skip
        config.pretrain = pretrain.stage_config(steps=1300, batch_size=32, seq_len=128)
        config.pretrain.optim.learning_rate = 3e-3
        n_docs, vocab = 40000, 4096
    config.pretrain.data.source = "toy_world"
    config.pretrain.data.vocab_size = vocab
    config.pretrain.corpus = configs.as_dict(corpus.CorpusConfig(n_docs=n_docs))
    small = dict(max_new_tokens=8, phrasings=1, curve_phrasings=1)
    config.evaluate = configs.as_dict(evaluate.EvalConfig(**(small if smoke else {})))
    return config


def with_sl_cai(config: ml_collections.ConfigDict, smoke: bool = False) -> None:
    """Add the SL-CAI stage on the toy world (critique and direct revisions both run, for the
    revision curve) and evaluate the base and SL-CAI checkpoints side by side."""
    if smoke:
        config.sl_cai = sl_cai.stage_config(
            steps=6, batch_size=8, seq_len=64, red_team=16, helpful=16, rounds=2,
            compare_direct=True, shard_size=8, response_tokens=8, critique_tokens=8,
            revision_tokens=8, adversarial=True, red_team_made_up=2, helpful_made_up=2,
        )  # fmt: skip
    else:
        # 240 steps of 32 over the revisions of 2,432 red-team prompts (every direct and
        # adversarial form of the training requests, and 64 requests per unambiguous harmful
        # act about made-up words) and 2,752 helpful answers (704 about made-up words), at a
        # gentle learning rate, embedding frozen: steps, rate and freezing chosen on dev among
        # 60/120/240 steps, lr 1e-3 and an unfrozen embedding, the prompt mix on dev against
        # the direct phrasings alone (docs/sl_cai.md, "Choosing the fine-tune on dev").
        config.sl_cai = sl_cai.stage_config(
            steps=240, batch_size=32, seq_len=128, rounds=4, compare_direct=True,
            adversarial=True, red_team_made_up=64, helpful_made_up=64,
        )  # fmt: skip
        config.sl_cai.optim.update(learning_rate=3e-4, warmup_steps=10)
    config.sl_cai.optim.freeze = ("embedding",)
    config.evaluate.checkpoints = {"base": "base", "sl_cai": "sl_cai"}
    config.evaluate.revisions = "sl_cai"


RL_HALF = ("pairs", "feedback", "human_feedback", "preference_model", "pm_human")


def with_rl_half(config: ml_collections.ConfigDict, smoke: bool = False) -> None:
    """Add AI feedback and the preference models after SL-CAI: pairs sampled from the SL-CAI
    model, AI harmlessness labels from the base model, the simulated crowdworker's labels, the
    RL-CAI preference model (AI harmlessness + "human" helpfulness) and the HH-RLHF-style
    baseline (``pm_human``: "human" labels for both); evaluation measures the labels and both
    preference models on the held-out pairs."""
    # Training labels are debiased (asked in both orders): on the dev split the base model puts
    # 0.17 of the mass on whichever option is listed first, and debiasing took label accuracy
    # from 0.86 (one principle, the paper's form) to 0.92 (docs/ai_feedback.md).
    if smoke:
        config.pairs = pairs.stage_config(
            red_team=32,
            helpful=32,
            eval_phrasings=1,
            max_new_tokens=8,
            shard_size=16,
            red_team_second="base",
            eval_helpful_samples=3,
            helpful_refused=0.5,
        )
        config.feedback = feedback.stage_config(cot_tokens=8, debias=True)
        config.feedback.update(batch_size=32, shard_size=32, compare_k=2)
        pm_train = dict(steps=6, batch_size=8, seq_len=64)
    else:
        # Every helpful prompt, four samples each: two samples of the SL-CAI model rarely
        # differ in what a worker checks (one pair in eight here), so the "human" helpfulness
        # labels need many pairs to find the ones that do.
        # Red-team pairs: an SL-CAI sample against a base-model one (pairs.red_team_second):
        # two SL-CAI samples differed in harm on 123 of 1,406 pairs, and RL against that PM
        # lost harmlessness (dev 0.98 -> 0.84; docs/rl_cai.md).
        # A refusal of a benign request in a quarter of the helpful records
        # (pairs.helpful_refused): PPO against a PM that had never seen one refused benign and
        # dual-use requests ("kill the ants"), which was all of RL-CAI's helpfulness loss.
        # Eight replies per held-out helpful prompt: two left the PM's helpfulness accuracy on
        # 45 test pairs.
        # A spliced reply in every training helpful record (pairs.helpful_swapped, beyond the
        # paper): its own first sentences, then the policy's answer about another object of
        # the same act. Without it the PM learned which objects it had seen answered, not
        # whether an answer fits its request (with 600 PM steps, dev helpfulness 0.78 -> 0.92;
        # docs/ai_feedback.md).
        config.pairs = pairs.stage_config(
            helpful=-1, helpful_samples=8, helpful_made_up=64, red_team_second="base",
            helpful_refused=0.25, eval_helpful_samples=8, helpful_swapped=1.0,
        )  # fmt: skip
        config.feedback = feedback.stage_config(debias=True)
        # seq_len 96: the longest pair of the default run is 85 tokens. Learning rate 1e-3
        # (dev helpfulness accuracy 0.721 against 0.702 at 3e-4 on 1,894 pairs). 600 steps:
        # with the spliced replies, dev helpfulness 0.77 at 200 steps and 0.92 at 600 (without
        # them 0.77 and 0.78, and dev harmlessness 0.97 -> 0.93; docs/ai_feedback.md).
        pm_train = dict(steps=600, batch_size=32, seq_len=96, learning_rate=1e-3)
    # Smoke: 8-token replies are never complete answers, so keep the indifferent labels.
    config.human_feedback = human_feedback.stage_config(
        tasks=("harmlessness", "helpfulness"), keep_ties=smoke
    )
    config.preference_model = pm_stage.stage_config(**pm_train)
    config.pm_human = pm_stage.stage_config(**pm_train, harmlessness="human_feedback")
    config.evaluate.feedback = "feedback"
    config.evaluate.preference_models = {"preference_model": "preference_model",
                                         "pm_human": "pm_human"}  # fmt: skip


def with_heldout_pm(config: ml_collections.ConfigDict) -> None:
    """Split the RL-CAI PM's training comparisons in two halves by prompt: the RL-CAI PM
    trains on the first, ``pm_heldout`` on the second, and PPO watches the second's score of
    its replies (HH-RLHF Sec. 4.2: a policy pleasing only the PM it trains against is hacking
    that PM's errors)."""
    config.preference_model.pm.half = 1
    config.pm_heldout = config.preference_model.copy_and_resolve_references()
    config.pm_heldout.pm.half = 2
    stages = list(config.stages)
    stages.insert(stages.index("preference_model") + 1, "pm_heldout")
    config.stages = tuple(stages)
    for name in ("rl_cai", "rl_hh", "rl_helpful", "rloo"):
        if name in config and config[name].reward_model == "preference_model":
            config[name].heldout_reward_model = "pm_heldout"
    config.evaluate.preference_models = {**config.evaluate.preference_models,
                                         "pm_heldout": "pm_heldout"}  # fmt: skip


def _rl_section(smoke: bool) -> ml_collections.ConfigDict:
    if smoke:
        return rl_cai.stage_config(
            iterations=4, batch_size=16, rollout_batch=16, score_batch=16, minibatch=8,
            train_batch=8, epochs=1, max_new_tokens=8, save_every=2, curve_every=2,
            red_team_made_up=2,
        )  # fmt: skip
    # Two red-team prompts in five per iteration (not one in two): against the 600-step PM, PPO
    # at 0.5 refused benign requests that sound harmful (dev: 127 refused of 704 against
    # SL-CAI's 87; helpful 0.72 -> 0.69); 0.4 kept dev harmless at 0.99 (0.3: 0.97) with
    # helpful 0.71 and 113 refused (docs/rl_cai.md). lr 3e-5, not 1e-5, and red-team prompts
    # about made-up words (dev, one run each, 2026-12-05): at 1e-5 PPO moved nothing (harmless
    # 0.991, helpful 0.839, adversarial explained refusals 0.838); 3e-5 gave 0.988 / 0.855 /
    # 0.844, 1e-4 0.994 / 0.820 / 0.840, 3e-5 with the made-up prompts 0.996 / 0.849 / 0.850.
    return rl_cai.stage_config(
        helpful_made_up=64, harmful_fraction=0.4, red_team_made_up=64, learning_rate=3e-5
    )


def with_rl_cai(config: ml_collections.ConfigDict, smoke: bool = False) -> None:
    """Add PPO of the SL-CAI policy against the RL-CAI preference model, and evaluate the
    RL-CAI policy beside base and SL-CAI (its curve over PPO steps on dev)."""
    config.rl_cai = _rl_section(smoke)
    config.evaluate.checkpoints = {**config.evaluate.checkpoints, "rl_cai": "rl_cai"}
    config.evaluate.rl_curves = {"rl_cai": "rl_cai"}


# The baselines of RL-CAI (summary key -> the stages each adds after the RL half's data).
BASELINES = {
    "hh_rlhf": ("rl_hh",),  # PPO against the simulated-crowdworker PM (HH-RLHF)
    "helpful_rlhf": ("pm_helpful", "rl_helpful"),  # PPO against a helpfulness-only PM
    "rloo_ai": ("rloo",),  # RLOO, k = 4, critic-free, against the RL-CAI PM
    "dpo_ai": ("dpo",),  # DPO on the RL-CAI PM's comparisons, soft labels as targets
}
_PM_MIX = ("harmlessness", "helpfulness", "harmlessness_weight", "helpfulness_weight",
           "heldout_fraction", "seed")  # fmt: skip


def with_baselines(config: ml_collections.ConfigDict, methods: tuple[str, ...],
                   smoke: bool = False) -> None:  # fmt: skip
    """Add the named ``BASELINES`` after ``with_rl_half``: their sections (the PPO ones with
    RL-CAI's PPO settings, so each differs from RL-CAI in one thing only), their stages at the
    end of the pipeline before ``evaluate``, and their evaluation."""
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline {unknown[0]!r}; known: {', '.join(BASELINES)}")
    ppo_section = _rl_section(smoke)
    curves = dict(config.evaluate.rl_curves)
    checkpoints = dict(config.evaluate.checkpoints)
    for method in methods:
        if method == "hh_rlhf":
            config.rl_hh = ppo_section.copy_and_resolve_references()
            config.rl_hh.reward_model = "pm_human"
        elif method == "helpful_rlhf":
            config.pm_helpful = config.preference_model.copy_and_resolve_references()
            config.pm_helpful.pm.harmlessness = ""
            config.rl_helpful = ppo_section.copy_and_resolve_references()
            config.rl_helpful.reward_model = "pm_helpful"
            config.evaluate.preference_models = {**config.evaluate.preference_models,
                                                 "pm_helpful": "pm_helpful"}  # fmt: skip
        elif method == "rloo_ai":
            config.rloo = ppo_section.copy_and_resolve_references()
            config.rloo.update(estimator="rloo", value="none", rloo_k=4)
        else:  # dpo_ai: trains on exactly the RL-CAI PM's comparisons
            mix = {k: config.preference_model.pm[k] for k in _PM_MIX}
            train = dict(steps=6, batch_size=8, seq_len=64) if smoke else {}
            config.dpo = dpo.stage_config(**train, **mix)
        stage = BASELINES[method][-1]
        checkpoints[method] = stage
        if stage != "dpo":
            curves[method] = stage
    stages = [s for s in config.stages if s != "evaluate"]
    stages += [s for m in methods for s in BASELINES[m] if s not in stages]
    config.stages = (*stages, "evaluate") if "evaluate" in config.stages else tuple(stages)
    config.evaluate.checkpoints = checkpoints
    config.evaluate.rl_curves = curves


def parse_variant(arg: str | None) -> tuple[bool, int | None]:
    """A toy-world experiment file's ``:arg``: ``smoke``, ``seed=N`` or ``smoke,seed=N``; returns
    (smoke, training seed or None)."""
    smoke, seed = False, None
    for part in (arg or "").split(","):
        if part == "smoke":
            smoke = True
        elif part.startswith("seed=") and part[5:].isdigit():
            seed = int(part[5:])
        elif part:
            raise ValueError(f"unknown variant {arg!r}; known: smoke, seed=N, smoke,seed=N")
    return smoke, seed


# Seeds a training seed leaves alone: the world and its held-out split, the base model (the
# shipped one, or its pretraining), and evaluation's draws, so that every seed is measured on
# the same prompts with the same judge.
_FIXED_SEEDS = ("world", "pretrain", "evaluate")


def reseed(config: ml_collections.ConfigDict, seed: int) -> None:
    """Set every training seed of ``config`` (top-level ``seed`` and each stage's ``seed``
    fields, at any depth) to ``seed``, except ``_FIXED_SEEDS``: one switch for "the same recipe
    on the same world, trained again", which the headline table's seed range is over."""

    def walk(section: ml_collections.ConfigDict) -> None:
        for key in list(section.keys()):
            value = section[key]
            if isinstance(value, ml_collections.ConfigDict):
                walk(value)
            elif key == "seed":
                section[key] = seed

    config.seed = seed
    for key in list(config.keys()):
        if key not in _FIXED_SEEDS and isinstance(config[key], ml_collections.ConfigDict):
            walk(config[key])


def baseline_experiment(
    methods: str | tuple[str, ...], arg: str | None, include_rl_cai: bool = False
) -> ml_collections.ConfigDict:
    """An experiment file's config: the toy-world pipeline through the RL half's data, then
    ``methods`` (and RL-CAI itself with ``include_rl_cai``), then evaluation (``arg``: see
    ``parse_variant``)."""
    smoke, seed = parse_variant(arg)
    methods = (methods,) if isinstance(methods, str) else methods
    rl = ("rl_cai",) if include_rl_cai else ()
    config = toy_world(("sl_cai", *RL_HALF, *rl, "evaluate"), smoke=smoke)
    with_sl_cai(config, smoke=smoke)
    with_rl_half(config, smoke=smoke)
    if include_rl_cai:
        with_rl_cai(config, smoke=smoke)
    with_baselines(config, methods, smoke=smoke)
    if seed is not None:
        reseed(config, seed)
    return config


# ----------------------------------------------------------------------------- real models

REAL_RLCAI = ("sl_cai", "pairs", "feedback", "human_feedback", "preference_model", "pm_heldout",
              "rl_cai", "evaluate")  # fmt: skip
# The vendored HH-RLHF sample (tests/data/hh_rlhf, the release's test split) stands in for a
# download in the :smoke variants; its files are read as train data there, so a smoke run
# evaluates on prompts it trained on: it checks the code path, not the model.
SMOKE_HH_AS_TRAIN = ("harmless_base_test_prompts", "harmless_base_test_pairs")


def real_rlcai(
    config: ml_collections.ConfigDict, hh_rlhf_dir: str, hhh_dir: str, smoke: bool = False
) -> None:
    """Every stage of the paper on a real chat model and HH-RLHF (pods, SmolLM2): SL-CAI on the
    release's train red-team prompts under ``config.constitution``, pairs from the SL-CAI
    model, AI harmlessness labels from the base model (``config.init_from``; debiased, chat
    turns), the release's helpfulness comparisons as the human labels, a PM on each half of
    them (``pm_heldout`` watches PPO for reward hacking and judges the evaluation), PPO, and
    evaluation on the release's test prompts and HHH. ``hh_rlhf_dir`` is one reference shared
    by every stage's field, so ``--config.data.dir=PATH`` moves them all."""
    config.base = "init_from"
    hh = ml_collections.FieldReference(hh_rlhf_dir)
    config.data = ml_collections.ConfigDict({"builder": "hh_rlhf", "dir": hh})
    as_train = SMOKE_HH_AS_TRAIN if smoke else ()
    const = config.constitution
    if smoke:
        # SL-CAI's batch is half its 8 prompts: a random tiny model's revision can be empty
        # (its first token ends the turn), and an empty one is dropped, not trained on.
        sizes = dict(red=8, steps=4, batch=8, sft_batch=4, seq=128, tokens=8, pm_steps=4,
                     iters=2, rl_batch=8)  # fmt: skip
    else:
        sizes = dict(red=-1, steps=1000, batch=32, sft_batch=32, seq=1024, tokens=256,
                     pm_steps=2000, iters=500, rl_batch=64)  # fmt: skip
    s = sizes
    config.sl_cai = sl_cai.stage_config(
        steps=s["steps"], batch_size=s["sft_batch"], seq_len=s["seq"], prompts="hh_rlhf",
        hh_rlhf_dir=hh_rlhf_dir, hh_rlhf_as_train=as_train, red_team=s["red"],
        helpful=0 if smoke else -1, style="chat", rounds=1 if smoke else 4,
        shard_size=8 if smoke else 256,
        response_tokens=s["tokens"], critique_tokens=s["tokens"], revision_tokens=s["tokens"],
        top_p=1.0 if smoke else 0.95,
    )  # fmt: skip
    config.sl_cai.constitution = const
    config.sl_cai.optim.learning_rate = 1e-5
    config.pairs = pairs.stage_config(
        prompts="hh_rlhf", hh_rlhf_dir=hh_rlhf_dir, hh_rlhf_as_train=as_train, red_team=s["red"],
        helpful=0, eval_splits=(), max_new_tokens=s["tokens"], shard_size=8 if smoke else 256,
    )  # fmt: skip
    config.feedback = feedback.stage_config(debias=True, style="chat")
    config.feedback.update(constitution=const, batch_size=8 if smoke else 64,
                           shard_size=8 if smoke else 256)  # fmt: skip
    config.human_feedback = human_feedback.stage_config(
        source="hh_rlhf", hh_rlhf_dir=hh_rlhf_dir, hh_rlhf_as_train=as_train,
        hh_rlhf_files=("harmless_base_test_pairs",) if smoke else ("helpful",),
        hh_rlhf_n=16 if smoke else -1,
    )  # fmt: skip
    pm_train = dict(steps=s["pm_steps"], batch_size=s["batch"], seq_len=s["seq"],
                    learning_rate=1e-5, score_batch_size=s["batch"])  # fmt: skip
    config.preference_model = pm_stage.stage_config(**pm_train, half=1)
    config.pm_heldout = pm_stage.stage_config(**pm_train, half=2)
    config.rl_cai = rl_cai.stage_config(
        prompts="hh_rlhf", hh_rlhf_dir=hh_rlhf_dir, hh_rlhf_as_train=as_train,
        heldout_reward_model="pm_heldout", iterations=s["iters"], batch_size=s["rl_batch"],
        rollout_batch=s["rl_batch"], score_batch=s["rl_batch"], minibatch=s["rl_batch"] // 2,
        train_batch=s["rl_batch"] // 2 if smoke else 8, epochs=1 if smoke else 2,
        prompt_len=256 if smoke else 512, max_new_tokens=s["tokens"],
        save_every=1 if smoke else 10, curve_every=1 if smoke else 50,
    )  # fmt: skip
    config.evaluate = configs.as_dict(evaluate.EvalConfig(
        checkpoints={"base": "base", "sl_cai": "sl_cai", "rl_cai": "rl_cai"}, splits=("test",),
        prompts="hh_rlhf", judge_pm="pm_heldout", hh_rlhf_dir=hh_rlhf_dir, hhh_dir=hhh_dir,
        hhh_models={"base": "base"}, hh_rlhf_n=8 if smoke else 200,
        hh_rlhf_prompts=8 if smoke else 256, max_new_tokens=s["tokens"],
        batch_size=8 if smoke else 64, hhh_batch_size=8,
        preference_models={"preference_model": "preference_model", "pm_heldout": "pm_heldout"},
    ))  # fmt: skip
    for section in (config.sl_cai.loop, config.pairs, config.human_feedback, config.rl_cai,
                    config.evaluate):  # fmt: skip
        section.hh_rlhf_dir = hh
    config.stages = REAL_RLCAI
