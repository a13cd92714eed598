"""The whole pipeline on the embedded default, the toy world: pretrain the helpful-only base
model, SL-CAI (critique -> revision, fine-tuning), and evaluation of both on held-out requests.
AI feedback, the preference model and RL-CAI join ``stages`` as they land.

  python -m cai.main --config=experiments/rlcai.py --workdir=runs/rlcai
  python -m cai.main --config=experiments/rlcai.py:smoke --workdir=/tmp/rlcai_smoke
"""

from cai import presets


def get_config(arg: str | None = None):
    if arg not in (None, "smoke"):
        raise ValueError(f"unknown variant {arg!r}; known: smoke")
    smoke = arg == "smoke"
    config = presets.toy_world(("pretrain", "sl_cai", "evaluate"), smoke=smoke)
    presets.with_sl_cai(config, smoke=smoke)
    return config
