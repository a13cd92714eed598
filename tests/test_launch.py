"""Launch scripts, run with --echo (print each command instead of running it): the TPU script
creates the VM, ships this checkout to every worker, installs it and runs cai.main everywhere
with --config.distributed=True; the GPU script picks local, Slurm or Open MPI launching."""

import shlex
import subprocess

import pytest


def launch(repo, script, *args):
    proc = subprocess.run(
        ["bash", str(repo / "launch" / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo,
    )
    commands = [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]
    return proc, commands


def test_tpu_pod_script_creates_ships_installs_and_runs_everywhere(repo):
    proc, cmds = launch(
        repo,
        "tpu_pod.sh",
        "--echo",
        "--name=cai-test",
        "--zone=us-west4-a",
        "--accelerator=v5litepod-16",
        "--version=v2-alpha-tpuv5-lite",
        "--project=my-proj",
        "--spot",
        "--",
        "--config=experiments/gemma_2b_rlcai_tpu.py",
        "--workdir=gs://bucket/runs/a b",
    )
    assert proc.returncode == 0, proc.stderr
    create, tar, scp, install, run = cmds
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "cai-test"]
    assert {"--zone=us-west4-a", "--project=my-proj", "--spot"} <= set(create)
    assert {"--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite"} <= set(create)
    assert tar[0] == "tar" and "--exclude=.git" in tar and tar[-1] == "."
    assert scp[4] == "scp" and "--worker=all" in scp
    assert "--worker=all" in install and "pip install -e" in install[-1]
    assert run[4] == "ssh" and "--worker=all" in run
    remote = shlex.split(run[-1].split("=", 1)[1].split("&&", 1)[1])
    assert remote == [
        "python3",
        "-m",
        "cai.main",
        "--config=experiments/gemma_2b_rlcai_tpu.py",
        "--workdir=gs://bucket/runs/a b",  # quoted through two shells intact
        "--config.distributed=True",
    ]


def test_tpu_pod_script_reuses_without_setup_and_can_delete(repo):
    proc, cmds = launch(
        repo, "tpu_pod.sh", "--echo", "--name=n", "--zone=z", "--no_setup", "--delete_after",
        "--", "--dry_run", "--config=c.py",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [c[4] for c in cmds] == ["ssh", "delete"]
    assert "--dry_run --config=c.py --config.distributed=True" in cmds[0][-1]


@pytest.mark.parametrize(
    "args,error",
    [
        (["--zone=z", "--", "--config=c.py"], "error: --name and --zone are required"),
        (["--name=n", "--zone=z"], "error: give cai.main arguments after --"),
        (["--name=n", "--zone=z", "--bogus"], "error: unknown flag --bogus"),
    ],
)
def test_tpu_pod_script_bad_flags(repo, args, error):
    proc, _ = launch(repo, "tpu_pod.sh", *args)
    assert proc.returncode == 2 and proc.stderr.startswith(error)


def test_gpu_script_launchers(repo):
    _, [local] = launch(repo, "gpu.sh", "--echo", "--gpus=0,1", "--", "--config=c.py")
    assert local[:3] == ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "CUDA_VISIBLE_DEVICES=0,1"]
    assert local[3:] == ["python", "-m", "cai.main", "--config=c.py"]
    _, [srun] = launch(repo, "gpu.sh", "--echo", "--launcher=srun", "--nodes=4", "--", "--x=1")
    assert srun[:3] == ["srun", "--nodes=4", "--ntasks-per-node=1"]
    assert srun[-2:] == ["--x=1", "--config.distributed=True"]
    _, [mpi] = launch(repo, "gpu.sh", "--echo", "--launcher=mpirun", "--hosts=a,b,c", "--", "--x=1")
    assert mpi[:5] == ["mpirun", "-np", "3", "--host", "a,b,c"]
    assert mpi[-2:] == ["--x=1", "--config.distributed=True"]
    proc, _ = launch(repo, "gpu.sh", "--launcher=mpirun", "--", "--x=1")
    assert proc.returncode == 2 and "needs --hosts" in proc.stderr
