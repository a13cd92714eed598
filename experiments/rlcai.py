"""The whole pipeline on the embedded default. Stages are added here as they land; today the
substrate's ``pretrain`` stage is what exists.

  python -m cai.main --config=experiments/rlcai.py --workdir=runs/rlcai
"""

from cai import configs, pretrain


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
