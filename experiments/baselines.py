"""RL-CAI and all its baselines in one workdir, for one table: the main job's pipeline
(``experiments/rlcai.py``), then HH-RLHF (PPO against the simulated-crowdworker PM),
helpful-only RLHF, RLOO and DPO from AI feedback, each evaluated like RL-CAI (their curves
against PPO step too). The shared stages have the main job's settings, so on the main job's
workdir they are reused; only ``evaluate`` differs (move the main job's ``evaluate/`` aside
first, or use a fresh workdir).

  python -m cai.main --config=experiments/baselines.py --workdir=runs/baselines
  python -m cai.main --config=experiments/baselines.py:smoke --workdir=/tmp/baselines_smoke
"""

from cai import presets


def get_config(arg: str | None = None):
    return presets.baseline_experiment(tuple(presets.BASELINES), arg, include_rl_cai=True)
