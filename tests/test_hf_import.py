"""HF import/export parity: tiny random Llama, Gemma, Gemma-2 and GPT-2 models saved by
`transformers` import into sharded params whose logits and greedy generations equal theirs;
export opens in `transformers` and re-imports bit for bit; bad checkpoints fail by name."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import tiny_hf  # noqa: E402

from cai import hf_import, sharding  # noqa: E402
from cai.convert import convert  # noqa: E402
from cai.errors import ConfigError  # noqa: E402
from cai.model import ModelConfig, Transformer  # noqa: E402
from cai.sampling import Sampler, SamplingConfig  # noqa: E402
from cai.train_lib import abstract_params  # noqa: E402

FAMILIES = list(tiny_hf.SPECS)


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(sharding.MeshConfig(2, 2, 2))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (torch model, its save_pretrained dir); GPT-2 is saved in 20 KB shards."""
    out = {}
    for family in FAMILIES:
        model = tiny_hf.build(family)
        d = tmp_path_factory.mktemp(family)
        model.save_pretrained(d, max_shard_size="20KB" if family == "gpt2" else "1GB")
        out[family] = (model, d)
    assert (out["gpt2"][1] / "model.safetensors.index.json").exists()
    return out


@pytest.fixture(scope="module")
def imported(saved, mesh):
    return {f: hf_import.load_hf(str(d), mesh) for f, (_, d) in saved.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers(family, saved, imported, mesh):
    torch_model, _ = saved[family]
    cfg, params, fam = imported[family]
    assert fam == family
    # Placed straight into the shardings the rules give (2x2x2 mesh), not replicated.
    _, want = abstract_params(Transformer(cfg), mesh)
    got = jax.tree.map(lambda x: x.sharding, params)
    assert jax.tree.leaves(got) == jax.tree.leaves(want)
    tokens, mask = tiny_hf.left_padded(np.random.RandomState(1), [12, 9, 5, 12], cfg.vocab_size)
    ours = np.asarray(Transformer(cfg).apply({"params": params}, tokens, mask).logits)
    theirs = tiny_hf.torch_logits(torch_model, tokens, mask)
    np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_equals_transformers(family, saved, imported, mesh):
    import torch

    torch_model, _ = saved[family]
    cfg, params, _ = imported[family]
    prompts = np.random.RandomState(2).randint(3, cfg.vocab_size, (2, 6))
    torch_model.generation_config.eos_token_id = None  # run all 10 steps on both sides
    with torch.no_grad():
        theirs = torch_model.generate(
            torch.tensor(prompts), do_sample=False, max_new_tokens=10, pad_token_id=0
        )[:, 6:].numpy()
    sampler = Sampler(Transformer(cfg), mesh, eos_id=-1, pad_id=0)
    out = sampler.generate(params, prompts.tolist(), SamplingConfig(10, temperature=0.0))
    np.testing.assert_array_equal(np.array([toks for toks, _ in out]), theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_round_trip(family, saved, imported, tmp_path):
    from transformers import AutoModelForCausalLM

    torch_model, _ = saved[family]
    cfg, params, _ = imported[family]
    shard = 30_000 if family == "llama" else 2**30  # llama: several shards + index
    hf_import.export_hf(cfg, params, str(tmp_path), max_shard_bytes=shard)
    if family == "llama":
        assert (tmp_path / "model.safetensors.index.json").exists()
    cfg2, params2, _ = hf_import.load_hf(str(tmp_path), sharding.single_device_mesh())
    assert cfg2 == cfg
    flat, flat2 = (traverse_util.flatten_dict(p) for p in (params, params2))
    assert flat.keys() == flat2.keys()
    for k in flat:
        np.testing.assert_array_equal(np.asarray(flat[k]), np.asarray(flat2[k]), err_msg=str(k))
    reopened = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    tokens = np.random.RandomState(3).randint(0, cfg.vocab_size, (2, 10))
    np.testing.assert_allclose(
        tiny_hf.torch_logits(reopened, tokens), tiny_hf.torch_logits(torch_model, tokens), atol=1e-6
    )


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 8}))
    with pytest.raises(ConfigError, match=r"model_type 'mamba' is not supported \(supported: "):
        hf_import.load_hf(str(tmp_path), sharding.single_device_mesh())


