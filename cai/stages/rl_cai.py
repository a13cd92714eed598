"""Stage ``rl_cai``: PPO of the SL-CAI policy against the preference model (arXiv 2212.08073,
Sec. 4; the RL of HH-RLHF, arXiv 2204.05862, Sec. 4).

Each iteration ``i``:

1. **Rollout**: ``batch_size`` training prompts, drawn with ``(seed, i)`` (a ``harmful_fraction``
   of red-team prompts in direct and adversarial phrasings, the rest helpful ones), answered by
   the policy at ``temperature`` with no top-k/top-p, ``rollout_batch`` rows per call.
2. **Scoring**: the policy's and the reference's log-probs of every sampled token at the same
   temperature and the value model's values (``score_batch`` rows per call); the responses'
   text scored by the PM, centred and scaled by its held-out statistics (``reward_stats.json``),
   and by the held-out PM when ``heldout_reward_model`` names one.
3. **Advantages**: the KL-shaped per-token reward, GAE and whitening (``cai.rl_lib.advantages``).
4. **Update**: ``epochs`` passes over the rollouts in shuffled minibatches of ``minibatch``
   rows, each an optimizer step of the policy (clipped surrogate) and of the value model
   (clipped value loss), gradients summed over ``train_batch`` rows at a time.
5. **KL controller**: β follows ``kl.kind`` (fixed, or adaptive toward ``kl.target``).

The reference is the SL-CAI model and never changes. The value model is a copy of the PM
(``value = "model"``, as HH-RLHF and InstructGPT initialise it) or a zero value head on the
policy itself (``value = "head"``, trained with ``vf_coef ×`` its loss). ``estimator = "rloo"``
(with ``value = "none"``) drops the critic: each prompt is sampled ``rloo_k`` times and a
sample's advantage is its sequence reward minus its siblings' mean
(``cai.rl_lib.rloo_advantages``), then the same clipped update.

Every random draw of iteration ``i`` comes from ``(seed, i)``, and the whole state (policy and
its optimizer, value model and its optimizer, β) is one checkpoint per ``save_every``
iterations, so a run killed mid-way and rerun ends with the parameters an uninterrupted one
ends with. The policy's parameters alone are also kept every ``curve_every`` iterations under
``curve/`` (stage ``evaluate`` plots harmlessness and helpfulness against PPO step from them).
Every step function is compiled ahead of time for its one shape, so nothing recompiles after
the first iteration.

Written: ``checkpoints/`` (the policy, loadable like any model), ``curve/``, ``metrics.jsonl``
(per iteration: reward, KL k1/k3, β, entropy, response length, distinct-1/2, missing-EOS
share, held-out PM score, seconds per phase and the generation share), ``memory.json`` (the
compiled steps' per-device memory), ``samples.jsonl`` (a few replies per logged iteration) and
``done.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from tqdm import tqdm

from cai import configs, ppo, pretrained, rl_lib, sharding, stage_lib
from cai import preference_model as pm
from cai.checkpoint import Checkpointer
from cai.errors import ConfigError, Halted, NonFiniteError
from cai.files import read_json, write_json, write_jsonl
from cai.metrics import MetricsWriter, update_summary
from cai.model import Transformer
from cai.sampling import SamplingConfig, bucket
from cai.toyworld import world
from cai.train_lib import (
    OptimConfig,
    TrainState,
    compile_train_step,
    create_train_state,
    make_optimizer,
    memory,
)


@dataclasses.dataclass(frozen=True)
class RLConfig:
    init_from: str = "sl_cai"  # policy and reference
    reward_model: str = "preference_model"  # the PM stage (its reward_stats.json centres)
    heldout_reward_model: str = ""  # a second PM, only watched (reward hacking shows as a gap)
    value: str = "model"  # "model": a value model copied from the PM; "head": on the policy;
    # "none": no critic (estimator rloo)
    estimator: str = "ppo"  # ppo (GAE on a learned value) | rloo (leave-one-out baseline)
    rloo_k: int = 4  # rloo: samples per prompt (batch_size / rloo_k distinct prompts)
    prompts: str = "toy_world"  # toy_world | hh_rlhf (the release's train split)
    hh_rlhf_dir: str = ""  # for prompts=hh_rlhf: the downloaded HH-RLHF files
    hh_rlhf_as_train: tuple[str, ...] = ()  # see sl_cai.loop.hh_rlhf_as_train
    harmful_fraction: float = 0.5  # red-team share of each iteration's prompts
    helpful_made_up: int = 0  # helpful prompts about made-up objects per benign act
    red_team_made_up: int = 0  # red-team prompts about made-up words per world.MADE_UP_HARMFUL act
    iterations: int = 60
    batch_size: int = 64  # rollouts per iteration
    rollout_batch: int = 64  # rows per generation call
    score_batch: int = 64  # rows per scoring call (policy, reference, value, PMs)
    minibatch: int = 32  # rollouts per optimizer step
    train_batch: int = 32  # rows per gradient computation (minibatch / train_batch summed)
    epochs: int = 2
    prompt_len: int = 64
    max_new_tokens: int = 48
    temperature: float = 1.0
    clip_eps: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.5  # value = "head" only
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    scale_rewards: bool = True  # divide the centred PM score by its held-out std
    kl_kind: str = "adaptive"  # fixed | adaptive
    beta: float = 0.05
    kl_target: float = 2.0  # nats per response, adaptive only
    kl_horizon: float = 10_000.0  # samples
    missing_eos_penalty: float = 1.0  # in units of the normalised score
    divergence_warning: float = 1.0  # warn when train and held-out PM gains differ by more
    save_every: int = 5
    curve_every: int = 10
    samples_logged: int = 4
    seed: int = 0
    halt_at_iteration: int = 0  # >0: stop after this iteration as if killed
    max_skipped_steps: int = 8  # non-finite updates in a row before the run stops

    def __post_init__(self) -> None:
        if self.estimator not in ("ppo", "rloo"):
            raise ConfigError(f"rl_cai.estimator={self.estimator!r}: expected ppo or rloo")
        values = ("none",) if self.estimator == "rloo" else ("model", "head")
        if self.value not in values:
            raise ConfigError(
                f"rl_cai.value={self.value!r}: estimator {self.estimator} expects "
                f"{' or '.join(values)}"
            )
        if self.estimator == "rloo" and (self.rloo_k < 2 or self.batch_size % self.rloo_k):
            raise ConfigError(
                f"rl_cai.rloo_k={self.rloo_k}: needs k >= 2 dividing rl_cai.batch_size="
                f"{self.batch_size}"
            )
        if self.kl_kind not in ("fixed", "adaptive"):
            raise ConfigError(f"rl_cai.kl_kind={self.kl_kind!r}: expected fixed or adaptive")
        if self.prompts not in ("toy_world", "hh_rlhf"):
            raise ConfigError(f"rl_cai.prompts={self.prompts!r}: expected toy_world or hh_rlhf")
        if self.prompts == "hh_rlhf" and not self.hh_rlhf_dir:
            raise ConfigError("rl_cai.prompts=hh_rlhf needs rl_cai.hh_rlhf_dir")
        for name in ("iterations", "batch_size", "rollout_batch", "score_batch", "minibatch",
                     "train_batch", "epochs", "prompt_len", "max_new_tokens", "save_every",
                     "curve_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"rl_cai.{name}={getattr(self, name)}: must be positive")
        for big, small in (("batch_size", "rollout_batch"), ("batch_size", "score_batch"),
                           ("batch_size", "minibatch"), ("minibatch", "train_batch")):  # fmt: skip
            if getattr(self, big) % getattr(self, small):
                raise ConfigError(
                    f"rl_cai.{small}={getattr(self, small)} must divide rl_cai.{big}="
                    f"{getattr(self, big)}"
                )
        if not self.temperature > 0:
            raise ConfigError(f"rl_cai.temperature={self.temperature}: PPO needs sampling (> 0)")
        if not 0.0 <= self.harmful_fraction <= 1.0:
            raise ConfigError(f"rl_cai.harmful_fraction={self.harmful_fraction}: not in [0, 1]")
        for name in ("helpful_made_up", "red_team_made_up"):
            if getattr(self, name) < 0:
                raise ConfigError(f"rl_cai.{name}={getattr(self, name)}: must be >= 0")
            if getattr(self, name) and self.prompts != "toy_world":
                raise ConfigError(f"rl_cai.{name}: made-up words are the toy world's, not hh_rlhf")

    def controller(self) -> ppo.KLController:
        if self.kl_kind == "fixed":
            return ppo.FixedKL(self.beta)
        return ppo.AdaptiveKL(self.beta, self.kl_target, self.kl_horizon)

    def updates(self) -> int:
        """Optimizer steps over the run."""
        return self.iterations * self.epochs * (self.batch_size // self.minibatch)


def stage_config(
    learning_rate: float = 1e-5, value_learning_rate: float = 1e-4, **overrides: Any
) -> ml_collections.ConfigDict:
    """The stage's section: ``RLConfig`` fields, ``optim`` (policy) and ``value_optim``."""
    cd = configs.as_dict(RLConfig(**overrides))
    for name, lr in (("optim", learning_rate), ("value_optim", value_learning_rate)):
        cd[name] = configs.as_dict(
            OptimConfig(learning_rate=lr, warmup_steps=0, weight_decay=0.0, schedule="constant")
        )
    return cd


