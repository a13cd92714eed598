"""The ``dpo_ai`` baseline on the toy world (beyond the paper): RL-CAI's pipeline up to its
preference data (SL-CAI, pairs sampled from the SL-CAI model, AI harmlessness labels from the
base model, the simulated crowdworker's helpfulness labels), then DPO of the SL-CAI policy
directly on those comparisons, soft labels as targets, instead of a preference model and PPO;
then evaluation of base, SL-CAI and the DPO policy on the dev and test splits.

  python -m cai.main --config=experiments/dpo_ai.py --workdir=runs/dpo_ai
  python -m cai.main --config=experiments/dpo_ai.py:smoke --workdir=/tmp/dpo_ai_smoke

DPO trains on the comparisons the RL-CAI preference model trains on (its ``harmlessness`` /
``helpfulness`` sources, task weights, held-out fraction and seed are copied from the
``preference_model.pm`` section, ``cai.presets.with_baselines``), so the two differ only in
what learns from them; no preference model is trained here. ``experiments/baselines.py`` runs
it beside RL-CAI and the other baselines in one workdir.

The default DPO settings (150 steps of 32 pairs, seq_len 96, β 0.1, lr 1e-5; see
``cai.stages.dpo.stage_config``) are untuned.
"""

from cai import presets


def get_config(arg: str | None = None):
    config = presets.baseline_experiment("dpo_ai", arg)
    config.stages = tuple(s for s in config.stages if s not in ("preference_model", "pm_human"))
    del config["preference_model"], config["pm_human"]  # their mix is copied into config.dpo
    config.evaluate.preference_models = {}
    return config
