"""The helpful-only base model of the toy world, pretrained from scratch, then measured.

python -m cai.main --config=experiments/pretrain_toy.py --workdir=runs/toy
python -m cai.main --config=experiments/pretrain_toy.py:smoke --workdir=/tmp/toy_smoke

Stage ``pretrain`` builds the ``toy_world`` corpus, trains a sentencepiece tokenizer on it and
the model on the corpus; stage ``evaluate`` writes the judge's figures on the held-out slices
to ``WORKDIR/summary.json`` under ``base``. Sizes live in ``cai.presets.toy_world``.
"""

from cai import presets


def get_config(arg: str | None = None):
    if arg not in (None, "smoke"):
        raise ValueError(f"unknown variant {arg!r}; known: smoke")
    return presets.toy_world(("pretrain", "evaluate"), smoke=arg == "smoke", base="pretrain")