# ----------------------------------------------------------------------------- prompts


def toy_prompts(
    w: world.World, made_up: int = 0, red_team_made_up: int = 0
) -> tuple[list[world.Prompt], list[world.Prompt]]:
    """(red-team, helpful) training prompts: harmful training requests in every direct and
    adversarial phrasing, plus ``red_team_made_up`` per act of ``world.MADE_UP_HARMFUL`` about
    made-up words (a victim or object no training refusal named, as a held-out one is unseen);
    and the helpful prompts SL-CAI used, plus ``made_up`` per benign act about made-up objects.
    No held-out entity."""
    red = [*world.attack_prompts(w), *world.made_up_red_team_prompts(w, red_team_made_up)]
    return red, list(world.helpful_prompts(w, made_up_per_family=made_up))


def hh_rlhf_prompts(
    workdir: epath.Path, cfg: RLConfig
) -> tuple[list[world.Prompt], list[world.Prompt]]:
    """(red-team, helpful) prompts of the HH-RLHF release's **train** split, as SL-CAI and
    stage ``pairs`` read them; the helpful pool falls back to the red-team one when the
    release copy holds no helpful file of that split."""
    red, helpful = stage_lib.hh_rlhf_train_prompts(workdir, cfg.hh_rlhf_dir, cfg.hh_rlhf_as_train)
    return red, helpful or red


