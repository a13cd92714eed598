"""Checkpoints: an interrupted run resumes exactly, and a SIGKILL during a save leaves the
previous checkpoint restorable."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np

from cai import sharding
from cai.checkpoint import Checkpointer
from cai.files import read_jsonl
from cai.sample import load


def run_main(repo, workdir, *overrides):
    cmd = [
        sys.executable,
        "-m",
        "cai.main",
        f"--config={repo}/experiments/pretrain.py:smoke",
        f"--workdir={workdir}",
        "--config.pretrain.train.steps=8",
        "--config.pretrain.train.save_every=2",
        "--config.pretrain.train.log_every=1",
        *overrides,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_exact_resume_after_process_exit(repo, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_main(repo, straight)
    run_main(repo, resumed, "--config.pretrain.train.halt_at_step=4")  # 4 steps, then exit
    assert Checkpointer(resumed / "pretrain/checkpoints", read_only=True).latest_step() == 4
    run_main(repo, resumed)  # a new process restores step 4 and does 4 more
    mesh = sharding.single_device_mesh()
    _, p_straight, _ = load(str(straight), mesh=mesh)
    _, p_resumed, _ = load(str(resumed), mesh=mesh)
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        p_straight,
        p_resumed,
    )
    loss = lambda d: {
        r["step"]: r["pretrain/loss"] for r in read_jsonl(d / "pretrain/metrics.jsonl")
    }  # noqa: E731
    assert loss(straight) == loss(resumed)  # same data order and RNG at every step
    assert sorted(loss(resumed)) == list(range(1, 9))
    # Restoring onto a (2, 2, 2) mesh places every tensor straight into its shards.
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    _, p_sharded, _ = load(str(resumed), mesh=mesh)
    wi = p_sharded["layers_0"]["mlp"]["wi"]
    assert tuple(wi.sharding.spec) == ("fsdp", "tensor") and len(wi.addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(wi), np.asarray(p_resumed["layers_0"]["mlp"]["wi"]))


CHILD = textwrap.dedent("""
    import sys, numpy as np, jax.numpy as jnp
    from cai.checkpoint import Checkpointer
    ckpt = Checkpointer(sys.argv[1], save_every=1, keep=100, async_save={async_save})
    big = lambda s: {{"w": jnp.full((2048, 2048), float(s)), "b": jnp.full((4096,), float(s))}}
    for step in range(1, 10_000):
        ckpt.save(step, big(step), {{"step": jnp.asarray(step)}}, {{"step": step}})
        ckpt.wait()
        print(step, flush=True)
""")


def kill_during_saves(tmp_path, async_save, delay):
    directory = tmp_path / f"ckpt_{async_save}_{delay}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(async_save=async_save), str(directory)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "1"  # one complete checkpoint exists
    time.sleep(delay)  # land somewhere inside a later save
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    ckpt = Checkpointer(directory, read_only=True)
    step = ckpt.latest_step()
    like = {"w": np.zeros((2048, 2048), np.float32), "b": np.zeros((4096,), np.float32)}
    _, params, train = ckpt.restore(like, {"step": np.zeros((), np.int32)})
    assert float(params["w"][0, 0]) == step and float(params["b"][-1]) == step
    assert int(train["step"]) == step and ckpt.metadata()["step"] == step
    return any(p.name.endswith("orbax-checkpoint-tmp") for p in directory.iterdir())


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    """Kill at several moments; each time the latest complete step restores intact. At least
    one kill must land inside a save (a partial tmp directory is left behind) for the test to
    mean anything."""
    mid_save = [
        kill_during_saves(tmp_path, async_save, delay)
        for async_save in (True, False)
        for delay in (0.05, 0.17, 0.29, 0.41)
    ]
    assert any(mid_save), "no kill landed inside a save; lengthen the saves"
