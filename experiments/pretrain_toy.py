"""The helpful-only base model of the toy world, pretrained from scratch, then measured.

python -m cai.main --config=experiments/pretrain_toy.py --workdir=runs/toy
python -m cai.main --config=experiments/pretrain_toy.py:smoke --workdir=/tmp/toy_smoke

Stage ``pretrain`` builds the ``toy_world`` corpus, trains a sentencepiece tokenizer on it and
the model on the corpus; stage ``evaluate`` writes the judge's figures on the held-out slices
to ``WORKDIR/summary.json`` under ``base``.
"""

from cai import configs, evaluation, pretrain
from cai.toyworld import corpus, world


def get_config(arg: str | None = None):
    config = configs.base_config(stages=("pretrain", "evaluate"), model_preset="small")
    config.world = configs.as_dict(world.WorldConfig(seed=0))
    config.model = configs.model_dict(
        "small", vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, mlp_dim=384
    )
    config.pretrain = pretrain.stage_config(steps=1500, batch_size=32, seq_len=128)
    config.pretrain.optim.learning_rate = 3e-3
    config.pretrain.data.source = "toy_world"
    config.pretrain.data.vocab_size = 512
    config.pretrain.corpus = configs.as_dict(corpus.CorpusConfig(n_docs=40000))
    config.evaluate = configs.as_dict(evaluation.EvalConfig())
    if arg == "smoke":
        config.model = configs.model_dict("tiny", vocab_size=512)
        config.pretrain = pretrain.stage_config(steps=20, batch_size=8, seq_len=64)
        config.pretrain.data.source = "toy_world"
        config.pretrain.data.vocab_size = 512
        config.pretrain.corpus = configs.as_dict(corpus.CorpusConfig(n_docs=1500))
        config.evaluate = configs.as_dict(evaluation.EvalConfig(max_new_tokens=8, per_request=1))
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; known: smoke")
    return config
