"""Stage ``pretrain``: train a model from scratch on a token stream.

Sources (``pretrain.data.source``):

* ``toy_world``: the embedded world's corpus (``cai.toyworld.corpus``), built as the TFDS
  dataset ``toy_world`` under ``WORKDIR/data`` and read back with ``as_data_source``; a BPE
  sentencepiece tokenizer is trained on it and saved as ``pretrain/tokenizer.model`` and inside
  every checkpoint's metadata. This is the helpful-only base model every CAI stage starts from;
  stage ``evaluate`` measures it.
* ``arithmetic``: a small arithmetic language with the byte tokenizer (greedy answers to sums
  measure what was learned); ``text_file``: any UTF-8 file, byte tokenizer.

The main job starts from the toy base model shipped with the package (``cai/assets/toy_base``);
``--config.base=pretrain`` runs this stage first and starts from its output instead, and
``experiments/pretrain_toy.py`` rebuilds the shipped model. A rerun with the same workdir resumes;
a rerun with another world, corpus, model or training config stops (``stage_lib.guard``).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time

import ml_collections
import numpy as np
from etils import epath

from cai import configs, pretrained, sharding, stage_lib
from cai.data import stream
from cai.data.toy_world import toy_world as toy_world_tfds
from cai.errors import ConfigError, Halted
from cai.metrics import update_summary
from cai.model import ModelConfig, Transformer
from cai.sampling import Sampler, SamplingConfig
from cai.tokenizer import ByteTokenizer, SentencePieceTokenizer, Tokenizer, train_sentencepiece
from cai.toyworld import corpus, world
from cai.train_lib import OptimConfig, TrainConfig, fit


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "arithmetic"  # arithmetic | text_file | toy_world
    path: str = ""  # for text_file
    vocab_size: int = 1024  # for toy_world: sentencepiece vocabulary (at most)
    n_lines: int = 20000  # for arithmetic
    max_operand: int = 9  # for arithmetic: operands drawn from 0..max_operand
    eval_examples: int = 64  # held-out sums answered greedily after training

    def __post_init__(self) -> None:
        if self.source not in ("arithmetic", "text_file", "toy_world"):
            raise ConfigError(
                f"pretrain.data.source={self.source!r}: expected arithmetic, text_file or toy_world"
            )


def stage_config(
    steps: int = 600, batch_size: int = 32, seq_len: int = 128, n_lines: int = 20000
) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            **configs.train_section(steps, batch_size, seq_len, 4, 3e-3, 50, 0.01),
            "data": configs.as_dict(DataConfig(n_lines=n_lines)),
        }
    )


def arithmetic_accuracy(
    sampler: Sampler, params: object, tokenizer: ByteTokenizer, data_cfg: DataConfig, seed: int
) -> tuple[float, list[str]]:
    """Greedy answers to sums drawn with another seed than the training text. With small
    operands most of them also occur in training: this measures learning, not generalisation."""
    rng = random.Random(seed + 10_007)
    pairs = [
        (rng.randint(0, data_cfg.max_operand), rng.randint(0, data_cfg.max_operand))
        for _ in range(data_cfg.eval_examples)
    ]
    prompts = [[tokenizer.bos_id, *tokenizer.encode(f"Q: {a}+{b}=? A:")] for a, b in pairs]
    outs = sampler.generate(params, prompts, SamplingConfig(max_new_tokens=6, temperature=0.0))
    texts = [tokenizer.decode(toks).strip() for toks, _ in outs]
    correct = sum(t == str(a + b) for t, (a, b) in zip(texts, pairs))
    return correct / len(pairs), [f"{a}+{b} -> {t}" for (a, b), t in zip(pairs, texts)][:4]


def toy_world_tokens(
    config: ml_collections.ConfigDict,
    sc: ml_collections.ConfigDict,
    data_cfg: DataConfig,
    workdir: epath.Path,
    stage_dir: epath.Path,
) -> tuple[Tokenizer, np.ndarray]:
    """The toy-world corpus as one token stream (BOS + document + EOS, concatenated), and the
    sentencepiece tokenizer trained on it (reused when a resumed run finds it on disk)."""
    world_cfg = configs.to_dataclass(world.WorldConfig, configs.get(config, "world", ""), "world")
    corpus_cfg = configs.to_dataclass(
        corpus.CorpusConfig, configs.get(sc, "corpus", "pretrain"), "pretrain.corpus"
    )
    builder = toy_world_tfds.builder(str(workdir / "data"), "corpus", world_cfg, corpus_cfg)
    source = builder.as_data_source()["train"]
    docs = [ex["text"].decode("utf-8") for ex in source.__getitems__(range(len(source)))]
    path = stage_dir / "tokenizer.model"
    if path.exists():
        tokenizer = SentencePieceTokenizer(str(path))
    else:
        stage_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = train_sentencepiece(docs, str(path), data_cfg.vocab_size, seed=config.seed)
    out: list[int] = []
    for doc in docs:
        out += [tokenizer.bos_id, *tokenizer.encode(doc), tokenizer.eos_id]
    logging.info("pretrain: %d toy-world documents, %d tokens", len(docs), len(out))
    return tokenizer, np.asarray(out, np.int32)


def run(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    stage_dir = workdir / "pretrain"
    sc = configs.get(config, "pretrain", "")
    model_cfg = configs.to_dataclass(ModelConfig, config.model, "model")
    train_cfg = configs.to_dataclass(TrainConfig, sc.train, "pretrain.train")
    optim_cfg = configs.to_dataclass(OptimConfig, sc.optim, "pretrain.optim")
    data_cfg = configs.to_dataclass(DataConfig, sc.data, "pretrain.data")
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    sharding.check_batch(train_cfg.batch_size, mesh, "pretrain.train.batch_size")

    world_part = ("world",) if data_cfg.source == "toy_world" else ()
    inputs = {"text_file": stage_lib.fingerprint_file(data_cfg.path)} if data_cfg.path else {}
    stage_lib.guard(
        stage_dir, stage_lib.section(config, "seed", "model", *world_part, "pretrain"), inputs
    )
    if data_cfg.source == "toy_world":
        tokenizer, tokens = toy_world_tokens(config, sc, data_cfg, workdir, stage_dir)
    else:
        tokenizer = ByteTokenizer()
        text = (
            stream.arithmetic_text(data_cfg.n_lines, config.seed, data_cfg.max_operand)
            if data_cfg.source == "arithmetic"
            else stream.read_text_file(data_cfg.path)
        )
        tokens = stream.encode_documents(text, tokenizer)
    if model_cfg.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the "
            f"tokenizer's {tokenizer.vocab_size}"
        )
    data = stream.PackedStream(tokens, train_cfg.seq_len, train_cfg.batch_size, config.seed)
    model = Transformer(model_cfg)
    metadata = pretrained.checkpoint_metadata("pretrain", model_cfg, tokenizer, config)
    logging.info(
        "pretrain: %.2fM params, %d rows of %d tokens, mesh %s",
        model_cfg.num_params() / 1e6,
        len(data.rows),
        train_cfg.seq_len,
        dict(mesh.shape),
    )
    t0 = time.time()
    state = fit(
        model=model,
        optim_cfg=optim_cfg,
        train_cfg=train_cfg,
        mesh=mesh,
        batch_fn=data.batch,
        workdir=stage_dir,
        metadata=metadata,
        stage="pretrain",
    )
    summary = {"steps": int(state.step), "seconds_this_run": round(time.time() - t0, 1)}
    if int(state.step) >= train_cfg.steps and data_cfg.source == "arithmetic":
        sampler = Sampler(model, mesh, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        acc, examples = arithmetic_accuracy(sampler, state.params, tokenizer, data_cfg, config.seed)
        summary.update({"sum_accuracy": acc, "examples": examples})
        logging.info("pretrain: sum accuracy %.3f", acc)
    update_summary(workdir, "pretrain", summary)
    if int(state.step) < train_cfg.steps:
        raise Halted(f"stopped at step {int(state.step)}")
