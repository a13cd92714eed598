"""Train state, optimizer, the pure train step, its one-time compilation, and the resumable loop.

Every stage that trains (pretraining, SL-CAI, the preference model, PPO) uses this file: it
supplies a ``loss_fn(params, batch, model) -> (loss, metrics)`` and a deterministic
``batch_fn(step) -> dict of numpy arrays``; ``fit`` does the rest (sharded init, restore,
compile once, checkpoint cadence, metrics).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from etils import epath
from jax.sharding import Mesh
from tqdm.auto import tqdm

from cai import sharding
from cai.checkpoint import Checkpointer
from cai.errors import ConfigError, NonFiniteError
from cai.metrics import MetricsWriter
from cai.model import Transformer

Batch = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, Transformer], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 3e-4
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear | constant (after linear warmup)
    end_lr_ratio: float = 0.1  # final lr = learning_rate * end_lr_ratio
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0  # global-norm clipping; 0 disables
    # Parameters held fixed: regexes matched against '/'-joined paths ("embedding",
    # "layers_.*/attn/.*"). Fine-tuning uses it to keep the (tied) embedding of tokens the new
    # data never shows from being pushed out of reach by every softmax over them.
    freeze: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(
                f"optim.schedule={self.schedule!r}: expected cosine, linear or constant"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 256
    seed: int = 0
    log_every: int = 10
    save_every: int = 200
    keep: int = 2
    halt_at_step: int = 0  # >0: stop after this step as if preempted (a rerun resumes)
    # Stop after this many steps in a row with a non-finite loss or gradient norm (each one is
    # skipped: parameters and optimizer state stay as they were).
    max_skipped_steps: int = 8

    def __post_init__(self) -> None:
        for f in (
            "steps", "batch_size", "seq_len", "log_every", "save_every", "keep", "max_skipped_steps"
        ):  # fmt: skip
            if getattr(self, f) <= 0:
                raise ConfigError(f"train.{f} must be positive, got {getattr(self, f)}")


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    end = cfg.learning_rate * cfg.end_lr_ratio
    decay_steps = max(total_steps - warmup, 1)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.learning_rate, warmup, warmup + decay_steps, end
        )
    after = (
        optax.linear_schedule(cfg.learning_rate, end, decay_steps)
        if cfg.schedule == "linear"
        else optax.constant_schedule(cfg.learning_rate)
    )
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, warmup), after], [warmup]
    )


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with warmup + decay; no weight decay on vectors (norm scales, biases)."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    adamw = optax.adamw(
        make_schedule(cfg, total_steps),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=decay_mask,
    )
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw) if cfg.clip_norm else adamw
    if not cfg.freeze:
        return tx
    patterns = [re.compile(p) for p in cfg.freeze]

    def frozen(params: Any) -> Any:
        def match(path: Any, _: Any) -> bool:
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            return any(p.fullmatch(name) for p in patterns)

        return jax.tree_util.tree_map_with_path(match, params)

    # Zero frozen gradients before clipping (they do not count in the norm) and frozen updates
    # after AdamW (no weight decay either); set_to_zero keeps no state, so the optimizer state
    # keeps the same structure as without freezing.
    zero = optax.masked(optax.set_to_zero(), frozen)
    return optax.chain(zero, tx, zero)


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2]: fold_in(rng, step) gives the step's key


def next_token_nll(
    logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Summed NLL of tokens[:, 1:] given logits[:, :-1], weighted by loss_mask[:, 1:].

    Returns (nll_sum, weight_sum, correct_sum). Written for XLA:CPU's sake, where the
    [B, T, V] passes dominate a small model's step: targets are shifted instead of the logits
    sliced (the last position gets weight 0), the target's logit is picked with a one-hot
    product (its gradient is elementwise; take_along_axis's is a scatter into zeros), and
    "correct" compares with the max instead of taking an argmax (they differ only on ties)."""
    logits = logits.astype(jnp.float32)
    targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
    w = jnp.pad(loss_mask[:, 1:].astype(jnp.float32), ((0, 0), (0, 1)))
    tok_logit = jnp.sum(logits * jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype), -1)
    tok_logp = tok_logit - jax.nn.logsumexp(logits, -1)  # [B, T]
    correct = (tok_logit >= jnp.max(logits, -1)).astype(jnp.float32)
    return -jnp.sum(tok_logp * w), jnp.sum(w), jnp.sum(correct * w)


