"""The whole pipeline on the embedded default, the toy world: from the shipped helpful-only base
model, SL-CAI (critique -> revision, fine-tuning); then the RL half's data: pairs sampled from
the SL-CAI model, AI harmlessness labels from the base model's log-probs, the simulated
crowdworker's helpfulness labels, the RL-CAI preference model and the HH-RLHF-style baseline
preference model; then RL-CAI, PPO of the SL-CAI policy against the RL-CAI preference model;
then evaluation of everything on the dev and test splits.

  python -m cai.main --config=experiments/rlcai.py --workdir=runs/rlcai
  python -m cai.main --config=experiments/rlcai.py --workdir=runs/own --config.base=pretrain
  python -m cai.main --config=experiments/rlcai.py:smoke --workdir=/tmp/rlcai_smoke
  python -m cai.main --config=experiments/rlcai.py:seed=1 --workdir=runs/rlcai_seed1

``:seed=N`` trains every stage with seed N (``presets.reseed``: SL-CAI's samples and fine-tune,
the pairs, labels, PMs and PPO) on the same world, base model and evaluation prompts.

``--config.base=pretrain`` pretrains the base model in the run (stage ``pretrain`` first)
instead of starting from the shipped one. Label forms: ``--config.feedback.labels.debias=True``,
``--config.feedback.labels.principles_per_pair=4``, ``--config.feedback.labels.cot=True``.
"""

from cai import presets


def get_config(arg: str | None = None):
    smoke, seed = presets.parse_variant(arg)
    config = presets.toy_world(("sl_cai", *presets.RL_HALF, "rl_cai", "evaluate"), smoke=smoke)
    presets.with_sl_cai(config, smoke=smoke)
    presets.with_rl_half(config, smoke=smoke)
    presets.with_rl_cai(config, smoke=smoke)
    if seed is not None:
        presets.reseed(config, seed)
    return config
