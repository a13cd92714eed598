"""`cai.main --dry_run` on the real-model configs, scaled down to tiny models on 8 fake devices:
every step compiles from abstract shapes, per-device memory is reported, nothing is written,
and a checkpoint whose shapes differ from the config is caught before any pod is rented."""

import importlib.util
import math
import subprocess
import sys

import pytest

from cai import configs, dry_run, pretrained
from cai.errors import ConfigError
from cai.model import PRESETS, ModelConfig

REAL = {"gemma_2b_rlcai_tpu": ("gemma_2b", 16), "llama_8b_rlcai_tpu": ("llama3_8b", 32)}


def load(repo, name):
    spec = importlib.util.spec_from_file_location(name, repo / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", REAL)
def test_real_configs_have_the_real_shapes_and_a_smoke_variant(repo, name):
    module = load(repo, name)
    preset, chips = REAL[name]
    config = module.get_config()
    assert configs.to_dataclass(ModelConfig, config.model, "model") == PRESETS[preset]
    assert math.prod(config.mesh.values()) == chips
    assert config.init_from and config.data.builder == "hh_rlhf"
    assert config.constitution.startswith("constitutions/")
    configs.to_dataclass(dry_run.DryRunConfig, config.dry_run, "dry_run")
    smoke = configs.to_dataclass(ModelConfig, module.get_config("smoke").model, "model")
    assert smoke.num_params() < 1e6
    with pytest.raises(ValueError, match="unknown variant"):
        module.get_config("nope")


def test_smoke_dry_run_compiles_every_step(repo):
    config = load(repo, "gemma_2b_rlcai_tpu").get_config("smoke")  # llama: the CLI test below
    lines = []
    results = dry_run.run(config, print_fn=lines.append)
    # every stage's steps, then the shapes of config.dry_run
    stages = ["sl_cai/train_step", "preference_model/train_step", "pm_heldout/train_step"]
    stages += [f"rl_cai/{s}" for s in dry_run.RL_STEPS]
    assert list(results) == [*stages, "finetune/train_step", "generate", "score"]
    assert lines[0].startswith("mesh {'data': 2, 'fsdp': 2, 'tensor': 2} over 8 cpu devices")
    cfg = configs.to_dataclass(ModelConfig, config.model, "model")
    param_bytes = 4 * cfg.num_params()
    for step, m in results.items():
        assert m["total"] > 0, step
    # Per device: the (sharded) params are a fraction of the whole, yet all of them are there.
    assert param_bytes / 8 <= results["generate"]["argument"] < param_bytes / 2
    # Train-step arguments hold params + two AdamW moments (+ the batch).
    assert results["finetune/train_step"]["argument"] > 2.5 * results["generate"]["argument"]
    assert sum("|" in line for line in lines) == 1 + len(results)  # header + a row per step
    assert results["rl_cai/rollout_generate"]["shape"] == "batch 8, prompt 256 + 8 new"


def test_dry_run_cli_writes_nothing(repo, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cai.main",
            f"--config={repo}/experiments/llama_8b_rlcai_tpu.py:smoke",
            f"--workdir={tmp_path}/w",
            "--dry_run",
            "--config.dry_run.train_seq_len=24",  # overrides reach the dry run
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in proc.stdout
    for step in ("finetune/train_step", "generate", "score"):
        assert f"  {step} " in proc.stdout
    assert "| batch 8 x 24 " in proc.stdout
    assert not (tmp_path / "w").exists()


def test_stage_train_steps_are_compiled_too(repo):
    """Every train step of the main job's stages, and PPO's five steps for ``rl_cai``."""
    config = load(repo, "rlcai").get_config("smoke")
    pms = ["preference_model/train_step", "pm_human/train_step"]
    rl = [f"rl_cai/{s}" for s in dry_run.RL_STEPS]
    results = dry_run.run(config, print_fn=lambda _: None)
    assert list(results) == ["sl_cai/train_step", *pms, *rl]
    assert results["rl_cai/rollout_generate"]["shape"] == "batch 16, prompt 64 + 8 new"
    assert results["rl_cai/rollout_scoring"]["total"] > 0
    assert results["rl_cai/value_update"]["total"] > 0  # value = model: a second train state
    config.stages = ("sl_cai", *config.stages[1:-2])  # without rl_cai: quicker
    config.base = "pretrain"  # --config.base=pretrain: the run pretrains its own base model
    results = dry_run.run(config, print_fn=lambda _: None)
    assert list(results) == ["pretrain/train_step", "sl_cai/train_step", *pms]
    assert results["pretrain/train_step"]["shape"] == "batch 8 x 64"
    assert results["sl_cai/train_step"]["shape"] == "batch 8 x 64"
    assert results["pm_human/train_step"]["shape"] == "8 pairs x 2 x 64"


def test_bad_batch_is_one_error(repo):
    config = load(repo, "gemma_2b_rlcai_tpu").get_config("smoke")
    config.dry_run.sample_batch_size = 6
    with pytest.raises(ConfigError, match=r"dry_run.sample_batch_size=6 is not divisible"):
        dry_run.run(config, print_fn=lambda _: None)


def test_init_from_with_other_shapes_is_caught(repo, tmp_path):
    pytest.importorskip("transformers")
    import tiny_hf

    config = load(repo, "gemma_2b_rlcai_tpu").get_config("smoke")
    cfg = configs.to_dataclass(ModelConfig, config.model, "model")
    model = tiny_hf.build(
        "gemma",
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_len,
    )
    model.save_pretrained(tmp_path)
    pretrained.check_matches(cfg, str(tmp_path))  # same shapes: passes
    config.init_from = str(tmp_path)
    config.model.mlp_dim = 64
    want = rf"model.mlp_dim=64 but the checkpoint {tmp_path} has 96"
    with pytest.raises(ConfigError, match=want):
        dry_run.run(config, print_fn=lambda _: None)