def test_missing_shard_is_named(saved, tmp_path):
    d = tmp_path / "gpt2"
    shutil.copytree(saved["gpt2"][1], d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (d / victim).unlink()
    with pytest.raises(ConfigError, match=f"lists shard {victim} .* does not exist"):
        hf_import.load_hf(str(d), sharding.single_device_mesh())


def test_shape_mismatch_names_tensor_and_file(saved, tmp_path):
    d = tmp_path / "llama"
    shutil.copytree(saved["llama"][1], d)
    config = json.loads((d / "config.json").read_text())
    config["intermediate_size"] = 70
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as e:
        hf_import.load_hf(str(d), sharding.single_device_mesh())
    assert str(e.value) == (
        f"{d}/model.safetensors: tensor model.layers.0.mlp.gate_proj.weight has shape (72, 48) "
        "but the config implies (70, 48)"
    )


def test_missing_tensor_is_named(saved, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "llama"
    shutil.copytree(saved["llama"][1], d)
    tensors = load_file(d / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(ConfigError, match=r"tensor lm_head.weight is missing"):
        hf_import.load_hf(str(d), sharding.single_device_mesh())


def test_export_refuses_configs_no_family_holds():
    with pytest.raises(ConfigError, match=r"model.norm='layer' has no equivalent in the HF llama"):
        hf_import.family_of(ModelConfig(norm="layer"))
    with pytest.raises(ConfigError, match=r"scalar_head=True has no HF"):
        hf_import.family_of(ModelConfig(scalar_head=True))


def _cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_convert_and_sample_cli(tmp_path):
    """HF dir (with a BPE tokenizer and ChatML template) -> checkpoint -> HF dir; sampling the
    HF dir directly and the converted checkpoint gives the same greedy chat reply."""
    from transformers import AutoModelForCausalLM

    src = tmp_path / "hf"
    model = tiny_hf.build("llama", seed=5, vocab_size=300)
    model.save_pretrained(src)
    tiny_hf.train_bpe(src, vocab_size=300)
    ckpt = tmp_path / "ckpt"
    assert f"wrote {ckpt}/checkpoints" in _cli("cai.convert", f"--from_hf={src}", f"--to={ckpt}")
    replies = [
        _cli(
            "cai.sample",
            f"--checkpoint={path}",
            "--prompt=How do I bake bread?",
            "--temperature=0",
            "--max_new_tokens=6",
        )
        for path in (src, ckpt)
    ]
    assert replies[0] == replies[1]
    assert replies[0].startswith("How do I bake bread?\n>>> ")
    out = tmp_path / "back"
    convert(str(ckpt), to=None, to_hf=str(out))
    reopened = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tokens = np.random.RandomState(0).randint(0, 300, (2, 7))
    np.testing.assert_allclose(
        tiny_hf.torch_logits(reopened, tokens), tiny_hf.torch_logits(model, tokens), atol=1e-6
    )
    assert (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").exists()


def test_runtime_overrides_only(saved, imported):
    from cai import pretrained

    cfg, params, _ = pretrained.load(
        str(saved["llama"][1]), sharding.single_device_mesh(), param_dtype="bfloat16", remat=True
    )
    assert (cfg.param_dtype, cfg.remat) == ("bfloat16", True)
    f32 = np.asarray(imported["llama"][1]["embedding"])
    np.testing.assert_array_equal(
        np.asarray(params["embedding"]), f32.astype(params["embedding"].dtype)
    )
    with pytest.raises(ConfigError, match=r"cannot override model.d_model of a pretrained model"):
        pretrained.load(str(saved["llama"][1]), sharding.single_device_mesh(), d_model=64)
