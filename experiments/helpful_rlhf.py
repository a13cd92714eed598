"""The helpful-only RLHF baseline on the toy world: a preference model of the simulated
crowdworker's helpfulness labels alone (``pm_helpful``, no harmlessness comparisons at all),
and PPO of the SL-CAI policy against it with RL-CAI's settings: what RL does when nothing in
its reward speaks for harmlessness.

  python -m cai.main --config=experiments/helpful_rlhf.py --workdir=runs/helpful_rlhf
  python -m cai.main --config=experiments/helpful_rlhf.py:smoke --workdir=/tmp/helpful_smoke
"""

from cai import presets


def get_config(arg: str | None = None):
    return presets.baseline_experiment("helpful_rlhf", arg)
