"""Faults a run survives: a broken checkpoint step (resume falls back past it; every CLI names
it on one line), non-finite losses (the step is skipped; too many in a row stop the run with
finite checkpoints) and failed writes (a full disk while writing a shard, summary.json or a
checkpoint leaves every earlier output intact and stops with one line naming the file).

And kills: the main job's smoke pipeline SIGKILLed at seeded random moments in every stage,
rerun each time, ends with the outputs and parameters of an uninterrupted run."""

import dataclasses
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from etils import epath
from ml_collections import ConfigDict

from cai import configs, convert, pretrained, sharding, stage_lib, train_lib
from cai.checkpoint import Checkpointer
from cai.data.stream import PackedStream
from cai.errors import CheckpointError, NonFiniteError, WriteError
from cai.files import read_json, read_jsonl
from cai.metrics import update_summary
from cai.model import PRESETS, Transformer
from cai.tokenizer import ByteTokenizer
from cai.train_lib import OptimConfig, TrainConfig, compile_train_step, create_train_state, fit

# Orbax leaves the reads it abandons after a failed one to be collected with their errors.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

CFG = dataclasses.replace(PRESETS["tiny"], vocab_size=64, n_layers=1)
BATCH, SEQ = 8, 16


# ----------------------------------------------------------------------------- helpers


def poisoned_loss(params, batch, model):
    """``lm_loss`` times the batch's ``scale`` (1.0, or NaN for a planted bad batch)."""
    loss, aux = train_lib.lm_loss(params, batch, model)
    return loss * jnp.mean(batch["scale"]), aux


def batches(nan_steps=()):
    stream = PackedStream(np.tile(np.arange(3, 35), 100), seq_len=SEQ, batch_size=BATCH, seed=0)

    def batch(step):
        scale = np.full((BATCH,), np.nan if step in nan_steps else 1.0, np.float32)
        return {**stream.batch(step), "scale": scale}

    return batch


def run_fit(workdir, steps, nan_steps=(), **train):
    return fit(
        model=Transformer(CFG),
        optim_cfg=OptimConfig(learning_rate=3e-3, warmup_steps=1),
        train_cfg=TrainConfig(
            steps=steps, batch_size=BATCH, seq_len=SEQ, save_every=2, keep=10, log_every=1, **train
        ),
        mesh=sharding.single_device_mesh(),
        batch_fn=batches(nan_steps),
        workdir=epath.Path(workdir),
        metadata={},
        loss_fn=poisoned_loss,
    )


def truncate_largest(directory):
    """Cut the largest file under ``directory`` to half, as a crash of the storage layer
    would; return it."""
    files = [os.path.join(r, n) for r, _, names in os.walk(directory) for n in names]
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


def full_disk(monkeypatch, when):
    """Writes through epath (every file a stage writes, orbax's JSON items) to a path for
    which ``when(path)`` holds fail with ENOSPC after half their bytes."""
    cls = type(epath.Path("/"))
    real = cls.write_text

    def write_text(self, data, *args, **kwargs):
        if when(os.fspath(self)):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(cls, "write_text", write_text)


def abstract_like():
    """CFG's parameters as ShapeDtypeStructs on one device (nothing compiled or allocated)."""
    params, shardings = train_lib.abstract_params(Transformer(CFG), sharding.single_device_mesh())
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params, shardings
    )


def our_warnings(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and f"{os.sep}cai{os.sep}" in r.pathname
    ]


def leaves_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def broken_base(tmp_path_factory):
    """A copy of the shipped base model with one data file of its only step truncated."""
    path = tmp_path_factory.mktemp("broken") / "toy_base"
    shutil.copytree(stage_lib.SHIPPED_BASE, path)
    data = truncate_largest(path / "checkpoints" / "0" / "params")
    return path, os.path.relpath(data, path / "checkpoints" / "0")


# ----------------------------------------------------------------------------- checkpoints


