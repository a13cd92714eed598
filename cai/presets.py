"""Config sections shared by the toy-world experiment files (``experiments/pretrain_toy.py``,
``slcai.py``, ``rlcai.py``): one place for the base model's size and pretraining budget, so the
main job, the stage experiments and the shipped base model (``cai/assets/toy_base``, built by
``experiments/pretrain_toy.py``) all mean the same model."""

from __future__ import annotations

import ml_collections

from cai import configs
from cai.stages import evaluate, feedback, human_feedback, pairs, pretrain, rl_cai, sl_cai
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
    config.evaluate = configs.as_dict(
        evaluate.EvalConfig(max_new_tokens=8, phrasings=1) if smoke else evaluate.EvalConfig()
    )
    return config


def with_sl_cai(config: ml_collections.ConfigDict, smoke: bool = False) -> None:
    """Add the SL-CAI stage on the toy world (critique and direct revisions both run, for the
    revision curve) and evaluate the base and SL-CAI checkpoints side by side."""
    if smoke:
        config.sl_cai = sl_cai.stage_config(
            steps=6, batch_size=8, seq_len=64, red_team=16, helpful=16, rounds=2,
            compare_direct=True, shard_size=8, response_tokens=8, critique_tokens=8,
            revision_tokens=8,
        )  # fmt: skip
    else:
        # 2.5 epochs over 1,024 revisions + 2,048 helpful answers at a gentle learning rate,
        # embedding frozen: chosen on the dev split among 60/120/240 steps, lr 1e-3 and an
        # unfrozen embedding (docs/sl_cai.md, "Choosing the fine-tune on dev").
        config.sl_cai = sl_cai.stage_config(
            steps=240, batch_size=32, seq_len=128, rounds=4, compare_direct=True
        )
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
            red_team=32, helpful=32, eval_phrasings=1, max_new_tokens=8, shard_size=16
        )
        config.feedback = feedback.stage_config(cot_tokens=8, debias=True)
        config.feedback.update(batch_size=32, shard_size=32, compare_k=2)
        pm_train = dict(steps=6, batch_size=8, seq_len=64)
    else:
        # Every helpful prompt, four samples each: two samples of the SL-CAI model rarely
        # differ in what a worker checks (one pair in eight here), so the "human" helpfulness
        # labels need many pairs to find the ones that do.
        config.pairs = pairs.stage_config(helpful=-1, helpful_samples=8, helpful_made_up=64)
        config.feedback = feedback.stage_config(debias=True)
        # seq_len 96: the longest pair of the default run is 85 tokens.
        pm_train = dict(steps=200, batch_size=32, seq_len=96, learning_rate=3e-4)
    # Smoke: 8-token replies are never complete answers, so keep the indifferent labels.
    config.human_feedback = human_feedback.stage_config(
        tasks=("harmlessness", "helpfulness"), keep_ties=smoke
    )
    config.preference_model = pm_stage.stage_config(**pm_train)
    config.pm_human = pm_stage.stage_config(**pm_train, harmlessness="human_feedback")
    config.evaluate.feedback = "feedback"
    config.evaluate.preference_models = {"preference_model": "preference_model",
                                         "pm_human": "pm_human"}  # fmt: skip


def with_rl_cai(config: ml_collections.ConfigDict, smoke: bool = False) -> None:
    """Add PPO of the SL-CAI policy against the RL-CAI preference model, and evaluate the
    RL-CAI policy beside base and SL-CAI (its curve over PPO steps on dev)."""
    if smoke:
        config.rl_cai = rl_cai.stage_config(
            iterations=4, batch_size=16, rollout_batch=16, score_batch=16, minibatch=8,
            train_batch=8, epochs=1, max_new_tokens=8, save_every=2, curve_every=2,
        )  # fmt: skip
    else:
        config.rl_cai = rl_cai.stage_config(helpful_made_up=64)
    config.evaluate.checkpoints = {**config.evaluate.checkpoints, "rl_cai": "rl_cai"}