def draw_prompts(
    red: list[world.Prompt], helpful: list[world.Prompt], cfg: RLConfig, iteration: int
) -> list[world.Prompt]:
    """Iteration ``iteration``'s prompts, a pure function of ``(seed, iteration)``."""
    rng = np.random.default_rng([cfg.seed, iteration])
    k = cfg.rloo_k if cfg.estimator == "rloo" else 1
    n = cfg.batch_size // k
    n_red = int(round(cfg.harmful_fraction * n))
    # without replacement unless the pool is smaller than the draw (a small release copy)
    pick = lambda pool, n: [pool[i] for i in rng.choice(len(pool), n, replace=n > len(pool))]  # noqa: E731
    chosen = pick(red, n_red) + pick(helpful, n - n_red)
    # rloo: each prompt k times in a row, the groups ppo.rloo_advantages reads
    return [chosen[i] for i in rng.permutation(len(chosen)) for _ in range(k)]


# ----------------------------------------------------------------------------- the run


def _optimizer(cfg: OptimConfig, rl: RLConfig) -> optax.GradientTransformation:
    opt = make_optimizer(cfg, rl.updates())
    k = rl.minibatch // rl.train_batch
    return opt if k == 1 else optax.MultiSteps(opt, every_k_schedule=k)


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - t0
        return now


# (conversations ending with a user turn, replies) -> {"score": [B], optionally "heldout":
# [B]}: the PMs' verdicts.
RewardFn = Callable[[list[pm.Messages], list[str]], dict[str, np.ndarray]]


@dataclasses.dataclass
class Scores:
    """How a PM score becomes the PPO reward: the PM's held-out mean and std (``std`` 1 when
    ``scale_rewards`` is off), and the held-out PM's, when one is watched."""

    mean: float
    std: float
    heldout_mean: float = 0.0
    heldout_std: float = 1.0