def test_broken_latest_step_is_reported_and_training_resumes_from_the_one_before(tmp_path, caplog):
    straight = run_fit(tmp_path, 6)  # checkpoints 1 (orbax always saves the first), 2, 4, 6
    ckpt_dir = tmp_path / "checkpoints"
    data = os.path.relpath(truncate_largest(ckpt_dir / "6" / "params"), ckpt_dir / "6")
    with caplog.at_level(logging.WARNING):
        resumed = run_fit(tmp_path, 6)  # 6 does not read: steps 5 and 6 again from 4
    warnings = our_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"checkpoint {ckpt_dir}/6 is unreadable: {data} is truncated")
    assert warnings[0].endswith(f"moved it to {ckpt_dir}/6.broken and resumed from step 4")
    assert os.path.getsize(ckpt_dir / "6.broken" / data) > 0  # kept, not deleted
    leaves_equal(straight.params, resumed.params)
    assert Checkpointer(ckpt_dir, read_only=True).all_steps() == [1, 2, 4, 6]


def test_broken_checkpoint_read_by_a_cli_is_one_line(broken_base):
    path, data = broken_base
    proc = subprocess.run(
        [sys.executable, "-m", "cai.sample", f"--checkpoint={path}", "--prompt=hi"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        f"error: checkpoint {path}/checkpoints/0 is unreadable: {data} is truncated (array "
    ), proc.stderr[-3000:]
    assert len(proc.stderr.splitlines()) == 1, proc.stderr[-3000:]


def test_broken_checkpoint_through_init_from_and_convert(broken_base, tmp_path):
    path, data = broken_base
    mesh = sharding.single_device_mesh()
    with pytest.raises(CheckpointError) as e:
        stage_lib.load_model(os.fspath(path), mesh, "sl_cai.loop.init_from")
    assert str(e.value).startswith(
        f"sl_cai.loop.init_from={path}: checkpoint {path}/checkpoints/0 is unreadable: {data} "
    )
    with pytest.raises(CheckpointError, match="is truncated"):
        convert.convert(os.fspath(path), to=os.fspath(tmp_path / "out"), to_hf=None)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A tiny model's checkpoint with steps 1 and 2, as ``cai.sample`` would read it."""
    path = tmp_path_factory.mktemp("two_steps")
    params = jax.tree.map(lambda a: np.ones(a.shape, a.dtype), abstract_like())
    meta = pretrained.checkpoint_metadata("pretrain", CFG, ByteTokenizer(), ConfigDict())
    with Checkpointer(path / "checkpoints", save_every=1, keep=5, async_save=False) as ckpt:
        for step in (1, 2):
            ckpt.save(step, params, {"step": np.asarray(step)}, {**meta, "step": step})
    return path


@pytest.mark.parametrize(
    "damage, what",
    [
        ("params/_METADATA", "params/_METADATA is truncated or corrupt (not JSON: "),
        ("metadata/metadata", "metadata/metadata is truncated or corrupt (not JSON: "),
        ("params/manifest.ocdbt", "params/manifest.ocdbt is corrupt (Error decoding manifest"),
        ("-metadata/metadata", "metadata/metadata is missing"),
    ],
)
def test_what_is_wrong_with_a_step(two_steps, tmp_path, damage, what):
    """Metadata, manifest or array index truncated or missing: the message names the file,
    and the other steps there."""
    shutil.copytree(two_steps, tmp_path, dirs_exist_ok=True)
    target = tmp_path / "checkpoints" / "2" / damage.lstrip("-")
    if damage.startswith("-"):
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(CheckpointError) as e:
        pretrained.load(os.fspath(tmp_path), sharding.single_device_mesh())
    assert str(e.value).startswith(f"checkpoint {tmp_path}/checkpoints/2 is unreadable: {what}")
    assert str(e.value).endswith(" (other steps: 1)") and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- non-finite


def unguarded_step(state, batch, *, model, optimizer, loss_fn):
    """``train_lib.train_step`` as it was before it checked for non-finite values."""
    (loss, aux), grads = jax.value_and_grad(lambda p: loss_fn(p, batch, model), has_aux=True)(
        state.params
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def test_finite_steps_are_bit_identical_and_a_nan_batch_is_skipped(monkeypatch):
    model = Transformer(CFG)
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    opt = train_lib.make_optimizer(OptimConfig(learning_rate=3e-3, warmup_steps=1), 10)
    batch = batches(nan_steps={3})
    shapes = {k: (v.shape, v.dtype) for k, v in batch(0).items()}
    guarded = compile_train_step(model, opt, mesh, shapes, poisoned_loss)
    monkeypatch.setattr(train_lib, "train_step", unguarded_step)
    before = compile_train_step(model, opt, mesh, shapes, poisoned_loss)
    state = create_train_state(model, opt, mesh, seed=0)
    host, shardings = jax.device_get(state), jax.tree.map(lambda x: x.sharding, state)
    a, b = state, jax.device_put(host, shardings)
    for i in range(3):
        a, ma = guarded(a, sharding.put_batch(batch(i), mesh))
        b, mb = before(b, sharding.put_batch(batch(i), mesh))
        leaves_equal(a, b)
        assert float(ma["loss"]) == float(mb["loss"]) and ma["grad_norm"] == mb["grad_norm"]
        assert float(ma["skipped"]) == 0.0
    kept = jax.device_get(a)
    a, m = guarded(a, sharding.put_batch(batch(3), mesh))  # the NaN batch
    assert float(m["skipped"]) == 1.0 and np.isnan(float(m["loss"]))
    assert int(a.step) == 4  # a batch consumed, no update applied
    leaves_equal((kept.params, kept.opt_state, kept.rng), (a.params, a.opt_state, a.rng))
    a, m = guarded(a, sharding.put_batch(batch(4), mesh))
    assert float(m["skipped"]) == 0.0 and np.isfinite(float(m["loss"]))
    assert not np.array_equal(np.asarray(a.params["embedding"]), kept.params["embedding"])


def test_nan_batches_in_a_row_stop_fit_with_finite_checkpoints(tmp_path, caplog):
    """One bad batch (step 2) is skipped and training goes on; three in a row (steps 5-7,
    ``max_skipped_steps=3``) stop it. No checkpoint holds a non-finite value, and those
    written during the streak hold the parameters of the last applied update (step 4)."""
    with caplog.at_level(logging.WARNING), pytest.raises(NonFiniteError) as e:
        run_fit(tmp_path, 20, nan_steps={1, *range(4, 20)}, max_skipped_steps=3)
    ckpt_dir = tmp_path / "checkpoints"
    assert str(e.value) == (
        "train: steps 5-7 all had a non-finite loss or gradient norm "
        "(train.max_skipped_steps=3); stopped with the parameters of step 4 and the last "
        f"checkpoint, {ckpt_dir}/6, intact; check those batches or lower the learning rate"
    )
    warnings = our_warnings(caplog)
    assert [w.split(";")[0] for w in warnings] == [
        f"train: step {s} had a non-finite loss or gradient norm" for s in (2, 5, 6, 7)
    ]
    skipped = {r["step"]: r["train/skipped"] for r in read_jsonl(tmp_path / "metrics.jsonl")}
    assert skipped == {1: 0, 2: 1, 3: 0, 4: 0, 5: 1, 6: 1, 7: 1}
    ckpt = Checkpointer(ckpt_dir, read_only=True)
    assert ckpt.all_steps() == [1, 2, 4, 6]
    params = {s: jax.device_get(ckpt.restore(abstract_like(), step=s)[1]) for s in (1, 2, 4, 6)}
    for p in params.values():
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(p))
    leaves_equal(params[4], params[6])


# ----------------------------------------------------------------------------- full disk


def test_full_disk_during_a_shard_keeps_the_earlier_ones(tmp_path, monkeypatch):
    items = list(range(10))
    make = lambda part, shard: [{"item": i, "shard": shard} for i in part]  # noqa: E731
    spec = {"seed": 0}
    directory = tmp_path / "shards"
    assert stage_lib.run_shards(directory, items, 3, make, spec, [2], "test") is None
    written = {p.name: p.read_bytes() for p in directory.iterdir()}
    full_disk(monkeypatch, lambda p: "shard-00002" in p)
    with pytest.raises(WriteError) as e:
        stage_lib.run_shards(directory, items, 3, make, spec, [-1], "test")
    assert str(e.value) == (
        f"could not write {directory}/shard-00002-of-00004.jsonl: No space left on device "
        "(earlier outputs are intact; a rerun resumes)"
    )
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == written  # no partial file
    monkeypatch.undo()
    records = stage_lib.run_shards(directory, items, 3, make, spec, [-1], "test")
    assert records == [r for s in range(4) for r in make(items[3 * s : 3 * s + 3], s)]


def test_full_disk_during_summary_keeps_the_old_summary(tmp_path, monkeypatch):
    update_summary(epath.Path(tmp_path), "pretrain", {"steps": 8})
    full_disk(monkeypatch, lambda p: p.endswith("summary.json.tmp"))
    with pytest.raises(WriteError, match=f"^could not write {tmp_path}/summary.json: No space"):
        update_summary(epath.Path(tmp_path), "sl_cai_stage", {"steps": 4})
    assert read_json(tmp_path / "summary.json") == {"pretrain": {"steps": 8}}
    assert os.listdir(tmp_path) == ["summary.json"]


@pytest.mark.parametrize("async_save", [True, False])
def test_full_disk_during_a_checkpoint_save_keeps_the_earlier_steps(
    tmp_path, monkeypatch, async_save
):
    directory = tmp_path / "checkpoints"
    ckpt = Checkpointer(directory, save_every=1, keep=1, async_save=async_save)
    ckpt.save(1, {"w": jnp.full((64,), 1.0)}, {"step": jnp.asarray(1)}, {"step": 1})
    full_disk(monkeypatch, lambda p: "/2.orbax-checkpoint-tmp/" in p)
    with pytest.raises(WriteError) as e:
        ckpt.save(2, {"w": jnp.full((64,), 2.0)}, {"step": jnp.asarray(2)}, {"step": 2})
        ckpt.wait()  # an async save's failure surfaces here
    assert str(e.value).startswith(f"could not write {directory}/2: No space left on device")
    ckpt.close()
    monkeypatch.undo()
    ckpt = Checkpointer(directory, read_only=True)
    assert ckpt.all_steps() == [1]  # keep=1 did not drop step 1 for the failed step 2
    step, params, _ = ckpt.restore({"w": np.zeros((64,), np.float32)})
    assert step == 1 and float(params["w"][0]) == 1.0


def test_full_disk_during_convert_is_one_line(tmp_path):
    """The CLI's view of a failed checkpoint save: one line, the step named, exit 2."""
    out = tmp_path / "converted"
    code = textwrap.dedent(f"""\
        import errno, os, sys
        from etils import epath
        cls = type(epath.Path("/"))
        real = cls.write_text
        def write_text(self, data, *args, **kwargs):
            if "orbax-checkpoint-tmp" in os.fspath(self):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(self))
            return real(self, data, *args, **kwargs)
        cls.write_text = write_text
        from absl import app
        from cai import convert
        sys.argv = ["convert", "--from={stage_lib.SHIPPED_BASE}", "--to={out}"]
        app.run(convert.main)""")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == (
        f"error: could not write {out}/checkpoints/0: No space left on device "
        "(earlier outputs are intact; a rerun resumes)\n"
    )


# ----------------------------------------------------------------------------- kills

KILLS, KILL_SEED = 11, 0  # planned; at least 10 must land (one may come after its run ended)
# Written again by every run with its own timings, or named after the moment: not outputs.
NOT_COMPARED = {"tb", "metrics.jsonl", "checkpoints", "curve"}


def kill_plan(stages, durations, n, seed):
    """``n`` (stage, seconds after it starts) kills in pipeline order: one in every stage and
    the rest in stages drawn in proportion to their length; each moment uniform over the
    first 90% of the stage's uninterrupted duration (a resumed stage has less left to do; a
    kill whose moment comes after its stage ended lands as the next stage starts), or of the
    first half for the last stage (its rerun, which compiles nothing the first run did not,
    can end before a later moment, and nothing after it can be killed)."""
    rng = np.random.default_rng(seed)
    weights = np.array([durations[s] for s in stages])
    extra = rng.choice(len(stages), size=n - len(stages), p=weights / weights.sum())
    picks = list(range(len(stages))) + list(extra)
    span = {s: (0.5 if s == stages[-1] else 0.9) * durations[s] for s in stages}
    plan = [(stages[i], float(rng.uniform(0, span[stages[i]]))) for i in picks]
    return sorted(plan, key=lambda p: (stages.index(p[0]), p[1]))


def without_seconds(tree):
    """``tree`` less every key that holds a wall-clock time (they differ from run to run)."""
    if isinstance(tree, dict):
        return {k: without_seconds(v) for k, v in tree.items() if "seconds" not in k}
    return tree


def outputs(workdir):
    """{relative path: text with the workdir's path as W} of every file a run wrote, less
    checkpoints (compared as arrays), TensorBoard events and metrics logs."""
    out = {}
    for root, dirs, files in os.walk(workdir):
        dirs[:] = sorted(d for d in dirs if d not in NOT_COMPARED)
        for name in files:
            if name in NOT_COMPARED:
                continue
            path = os.path.join(root, name)
            text = open(path, encoding="utf-8", errors="replace").read()
            out[os.path.relpath(path, workdir)] = text.replace(os.fspath(workdir), "W")
    return out


def checkpoint_items(workdir):
    """{"<stage>/checkpoints/<latest step>/<item>": path} for every stage's checkpoints, and
    every step of RL's curve (evaluate reads each)."""
    found = {}
    for root, dirs, _ in os.walk(workdir):
        kind = os.path.basename(root)
        if kind not in ("checkpoints", "curve"):
            continue
        steps = sorted(int(d) for d in dirs if d.isdigit())
        dirs[:] = []
        for step in steps if kind == "curve" else steps[-1:]:
            step_dir = os.path.join(root, str(step))
            for item in sorted(os.listdir(step_dir)):
                if item != "metadata" and os.path.isdir(os.path.join(step_dir, item)):
                    found[os.path.relpath(os.path.join(step_dir, item), workdir)] = os.path.join(
                        step_dir, item
                    )
    return found


def restore_arrays(path):
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as c:
        tree = c.metadata(path).item_metadata.tree
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return c.restore(path, restore_args=args)


@pytest.mark.slow
def test_kills_at_random_moments_in_every_stage_end_as_an_uninterrupted_run(
    repo, tmp_path, main_smoke
):
    """The main job's smoke pipeline SIGKILLed at KILLS seeded moments spread over every
    stage of its config (the stage list comes from the config, so a new stage joins by being
    in the pipeline), rerun after each kill, then to the end: its summary.json (less
    wall-clock times), every shard and JSON file, and the parameters and optimizer state of
    every stage's last checkpoint (and of every RL curve step) equal the uninterrupted run's
    (``main_smoke``, from conftest.py)."""
    import watched
    from test_main import load_experiment

    reference, straight = main_smoke
    stages = list(configs.stages_of(load_experiment(repo, "rlcai").get_config("smoke")))
    assert [s for s, _ in straight.starts] == stages
    plan = kill_plan(stages, straight.durations(), KILLS, KILL_SEED)
    workdir = tmp_path / "runs" / "rlcai"
    argv = [f"--config={repo}/experiments/rlcai.py:smoke", f"--workdir={workdir}"]
    kills = []
    for stage, after in plan:
        run = watched.run(argv, kill_in=stage, kill_after=after, timeout=600)
        if run.killed_at is None:  # the run ended before the moment came
            assert run.returncode == 0, run.stderr[-3000:]
            continue
        assert run.returncode == -9, run.stderr[-3000:]
        kills.append((run.killed_in, round(run.killed_at - dict(run.starts)[run.killed_in], 2)))
    final = watched.run(argv, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    rounded = lambda d: {k: round(v, 1) for k, v in d.items()}  # noqa: E731
    print(f"stage seconds, uninterrupted {rounded(straight.durations())}, "
          f"last rerun {rounded(final.durations())}")  # fmt: skip
    print(f"{len(kills)} kills (stage, seconds into it): {kills}")
    assert len(kills) >= KILLS - 1 and {s for s, _ in kills} == set(stages), kills

    read = lambda w: without_seconds(json.loads((w / "summary.json").read_text()))  # noqa: E731
    assert read(workdir) == read(reference)
    got, want = outputs(workdir), outputs(reference)
    assert sorted(want) == sorted(set(got) & set(want)), "files missing after the kills"
    for name, text in want.items():
        if name != "summary.json":
            assert got[name] == text, f"{name} differs from the uninterrupted run's"
    got, want = checkpoint_items(workdir), checkpoint_items(reference)
    assert sorted(got) == sorted(want)
    for name, path in want.items():
        a, b = restore_arrays(path), restore_arrays(got[name])
        assert jax.tree.structure(a) == jax.tree.structure(b), name
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(x, y, err_msg=name)
