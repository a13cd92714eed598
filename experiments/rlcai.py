"""The whole pipeline on the embedded default, the toy world: from the shipped helpful-only base
model, SL-CAI (critique -> revision, fine-tuning), then evaluation of base and SL-CAI on the dev
and test splits. AI feedback, the preference model and RL-CAI join ``stages`` as they land.

  python -m cai.main --config=experiments/rlcai.py --workdir=runs/rlcai
  python -m cai.main --config=experiments/rlcai.py --workdir=runs/own --config.base=pretrain
  python -m cai.main --config=experiments/rlcai.py:smoke --workdir=/tmp/rlcai_smoke

``--config.base=pretrain`` pretrains the base model in the run (stage ``pretrain`` first)
instead of starting from the shipped one.
"""

from cai import presets


def get_config(arg: str | None = None):
    if arg not in (None, "smoke"):
        raise ValueError(f"unknown variant {arg!r}; known: smoke")
    smoke = arg == "smoke"
    config = presets.toy_world(("sl_cai", "evaluate"), smoke=smoke)
    presets.with_sl_cai(config, smoke=smoke)
    return config
