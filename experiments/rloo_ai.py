"""The RLOO baseline on the toy world (beyond the paper): RL-CAI's reward (the RL-CAI
preference model) and settings, with PPO's learned value and GAE replaced by REINFORCE
leave-one-out (arXiv 2402.14740): 4 samples per prompt (16 prompts x 4 = RL-CAI's 64
rollouts per iteration), each sample's baseline the mean sequence reward of its three
siblings, no critic.

  python -m cai.main --config=experiments/rloo_ai.py --workdir=runs/rloo_ai
  python -m cai.main --config=experiments/rloo_ai.py:smoke --workdir=/tmp/rloo_smoke
"""

from cai import presets


def get_config(arg: str | None = None):
    return presets.baseline_experiment("rloo_ai", arg)
