"""Stage ``pretrain``: train a model from scratch on a token stream.

Until the toy world's corpus lands, the default stream is a small arithmetic language
(``cai.data.stream.arithmetic_text``) and any UTF-8 text file works too; both use the byte
tokenizer. After training, greedy answers to held-out sums measure what was learned.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time

import ml_collections
from etils import epath

from cai import configs, sharding
from cai.data import stream
from cai.errors import ConfigError
from cai.metrics import update_summary
from cai.model import ModelConfig, Transformer
from cai.sampling import Sampler, SamplingConfig
from cai.tokenizer import ByteTokenizer
from cai.train_lib import OptimConfig, TrainConfig, fit


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "arithmetic"  # arithmetic | text_file
    path: str = ""  # for text_file
    n_lines: int = 20000  # for arithmetic
    eval_examples: int = 64  # held-out sums answered greedily after training

    def __post_init__(self) -> None:
        if self.source not in ("arithmetic", "text_file"):
            raise ConfigError(
                f"pretrain.data.source={self.source!r}: expected arithmetic or text_file"
            )


def stage_config(
    steps: int = 600, batch_size: int = 32, seq_len: int = 128, n_lines: int = 20000
) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "train": configs.train_dict(
                steps=steps,
                batch_size=batch_size,
                seq_len=seq_len,
                save_every=max(steps // 4, 1),
                log_every=10,
            ),
            "optim": configs.optim_dict(
                learning_rate=3e-3, warmup_steps=min(50, steps // 5), weight_decay=0.01
            ),
            "data": configs.as_dict(DataConfig(n_lines=n_lines)),
        }
    )


def arithmetic_accuracy(
    sampler: Sampler, params: object, tokenizer: ByteTokenizer, n: int, seed: int
) -> tuple[float, list[str]]:
    """Greedy answers to sums drawn with another seed than the training text."""
    rng = random.Random(seed + 10_007)
    prompts, answers = [], []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        prompts.append([tokenizer.bos_id, *tokenizer.encode(f"Q: {a}+{b}=? A:")])
        answers.append(f" {a + b}")
    outs = sampler.generate(params, prompts, SamplingConfig(max_new_tokens=6, temperature=0.0))
    texts = [tokenizer.decode(toks) for toks, _ in outs]
    correct = sum(t.strip() == ans.strip() for t, ans in zip(texts, answers))
    return correct / n, texts[:4]


def run(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    stage_dir = workdir / "pretrain"
    sc = configs.get(config, "pretrain", "")
    model_cfg = configs.to_dataclass(ModelConfig, config.model, "model")
    train_cfg = configs.to_dataclass(TrainConfig, sc.train, "pretrain.train")
    optim_cfg = configs.to_dataclass(OptimConfig, sc.optim, "pretrain.optim")
    data_cfg = configs.to_dataclass(DataConfig, sc.data, "pretrain.data")
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    sharding.check_batch(train_cfg.batch_size, mesh, "pretrain.train.batch_size")

    tokenizer = ByteTokenizer()
    if model_cfg.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the "
            f"tokenizer's {tokenizer.vocab_size}"
        )
    text = (
        stream.arithmetic_text(data_cfg.n_lines, config.seed)
        if data_cfg.source == "arithmetic"
        else stream.read_text_file(data_cfg.path)
    )
    data = stream.PackedStream(
        stream.encode_documents(text, tokenizer),
        train_cfg.seq_len,
        train_cfg.batch_size,
        config.seed,
    )
    model = Transformer(model_cfg)
    metadata = {
        "stage": "pretrain",
        "model": dataclasses.asdict(model_cfg),
        "tokenizer": tokenizer.spec(),
        "config": config.to_dict(),
    }
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
        acc, examples = arithmetic_accuracy(
            sampler, state.params, tokenizer, data_cfg.eval_examples, config.seed
        )
        summary.update({"sum_accuracy": acc, "examples": examples})
        logging.info("pretrain: held-out sum accuracy %.3f", acc)
    update_summary(workdir, "pretrain", summary)