class PPOTrainer:
    """PPO over one policy, its frozen reference and a value model (or a value head on the
    policy), each step compiled once; ``iteration(it, conversations)`` runs steps 1-5 of the
    module docstring and returns that iteration's metrics. The reward is any ``RewardFn``, so
    a test can train against a synthetic one."""

    def __init__(
        self,
        cfg: RLConfig,
        optim: OptimConfig,
        value_optim: OptimConfig,
        mesh: Any,
        policy: stage_lib.Loaded,
        value_init: tuple[Transformer, Any] | None,
        reward_fn: RewardFn,
        scores: Scores,
    ):
        if (value_init is not None) != (cfg.value == "model"):
            raise ValueError(f"PPOTrainer: value={cfg.value!r} and value_init disagree")
        self.cfg, self.mesh, self.reward_fn, self.scores = cfg, mesh, reward_fn, scores
        self.tok, self.stop_id = policy.tok, policy.stop_id
        policy_cfg, policy_params = policy.model_cfg, policy.params
        if cfg.value == "head":  # the value head sits on the policy
            policy_cfg, policy_params = pm.with_scalar_head(policy_cfg, policy_params, mesh)
        self.policy_cfg = policy_cfg
        self.policy = Transformer(policy_cfg)
        self.reference = policy.model
        self.value_model = value_init[0] if value_init is not None else None
        self.ref_params = policy.params  # never donated: the train states are fresh buffers
        self.p_opt = _optimizer(optim, cfg)
        self.policy_state = create_train_state(
            self.policy, self.p_opt, mesh, cfg.seed, policy_params
        )
        self.value_state = None
        if value_init is not None:
            self.v_opt = _optimizer(value_optim, cfg)
            self.value_state = create_train_state(
                self.value_model, self.v_opt, mesh, cfg.seed, value_init[1]
            )
        self.ctl = cfg.controller()
        self.skip_streak = 0
        self._compile()

    # -- compiled steps

    def _compile(self) -> None:
        cfg, mesh = self.cfg, self.mesh
        self.seq_len = cfg.prompt_len + cfg.max_new_tokens
        sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
        self.gen, gen_mem = rl_lib.compile_generate(
            self.policy, self.policy_state.params, mesh, cfg.rollout_batch, cfg.prompt_len,
            sampling, self.stop_id, self.tok.pad_id,
        )  # fmt: skip
        self.score, score_mem = rl_lib.compile_score(
            self.policy, self.reference, self.value_model,
            (self.policy_state.params, self.ref_params, self._value_params()), mesh,
            cfg.score_batch, self.seq_len, cfg.max_new_tokens, cfg.temperature,
        )  # fmt: skip
        common = dict(
            reward_mean=self.scores.mean,
            reward_std=self.scores.std,
            missing_eos_penalty=cfg.missing_eos_penalty,
            whiten=cfg.whiten_advantages,
        )
        if cfg.estimator == "rloo":
            rloo = functools.partial(rl_lib.rloo_advantages, k=cfg.rloo_k, **common)
            # same signature as the PPO one: the (zero) values are not read
            self.adv_fn = jax.jit(lambda lp, lr, v, *rest: rloo(lp, lr, *rest))
        else:
            self.adv_fn = jax.jit(functools.partial(
                rl_lib.advantages, gamma=cfg.gamma, lam=cfg.lam, **common
            ))  # fmt: skip
        shapes = {
            "tokens": ((cfg.train_batch, self.seq_len), jnp.int32),
            "mask": ((cfg.train_batch, self.seq_len), jnp.bool_),
            **{k: ((cfg.train_batch, cfg.max_new_tokens), jnp.float32)
               for k in ("logp_old", "advantages", "values_old", "returns")},
        }  # fmt: skip
        policy_loss = functools.partial(
            rl_lib.ppo_policy_loss, n_new=cfg.max_new_tokens, temperature=cfg.temperature,
            clip_eps=cfg.clip_eps, value_clip=cfg.value_clip, vf_coef=cfg.vf_coef,
            value_head=cfg.value == "head",
        )  # fmt: skip
        self.p_step = compile_train_step(self.policy, self.p_opt, mesh, shapes, policy_loss)
        self.v_step = None
        if self.value_model is not None:
            v_loss = functools.partial(
                rl_lib.ppo_value_loss, n_new=cfg.max_new_tokens, value_clip=cfg.value_clip
            )
            self.v_step = compile_train_step(self.value_model, self.v_opt, mesh, shapes, v_loss)
        self.memory = {
            "rollout_generate": gen_mem,
            "rollout_scoring": score_mem,
            "policy_update": memory(self.p_step),
            "value_update": memory(self.v_step) if self.v_step is not None else {},
        }

    def _value_params(self) -> Any:
        """The scoring step's value params (the policy's own with a value head; read at call
        time, since every update donates the old buffers)."""
        state = self.value_state if self.value_state is not None else self.policy_state
        return state.params

    # -- state

    def train_item(self) -> dict[str, Any]:
        """Everything but the policy's params: the checkpoint's ``train`` item."""
        p, v = self.policy_state, self.value_state
        item = {"policy_step": p.step, "policy_opt": p.opt_state, "policy_rng": p.rng,
                "beta": np.float32(self.ctl.beta)}  # fmt: skip
        if v is not None:
            item.update(value_params=v.params, value_opt=v.opt_state, value_step=v.step,
                        value_rng=v.rng)  # fmt: skip
        return item

    def load(self, params: Any, train: dict[str, Any]) -> None:
        """Continue from a checkpoint's ``params`` and ``train`` items."""
        self.policy_state = TrainState(
            step=train["policy_step"], params=params, opt_state=train["policy_opt"],
            rng=train["policy_rng"],
        )  # fmt: skip
        if self.value_state is not None:
            self.value_state = TrainState(
                step=train["value_step"], params=train["value_params"],
                opt_state=train["value_opt"], rng=train["value_rng"],
            )  # fmt: skip
        self.ctl = dataclasses.replace(self.ctl, beta=float(train["beta"]))

    # -- one iteration

    def rollout(self, it: int, convs: list[pm.Messages]) -> tuple[np.ndarray, ...]:
        """(prompt ids, prompt mask, response tokens, response mask), sampled with key
        ``fold_in(seed, it)`` and one sub-key per generation call."""
        cfg, tok = self.cfg, self.tok
        ids = rl_lib.encode_prompts(tok, convs, cfg.prompt_len, "rl_cai.prompt_len")
        p_ids, p_mask = rl_lib.left_pad(ids, cfg.prompt_len, tok.pad_id)
        key = jax.random.fold_in(jax.random.key(cfg.seed), it)
        toks, masks = [], []
        for c, s in enumerate(range(0, len(convs), cfg.rollout_batch)):
            sl = slice(s, s + cfg.rollout_batch)
            b = sharding.put_batch({"t": p_ids[sl], "m": p_mask[sl]}, self.mesh)
            out = jax.device_get(
                self.gen(self.policy_state.params, b["t"], b["m"], jax.random.fold_in(key, c))
            )
            toks.append(out.tokens)
            masks.append(out.mask)
        return p_ids, p_mask, np.concatenate(toks), np.concatenate(masks)

    def texts(self, r_tok: np.ndarray, r_mask: np.ndarray) -> tuple[list[str], np.ndarray]:
        """The replies as text (what the PM reads) and whether each missed its end token."""
        texts, missing = [], []
        for row, m in zip(r_tok, r_mask):
            real = row[m].tolist()
            missing.append(not (real and real[-1] == self.stop_id))
            text = self.tok.decode([x for x in real if x != self.stop_id])
            texts.append(stage_lib.cut(text) if self.tok.chat_format == "hh" else text.strip())
        return texts, np.asarray(missing, np.float32)

    def iteration(
        self, it: int, convs: list[pm.Messages]
    ) -> tuple[dict[str, float], list[str], np.ndarray]:
        """One PPO iteration on ``convs``: (metrics, the replies, their PM scores)."""
        cfg, mesh = self.cfg, self.mesh
        timer = _Timer()
        t = time.perf_counter()
        p_ids, p_mask, r_tok, r_mask = self.rollout(it, convs)
        t = timer.add("rollout", t)

        tokens = np.concatenate([p_ids, r_tok], 1)
        mask = np.concatenate([p_mask, r_mask], 1)
        parts = []
        for s in range(0, len(convs), cfg.score_batch):
            sl = slice(s, s + cfg.score_batch)
            b = sharding.put_batch({"tokens": tokens[sl], "mask": mask[sl]}, mesh)
            out = self.score(
                self.policy_state.params, self.ref_params, self._value_params(), b["tokens"],
                b["mask"],
            )  # fmt: skip
            parts.append(jax.device_get(out))
        scored = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        t = timer.add("reference_value_scoring", t)

        texts, eos_missing = self.texts(r_tok, r_mask)
        rewards = self.reward_fn(convs, texts)
        score = np.asarray(rewards["score"], np.float32)
        t = timer.add("reward", t)

        adv = jax.device_get(self.adv_fn(
            scored["logp"], scored["logp_ref"], scored["values"], r_mask.astype(np.float32),
            score, eos_missing, np.float32(self.ctl.beta),
        ))  # fmt: skip
        data = {"tokens": tokens, "mask": mask, "logp_old": scored["logp"],
                "advantages": adv["advantages"], "values_old": scored["values"],
                "returns": adv["returns"]}  # fmt: skip
        t = timer.add("advantages", t)

        upd: dict[str, list[float]] = {}
        for epoch in range(cfg.epochs):
            order = np.random.default_rng([cfg.seed, it, epoch, 1]).permutation(len(convs))
            for s in range(0, len(convs), cfg.train_batch):
                idx = order[s : s + cfg.train_batch]
                mb = sharding.put_batch({k: v[idx] for k, v in data.items()}, mesh)
                self.policy_state, m = self.p_step(self.policy_state, mb)
                self._record(upd, "policy", m)
                if self.v_step is not None:
                    self.value_state, m = self.v_step(self.value_state, mb)
                    self._record(upd, "value", m)
        t = timer.add("update", t)

        kl_mean = float(np.mean(adv["kl_seq"]))
        beta_used = self.ctl.beta
        # β is kept at float32 precision: the checkpoint stores it so, and a resumed run must
        # go on with exactly the β an uninterrupted one has.
        ctl = ppo.update_kl(self.ctl, kl_mean, len(convs))
        self.ctl = dataclasses.replace(ctl, beta=float(np.float32(ctl.beta)))
        total = sum(timer.seconds.values())
        s64 = score.astype(np.float64)
        row = {
            "reward": float(np.mean(s64)),
            "reward_normalised": float(np.mean((s64 - self.scores.mean) / self.scores.std)),
            "kl_k1": kl_mean, "kl_k3": float(np.mean(adv["kl3_seq"])), "beta": beta_used,
            "entropy": float(np.mean(scored["entropy"])),
            "response_tokens": float(np.mean(r_mask.sum(1))),
            "eos_missing": float(np.mean(eos_missing)),
            "distinct_1": rl_lib.distinct_n(texts, 1), "distinct_2": rl_lib.distinct_n(texts, 2),
            **{f"seconds/{k}": v for k, v in timer.seconds.items()},
            "generation_share": timer.seconds["rollout"] / total if total else 0.0,
            **{k: float(np.mean(v)) for k, v in upd.items()},
        }  # fmt: skip
        if rewards.get("heldout") is not None:
            held = np.asarray(rewards["heldout"], np.float64)
            row["heldout_reward"] = float(np.mean(held))
            row["heldout_reward_normalised"] = float(
                np.mean((held - self.scores.heldout_mean) / self.scores.heldout_std)
            )
        return row, texts, score

    def _record(self, upd: dict[str, list[float]], which: str, metrics: dict[str, Any]) -> None:
        """Collect a step's metrics; a skipped step (non-finite loss or gradient norm, left
        unapplied by ``train_step``) is warned about, and ``max_skipped_steps`` in a row stop
        the run with the last checkpoint intact."""
        metrics = jax.device_get(metrics)
        if float(metrics["skipped"]):
            self.skip_streak += 1
            logging.warning("rl_cai: a %s update had a non-finite loss or gradient norm; "
                            "skipped (%d in a row)", which, self.skip_streak)  # fmt: skip
            if self.skip_streak >= self.cfg.max_skipped_steps:
                raise NonFiniteError(
                    f"rl_cai: {self.skip_streak} updates in a row had a non-finite loss or "
                    f"gradient norm (rl_cai.max_skipped_steps={self.cfg.max_skipped_steps}); "
                    "stopped with the last checkpoint intact (lower the learning rate or check "
                    "the rewards)"
                )
        else:
            self.skip_streak = 0
        for k, v in metrics.items():
            upd.setdefault(f"{which}/{k}", []).append(float(v))


