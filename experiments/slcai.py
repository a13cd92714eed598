"""SL-CAI on the toy world: from the shipped helpful-only base model (``--config.base=pretrain``:
pretrain it first), run critique -> revision on red-team prompts with the toy-world
constitution, fine-tune on the revisions plus helpful samples, and measure base and SL-CAI side
by side on the dev and test splits.

python -m cai.main --config=experiments/slcai.py --workdir=runs/slcai
python -m cai.main --config=experiments/slcai.py:smoke --workdir=/tmp/slcai_smoke

Another constitution: --config.sl_cai.constitution=constitutions/paper.json. The direct-revision
variant as the training set: --config.sl_cai.loop.direct=True.
"""

from cai import presets


def get_config(arg: str | None = None):
    if arg not in (None, "smoke"):
        raise ValueError(f"unknown variant {arg!r}; known: smoke")
    smoke = arg == "smoke"
    config = presets.toy_world(("sl_cai", "evaluate"), smoke=smoke)
    presets.with_sl_cai(config, smoke=smoke)
    return config