def lm_loss(
    params: Any, batch: Batch, model: Transformer
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked next-token cross-entropy; ``loss_mask`` picks which tokens are targets."""
    out = model.apply({"params": params}, batch["tokens"], batch["mask"])
    loss_mask = batch["loss_mask"] * batch["mask"]
    nll, n, correct = next_token_nll(out.logits, batch["tokens"], loss_mask)
    n = jnp.maximum(n, 1.0)
    return nll / n, {"accuracy": correct / n, "tokens": n}


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: Transformer,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step: ``(state, batch) -> (state, metrics)``; pure, jitted once by ``fit``.

    A step whose loss or gradient norm is not finite (a NaN or inf anywhere in the gradients
    makes the norm so) is skipped: parameters and optimizer state come back unchanged,
    selected with ``jnp.where`` so a finite step's results are bit-identical to an unguarded
    step's, and ``metrics["skipped"]`` is 1. ``step`` counts batches consumed and advances
    either way, so ``batch_fn(step)`` moves past the bad batch and a resumed run sees the same
    batches; the optimizer's own count (which drives the learning-rate schedule) advances only
    with an applied update."""
    (loss, aux), grads = jax.value_and_grad(lambda p: loss_fn(p, batch, model), has_aux=True)(
        state.params
    )
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "skipped": (~finite).astype(jnp.float32),
        **aux,
    }
    return state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
    ), metrics


def abstract_params(model: Transformer, mesh: Mesh) -> tuple[Any, Any]:
    """(boxed-free abstract params, their shardings) without allocating anything."""
    boxed = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    )
    return nn.unbox(boxed), sharding.param_shardings(boxed, mesh)


def init_params(model: Transformer, mesh: Mesh, seed: int) -> Any:
    """Parameters created directly in their shards (no full host copy)."""
    _, shardings = abstract_params(model, mesh)
    init = lambda key: nn.unbox(model.init(key, jnp.zeros((1, 1), jnp.int32))["params"])  # noqa: E731
    return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def state_shardings(
    model: Transformer, optimizer: optax.GradientTransformation, mesh: Mesh
) -> tuple[TrainState, TrainState]:
    """(abstract TrainState, TrainState of shardings); optimizer moments follow their params."""
    params, p_shard = abstract_params(model, mesh)
    opt = jax.eval_shape(optimizer.init, params)
    rep = sharding.replicated(mesh)
    o_shard = optax.tree_map_params(
        optimizer, lambda _, s: s, opt, p_shard, transform_non_params=lambda _: rep
    )
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        opt_state=opt,
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
    )
    return abstract, TrainState(step=rep, params=p_shard, opt_state=o_shard, rng=rep)


def create_train_state(
    model: Transformer,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    seed: int,
    params: Any | None = None,
) -> TrainState:
    """A fresh, sharded state; ``params`` (e.g. a restored base model) replaces the random init."""
    _, shard = state_shardings(model, optimizer, mesh)

    def make(key: jax.Array, given: Any) -> TrainState:
        p = (
            nn.unbox(model.init(key, jnp.zeros((1, 1), jnp.int32))["params"])
            if given is None
            else given
        )
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=p,
            opt_state=optimizer.init(p),
            rng=jax.random.key_data(jax.random.fold_in(key, 1)),
        )

    return jax.jit(make, out_shardings=shard)(jax.random.key(seed), params)


