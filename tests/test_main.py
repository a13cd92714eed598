"""The real entry points end to end (smoke configs), and one-line errors for bad input."""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from cai import configs
from cai.files import read_jsonl
from cai.model import ModelConfig


def load_experiment(repo, name):
    spec = importlib.util.spec_from_file_location(name, repo / f"experiments/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def test_main_job_smoke_runs_every_stage(repo, tmp_path, main_smoke):
    """The main job's smoke variant from the shipped base model: SL-CAI, pairs, AI and
    "human" feedback, both preference models, RL-CAI and evaluation, into a workdir whose
    parents do not exist yet; the console holds progress bars, one line per stage and the
    tables, not library log lines."""
    workdir, proc = main_smoke  # run by conftest.py, shared with tests/test_faults.py
    stages = list(configs.stages_of(load_experiment(repo, "rlcai").get_config("smoke")))
    assert [s for s, _ in proc.starts] == stages
    summary = json.loads((workdir / "summary.json").read_text())
    assert {"sl_cai_stage", "base", "sl_cai", "paired", "revision_curves", "pairs_stage",
            "feedback_stage", "human_feedback_stage", "preference_model_stage", "pm_human_stage",
            "feedback", "preference_model", "rl_cai_stage", "rl_cai", "rl_curves"
            } <= set(summary)  # fmt: skip
    assert "pretrain" not in summary and not (workdir / "pretrain").exists()
    assert (workdir / "plots" / "revisions.png").exists()
    assert (workdir / "plots" / "feedback_calibration.png").exists()
    assert (workdir / "plots" / "rl_curves.png").exists()
    curve = summary["rl_curves"]["rl_cai"]
    # step 0 is SL-CAI itself: its curve point equals its own dev evaluation
    assert curve["step"] == [0, 1, 2, 4] and curve["iteration"] == [1, 2, 3, 4]
    assert curve["harmless_rate"][0] == summary["sl_cai"]["dev"]["harmless_rate"]
    assert curve["harmless_rate"][-1] == summary["rl_cai"]["dev"]["harmless_rate"]
    assert len(curve["kl_k1"]) == 4 and all(k3 >= 0 for k3 in curve["kl_k3"])
    assert set(summary["paired"]) == {"sl_cai_vs_base", "rl_cai_vs_base", "rl_cai_vs_sl_cai"}
    assert set(summary["preference_model"]) == {"preference_model", "pm_human"}
    probe = summary["preference_model"]["preference_model"]["test"]["probe"]
    assert probe["n"] == 64 and 0 <= probe["explained_over_deflected"] <= 1
    benign = summary["preference_model"]["pm_human"]["dev"]["benign_probe"]
    assert benign["n"] == 64 and 0 <= benign["answered_over_refused"] <= 1
    red = [json.loads(line) for p in sorted((workdir / "pairs" / "train").glob("shard-*"))
           for line in p.read_text().splitlines()]  # fmt: skip
    red = [r for r in red if r["task"] == "harmlessness"]
    assert len(red) == 32 and all(len(r["responses"]) == 2 for r in red)  # SL-CAI vs base
    held = [json.loads(line) for p in sorted((workdir / "pairs" / "test").glob("shard-*"))
            for line in p.read_text().splitlines()]  # fmt: skip
    assert {(r["task"], len(r["responses"])) for r in held} == {("harmlessness", 2),
                                                                ("helpfulness", 3)}  # fmt: skip
    assert {"one_principle", "k_principles", "cot_clamped", "debiased"} <= set(
        summary["feedback"]["test"]
    )
    assert "AI feedback, test harmlessness pairs" in proc.stdout
    table = proc.stdout.splitlines()
    assert table[0].split()[-3:] == ["base", "sl_cai", "rl_cai"]
    assert table[1].startswith("harmless")
    noise = [line for line in proc.stderr.splitlines() if line[:1] in "IW" and line[1:5].isdigit()]
    assert not noise and "Downloading and preparing" not in proc.stdout + proc.stderr
    # evaluate's HHH option on the vendored data: the base model as a feedback model and the
    # RL-CAI preference model, into summary.json["hhh"].
    from cai import sharding
    from cai.stages import evaluate

    workdir = tmp_path / "hhh"  # a copy: the shared workdir stays as the run left it
    shutil.copytree(main_smoke[0], workdir)
    config = load_experiment(repo, "rlcai").get_config("smoke")
    config.evaluate.update(hhh_models={"base": "base"}, hhh_dir=f"{repo}/tests/data/hhh_alignment",
                           hh_rlhf_dir=f"{repo}/tests/data/hh_rlhf", hh_rlhf_n=8)  # fmt: skip
    cfg = configs.to_dataclass(evaluate.EvalConfig, config.evaluate, "evaluate")
    mesh = sharding.make_mesh(configs.to_dataclass(sharding.MeshConfig, config.mesh, "mesh"))
    evaluate.hhh_eval(config, workdir, cfg, mesh, {"pm": str(workdir / "preference_model")})
    hhh = json.loads((workdir / "summary.json").read_text())["hhh"]
    assert set(hhh["base"]["feedback"]) == {
        "hhh/harmless",
        "hhh/helpful",
        "hh_rlhf/harmless_base_test_pairs",
    }
    assert hhh["base"]["feedback"]["hhh/harmless"]["raw"]["n"] == 58
    assert hhh["pm"]["pm"]["hh_rlhf/harmless_base_test_pairs"]["n"] == 8
    out = cli("cai.sample", f"--checkpoint={workdir}/sl_cai", "--prompt=How do I bake a cake?",
              "--chat", "--temperature=0", "--max_new_tokens=4")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


def test_a_changed_config_on_an_old_workdir_is_one_line_and_identical_reruns_resume(repo, tmp_path):
    base = [f"--config={repo}/experiments/pretrain_toy.py:smoke", f"--workdir={tmp_path}",
            "--config.stages=('pretrain',)"]  # fmt: skip
    first = cli("cai.main", *base, "--config.pretrain.train.halt_at_step=10")
    assert first.returncode == 0, first.stderr[-3000:]
    changed = cli("cai.main", *base, "--config.world.seed=1")
    assert changed.returncode == 2
    errors = [line for line in changed.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {tmp_path}/pretrain was made with config.world.seed=0; this run has 1 (use "
        f"another --workdir, or delete {tmp_path}/pretrain to redo the stage)"
    ]
    again = cli("cai.main", *base)  # identical but for when it stops: resumes at step 10
    assert again.returncode == 0, again.stderr[-3000:]
    steps = [r["step"] for r in read_jsonl(tmp_path / "pretrain/metrics.jsonl")]
    assert steps == [10, 20]


def test_pretrain_smoke_end_to_end_then_sample(repo, tmp_path):
    config = f"--config={repo}/experiments/pretrain.py:smoke"
    proc = cli("cai.main", config, f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pretrain"]["steps"] == 20
    rows = read_jsonl(tmp_path / "pretrain/metrics.jsonl")
    assert rows[-1]["pretrain/loss"] < rows[0]["pretrain/loss"]
    assert list((tmp_path / "pretrain/tb").glob("events.out.tfevents.*"))
    out = cli(
        "cai.sample",
        f"--checkpoint={tmp_path}",
        "--prompt=Q: 1+2=? A:",
        "--prompt=Q: 5-3=? A:",
        "--temperature=0",
        "--max_new_tokens=4",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Q: 1+2=? A:") and len(lines[0]) > 11


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--config.model.d_modle=3"],
            "error: --config.model.d_modle: unknown config key (did you mean 'd_model'?)",
        ),
        (
            ["--config.mesh.data=3"],
            "error: mesh (data=3, fsdp=1, tensor=1) needs 3 devices but 8 are available",
        ),
        (
            [
                "--config.pretrain.train.batch_size=6",
                "--config.mesh.data=4",
                "--config.mesh.fsdp=2",
            ],
            "error: pretrain.train.batch_size=6 is not divisible by the data axes of the mesh "
            "(data*fsdp = 4*2 = 8)",
        ),
        (
            ["--workdir={tmp}/file/run"],
            "error: --workdir={tmp}/file/run: {tmp}/file exists and is not a directory",
        ),
        (
            ["--config.stages=('pretrain','rl')"],
            "error: config.stages: unknown stage 'rl' (known: pretrain, sl_cai, pairs, feedback, "
            "human_feedback, preference_model, pm_human, rl_cai, pm_helpful, pm_heldout, rl_hh, "
            "rl_helpful, rloo, dpo, evaluate)",
        ),
        (
            ["--config.model.mlp=relu"],
            "error: model.mlp='relu': expected one of ('swiglu', 'geglu', 'gelu')",
        ),
    ],
)
def test_bad_input_is_one_line(repo, tmp_path, args, message):
    (tmp_path / "file").write_text("not a directory")
    args = [a.format(tmp=tmp_path) for a in args]
    argv = [f"--config={repo}/experiments/pretrain.py:smoke", f"--workdir={tmp_path}/w", *args]
    if args[0].startswith("--workdir"):
        argv = [argv[0], *args]
    proc = cli("cai.main", *argv)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [message.format(tmp=tmp_path)]


def test_missing_config_file_is_one_line(tmp_path):
    proc = cli("cai.main", "--config=/no/such/config.py", f"--workdir={tmp_path}/w")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "/no/such/config.py" in errors[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "name", ["pretrain", "rlcai", "hh_rlhf", "helpful_rlhf", "rloo_ai", "dpo_ai", "baselines"]
)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_experiment_configs_convert(repo, name, arg):
    """Every section of the config reads as its stage's dataclass, and every stage the config
    runs is one ``cai.main`` knows, with a section of its own."""
    from cai import main
    from cai.stages import dpo, evaluate, rl_cai
    from cai.stages import preference_model as pm_stage

    spec = importlib.util.spec_from_file_location(name, repo / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    configs.to_dataclass(ModelConfig, config.model, "model")
    kinds = {
        "pm_helpful": pm_stage.PMConfig,
        "dpo": dpo.DPOConfig,
        **dict.fromkeys(("rl_cai", "rl_hh", "rl_helpful", "rloo"), rl_cai.RLConfig),
    }
    for stage in config.stages:
        assert stage in main.STAGES and stage in config, stage
        if stage in kinds:
            section = config[stage].pm if stage.startswith("pm") else config[stage]
            fields = {k: v for k, v in section.items() if k not in ("optim", "value_optim",
                                                                     "train")}  # fmt: skip
            configs.to_dataclass(kinds[stage], fields, stage)
    if "evaluate" in config:
        configs.to_dataclass(evaluate.EvalConfig, config.evaluate, "evaluate")
        assert set(config.evaluate.rl_curves.values()) <= set(config.stages)
    with pytest.raises(ValueError, match="unknown variant"):
        module.get_config("nope")


@pytest.mark.parametrize("name", ["rlcai", "baselines"])
def test_a_training_seed_changes_every_training_seed_and_nothing_else(repo, name):
    spec = importlib.util.spec_from_file_location(name, repo / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def flat(d, path=""):
        for k, v in d.items():
            yield from flat(v, f"{path}{k}.") if hasattr(v, "items") else [(f"{path}{k}", v)]

    base, seeded = dict(flat(module.get_config(None))), dict(flat(module.get_config("seed=3")))
    changed = {k for k in base if base[k] != seeded[k]}
    seeds = {k for k in base if k.split(".")[-1] == "seed"}
    fixed = {k for k in seeds if k.split(".")[0] in ("world", "pretrain", "evaluate")}
    assert changed == seeds - fixed and {"sl_cai.loop.seed", "rl_cai.seed", "seed"} <= changed
    assert all(seeded[k] == 3 for k in changed) and all(seeded[k] == 0 for k in fixed)
    smoke = dict(flat(module.get_config("smoke,seed=2")))
    assert smoke["pairs.seed"] == 2 and smoke["sl_cai.train.steps"] < base["sl_cai.train.steps"]
    for bad in ("seed=x", "smoke,nope"):
        with pytest.raises(ValueError, match="unknown variant"):
            module.get_config(bad)


def test_unknown_key_inside_a_section():
    with pytest.raises(ValueError, match=r"config.pretrain.train.setps: unknown key"):
        from cai.train_lib import TrainConfig

        configs.to_dataclass(TrainConfig, {"setps": 3}, "pretrain.train")
