"""The baseline preference model, as the paper's HH-RLHF PM: trained on "human" labels for both
helpfulness and harmlessness, here the simulated crowdworker's (``cai/toyworld/crowdworker.py``:
10% label noise, and a preference for evasive refusals among harmless replies). Beside it, on
the same pairs, nothing from AI feedback: compare with the RL-CAI preference model of
``experiments/rlcai.py`` (which trains both).

  python -m cai.main --config=experiments/pm_human.py --workdir=runs/pm_human
  python -m cai.main --config=experiments/pm_human.py:smoke --workdir=/tmp/pm_human_smoke

A workdir of ``experiments/rlcai.py`` already holds ``pm_human``; this file runs it alone.
"""

from cai import presets


def get_config(arg: str | None = None):
    if arg not in (None, "smoke"):
        raise ValueError(f"unknown variant {arg!r}; known: smoke")
    smoke = arg == "smoke"
    stages = ("sl_cai", "pairs", "human_feedback", "pm_human", "evaluate")
    config = presets.toy_world(stages, smoke=smoke)
    presets.with_sl_cai(config, smoke=smoke)
    presets.with_rl_half(config, smoke=smoke)
    for unused in ("feedback", "preference_model"):
        del config[unused]
    config.evaluate.feedback = ""
    config.evaluate.preference_models = {"pm_human": "pm_human"}
    return config