def compile_train_step(
    model: Transformer,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    batch_shapes: dict[str, tuple[tuple[int, ...], Any]],
    loss_fn: LossFn = lm_loss,
) -> Any:
    """Jit with in/out shardings and donated state, compile ahead of time, log memory.

    The returned executable accepts only these shapes, so a run cannot silently recompile."""
    abstract, shard = state_shardings(model, optimizer, mesh)
    for name, (shape, _) in batch_shapes.items():
        sharding.check_batch(shape[0], mesh, f"batch['{name}'] leading dim")
    b_shard = {k: sharding.batch_sharding(mesh, len(s)) for k, (s, _) in batch_shapes.items()}
    b_abstract = {
        k: jax.ShapeDtypeStruct(s, d, sharding=b_shard[k]) for k, (s, d) in batch_shapes.items()
    }
    step = functools.partial(train_step, model=model, optimizer=optimizer, loss_fn=loss_fn)

    def run(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        with sharding.activation_context(mesh):
            return step(state, batch)

    jitted = jax.jit(
        run,
        in_shardings=(shard, b_shard),
        out_shardings=(shard, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shard
    )
    compiled = jitted.lower(abstract, b_abstract).compile()
    log_memory(compiled, "train_step")
    return compiled


def memory(compiled: Any) -> dict[str, int]:
    """Per-device bytes from ``memory_analysis()``; ``total`` = arguments + outputs + temps -
    aliased (donated) buffers, what must fit on one device at the peak. Empty where the
    backend does not implement the analysis."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        m = None
    if m is None:
        return {}
    out = {
        k: int(getattr(m, f"{k}_size_in_bytes", 0))
        for k in ("argument", "output", "temp", "alias", "generated_code")
    }
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def log_memory(compiled: Any, what: str) -> dict[str, int]:
    stats = memory(compiled)
    logging.info(
        "%s per-device memory: %s",
        what,
        ", ".join(f"{k}={v / 2**20:.1f}MiB" for k, v in stats.items()),
    )
    return stats


class SkipCounter:
    """Counts the steps ``train_step`` skipped: one warning line for each, and NonFiniteError
    after ``limit`` in a row."""

    def __init__(self, stage: str, limit: int, ckpt: Checkpointer):
        self.stage, self.limit, self.ckpt = stage, limit, ckpt
        self.streak = 0

    def see(self, step: int, skipped: Any) -> None:
        if not float(skipped):
            self.streak = 0
            return
        self.streak += 1
        logging.warning(
            "%s: step %d had a non-finite loss or gradient norm; update skipped (%d in a row)",
            self.stage,
            step,
            self.streak,
        )
        if self.streak >= self.limit:
            self.ckpt.wait()
            kept = self.ckpt.latest_step()
            raise NonFiniteError(
                f"{self.stage}: steps {step - self.streak + 1}-{step} all had a non-finite loss or "
                f"gradient norm (train.max_skipped_steps={self.limit}); stopped with the "
                f"parameters of step {step - self.streak}"
                + (f" and the last checkpoint, {self.ckpt.step_dir(kept)}, intact" if kept else "")
                + "; check those batches or lower the learning rate"
            )


def fit(
    *,
    model: Transformer,
    optim_cfg: OptimConfig,
    train_cfg: TrainConfig,
    mesh: Mesh,
    batch_fn: Callable[[int], dict[str, Any]],
    workdir: epath.Path,
    metadata: dict[str, Any],
    loss_fn: LossFn = lm_loss,
    init_params: Any | None = None,
    stage: str = "train",
) -> TrainState:
    """Train for ``train_cfg.steps`` optimizer steps, resuming from ``workdir/checkpoints``.

    ``batch_fn(step)`` must be a pure function of the step so a resumed run sees exactly the
    batches the uninterrupted one would have. Resuming takes the newest checkpoint that reads
    (a broken newer one is warned about and moved aside, see ``Checkpointer``). A skipped step
    (non-finite loss or gradient norm, see ``train_step``) logs a warning; after
    ``train.max_skipped_steps`` in a row, NonFiniteError stops the run. Parameters never change
    on a skipped step, so every checkpoint written holds finite parameters.
    """
    optimizer = make_optimizer(optim_cfg, train_cfg.steps)
    sharding.check_batch(train_cfg.batch_size, mesh, "train.batch_size")
    example = batch_fn(0)
    compiled = compile_train_step(
        model, optimizer, mesh, {k: (v.shape, v.dtype) for k, v in example.items()}, loss_fn
    )
    ckpt = Checkpointer(
        workdir / "checkpoints", save_every=train_cfg.save_every, keep=train_cfg.keep
    )
    state = create_train_state(model, optimizer, mesh, train_cfg.seed, init_params)
    if ckpt.latest_step() is not None:
        train_like = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
        step, params, train = ckpt.restore_newest_intact(state.params, train_like)
        state = TrainState(
            step=train["step"], params=params, opt_state=train["opt_state"], rng=train["rng"]
        )
        logging.info("%s: resumed from step %d", stage, step)
    start = int(state.step)
    end = train_cfg.steps
    if train_cfg.halt_at_step:
        end = min(end, train_cfg.halt_at_step)
    writer = MetricsWriter(workdir, stage)
    skips = SkipCounter(stage, train_cfg.max_skipped_steps, ckpt)
    last = None  # (step, its "skipped" flag), read one step late so the host never waits
    try:
        for step in tqdm(
            range(start, end), desc=stage, initial=start, total=train_cfg.steps, mininterval=2.0
        ):
            batch = sharding.put_batch(batch_fn(step), mesh)
            state, metrics = compiled(state, batch)
            done = step + 1
            if last is not None:
                skips.see(*last)
            last = (done, metrics["skipped"])
            if done % train_cfg.log_every == 0 or done == end:
                writer.write(done, {f"{stage}/{k}": v for k, v in jax.device_get(metrics).items()})
            ckpt.save(
                done,
                state.params,
                {"step": state.step, "opt_state": state.opt_state, "rng": state.rng},
                {**metadata, "step": done},
                force=done == end,
            )
        if last is not None:
            skips.see(*last)
        ckpt.wait()
    finally:
        writer.close()
        ckpt.close()
    return state
