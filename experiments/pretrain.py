"""Pretrain a small byte-level model on the arithmetic stream (or --config.pretrain.data.path).

python -m cai.main --config=experiments/pretrain.py --workdir=/tmp/pretrain
python -m cai.main --config=experiments/pretrain.py:smoke --workdir=/tmp/smoke
"""

from cai import configs
from cai.stages import pretrain


def get_config(arg: str | None = None):
    config = configs.base_config(stages=("pretrain",), model_preset="small")
    config.pretrain = pretrain.stage_config(steps=300, batch_size=16, seq_len=128)
    if arg == "smoke":
        config.model = configs.model_dict("tiny")
        config.pretrain = pretrain.stage_config(steps=20, batch_size=8, seq_len=64, n_lines=800)
        config.pretrain.data.eval_examples = 8
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; known: smoke")
    return config