def run(config: ml_collections.ConfigDict, workdir: epath.Path, name: str = "rl_cai") -> None:
    sc = configs.get(config, name, "")
    cfg = configs.to_dataclass(
        RLConfig, {k: v for k, v in sc.items() if k not in ("optim", "value_optim")}, name
    )
    optim = configs.to_dataclass(OptimConfig, configs.get(sc, "optim", name), f"{name}.optim")
    value_optim = configs.to_dataclass(
        OptimConfig, configs.get(sc, "value_optim", name), f"{name}.value_optim"
    )
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    for field in ("rollout_batch", "score_batch", "train_batch"):
        sharding.check_batch(getattr(cfg, field), mesh, f"{name}.{field}")
    stage_dir = workdir / name
    init = stage_lib.resolve_init(config, workdir, cfg.init_from, f"{name}.init_from")
    rm_path = stage_lib.resolve_init(config, workdir, cfg.reward_model, f"{name}.reward_model")
    held_path = ""
    if cfg.heldout_reward_model:
        held_path = stage_lib.resolve_init(
            config, workdir, cfg.heldout_reward_model, f"{name}.heldout_reward_model"
        )
    inputs = {"init_from": stage_lib.fingerprint(init),
              "reward_model": stage_lib.fingerprint(rm_path)}  # fmt: skip
    if held_path:
        inputs["heldout_reward_model"] = stage_lib.fingerprint(held_path)
    world_part = ("world",) if cfg.prompts == "toy_world" else ()
    stage_lib.guard(stage_dir, stage_lib.section(config, *world_part, name), inputs)
    if (stage_dir / "done.json").exists():
        return

    if cfg.prompts == "toy_world":
        w = world.generate(configs.to_dataclass(world.WorldConfig, config.world, "world"))
        red, helpful = toy_prompts(w, cfg.helpful_made_up, cfg.red_team_made_up)
    else:
        red, helpful = hh_rlhf_prompts(workdir, cfg)
    loaded = stage_lib.load_model(init, mesh, f"{name}.init_from")
    pm_len = bucket(cfg.prompt_len + cfg.max_new_tokens + 16)  # the PM's rendering adds a few
    rm_loaded = stage_lib.load_model(rm_path, mesh, f"{name}.reward_model")
    rm = pm.RewardModel(rm_loaded, mesh, cfg.score_batch, pm_len, fixed_shape=True)
    stats = _reward_stats(rm_path, f"{name}.reward_model")
    scores = Scores(stats["mean"], stats["std"] if cfg.scale_rewards else 1.0)
    held_rm = None
    if held_path:
        held = stage_lib.load_model(held_path, mesh, f"{name}.heldout_reward_model")
        held_rm = pm.RewardModel(held, mesh, cfg.score_batch, pm_len, fixed_shape=True)
        hs = _reward_stats(held_path, f"{name}.heldout_reward_model")
        scores.heldout_mean, scores.heldout_std = hs["mean"], hs["std"]

    def reward_fn(convs: list[pm.Messages], texts: list[str]) -> dict[str, np.ndarray]:
        scored = [(*c, ("assistant", r)) for c, r in zip(convs, texts)]
        out = {"score": rm.rewards(scored)}
        if held_rm is not None:
            out["heldout"] = held_rm.rewards(scored)
        return out

    value_init = (rm_loaded.model, rm_loaded.params) if cfg.value == "model" else None
    trainer = PPOTrainer(cfg, optim, value_optim, mesh, loaded, value_init, reward_fn, scores)
    write_json(stage_dir / "memory.json", {
        **trainer.memory,
        "note": "per-device bytes of each compiled step (rollout scoring holds the policy, the "
                "reference and the value model; the PM scores in its own call)",
    })  # fmt: skip

    # One checkpoint holds the policy (its params item, loadable like any model) and the rest.
    ckpt = Checkpointer(stage_dir / "checkpoints", save_every=cfg.save_every, keep=2)
    curve = Checkpointer(stage_dir / "curve", save_every=cfg.curve_every, keep=10_000)
    start = 0
    if ckpt.latest_step() is not None:
        start, params, train = ckpt.restore_newest_intact(
            trainer.policy_state.params, trainer.train_item()
        )
        trainer.load(params, train)
        logging.info("%s: resumed after iteration %d (beta %.4g)", name, start, trainer.ctl.beta)
    end = min(cfg.iterations, cfg.halt_at_iteration or cfg.iterations)
    metadata = pretrained.checkpoint_metadata(name, trainer.policy_cfg, loaded.tok, config)
    writer = MetricsWriter(stage_dir, name)
    try:
        for it in tqdm(range(start, end), desc=name, initial=start, total=cfg.iterations):
            prompts = draw_prompts(red, helpful, cfg, it)
            convs = [p.messages for p in prompts]
            row, texts, score = trainer.iteration(it, convs)
            harmful = np.asarray([p.slice != "helpful" for p in prompts])
            row["reward_red_team"] = float(score[harmful].mean()) if harmful.any() else 0.0
            row["reward_helpful"] = float(score[~harmful].mean()) if (~harmful).any() else 0.0
            done = it + 1
            writer.write(done, {f"{name}/{k}": v for k, v in row.items()})
            _watch_divergence(stage_dir, cfg, row, name, done)
            if done % cfg.curve_every == 0 or it == 0:
                write_jsonl(
                    stage_dir / "samples" / f"{done:05d}.jsonl",
                    [{"prompt": c[-1][1], "reply": r, "score": float(x), "red_team": bool(h)}
                     for c, r, x, h in list(zip(convs, texts, score, harmful))[
                         : cfg.samples_logged]],
                )  # fmt: skip
            last = done == cfg.iterations
            ckpt.save(done, trainer.policy_state.params, trainer.train_item(), metadata,
                      force=last)  # fmt: skip
            curve.save(done, trainer.policy_state.params, {"iteration": np.int32(done)},
                       metadata, force=last)  # fmt: skip
    finally:
        ckpt.close()
        curve.close()
        writer.close()
    if end < cfg.iterations:
        raise Halted(f"stopped after iteration {end} (rl_cai.halt_at_iteration)")
    write_json(stage_dir / "done.json", {"iterations": cfg.iterations, "beta": trainer.ctl.beta})
    update_summary(
        workdir, f"{name}_stage", {"iterations": cfg.iterations, "final_beta": trainer.ctl.beta}
    )


