"""The HH-RLHF baseline on the toy world: RL-CAI's pipeline with PPO against the preference
model trained on the simulated crowdworker's labels for both harmlessness and helpfulness
(``pm_human``) instead of AI harmlessness labels: the paper's "HH RLHF" model, whose
crowdworkers reward evasive refusals. Everything else (SL-CAI start, PPO settings, prompts) is
RL-CAI's.

  python -m cai.main --config=experiments/hh_rlhf.py --workdir=runs/hh_rlhf
  python -m cai.main --config=experiments/hh_rlhf.py:smoke --workdir=/tmp/hh_rlhf_smoke

``experiments/baselines.py`` runs it beside RL-CAI and the other baselines in one workdir.
"""

from cai import presets


def get_config(arg: str | None = None):
    return presets.baseline_experiment("hh_rlhf", arg)