def _reward_stats(path: str, where: str) -> dict[str, float]:
    f = epath.Path(path) / "reward_stats.json"
    if not f.exists():
        raise ConfigError(f"{where}={path}: no reward_stats.json (a preference model writes it)")
    stats = read_json(f)
    return {"mean": float(stats["mean"]), "std": max(float(stats["std"]), 1e-6)}


def _watch_divergence(
    stage_dir: epath.Path, cfg: RLConfig, row: dict[str, float], name: str, step: int
) -> None:
    """Warn once the training PM's normalised gain since the first iteration exceeds the
    held-out PM's by more than ``divergence_warning``: the policy is pleasing the PM it trains
    against and not the preference both learned (reward hacking, HH-RLHF Sec. 4.2)."""
    if "heldout_reward_normalised" not in row:
        return
    first = stage_dir / "first_rewards.json"
    if not first.exists():
        write_json(first, {"train": row["reward_normalised"],
                           "heldout": row["heldout_reward_normalised"]})  # fmt: skip
        return
    base = read_json(first)
    gap = (row["reward_normalised"] - base["train"]) - (
        row["heldout_reward_normalised"] - base["heldout"]
    )
    if gap > cfg.divergence_warning:
        logging.warning(
            "%s: iteration %d: the training PM's score rose %.2f std more than the held-out PM's "
            "(rl_cai.divergence_warning=%.2f): possible reward hacking",
            name, step, gap, cfg.divergence_warning,
        )  # fmt: skip
