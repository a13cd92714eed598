"""On 8 fake devices, sharded training and generation equal the single-device run; bad meshes
and batches fail with a message naming the problem."""

import dataclasses

import jax
import numpy as np
import pytest

from cai import sharding
from cai.errors import ConfigError
from cai.model import PRESETS, Transformer
from cai.sampling import Sampler, SamplingConfig
from cai.train_lib import (
    OptimConfig,
    abstract_params,
    compile_train_step,
    create_train_state,
    make_optimizer,
)

# vocab 256 and 4 heads / 2 kv heads / mlp 128 divide every mesh axis used below.
CFG = dataclasses.replace(PRESETS["tiny"], vocab_size=256)
B, T = 8, 32


def batches(n):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        tokens = rng.integers(3, CFG.vocab_size, (B, T)).astype(np.int32)
        mask = np.ones((B, T), bool)
        mask[: B // 2, :5] = False  # left padding on half the rows
        out.append({"tokens": tokens, "mask": mask, "loss_mask": mask.astype(np.float32)})
    return out


def train_3_steps(mesh):
    model = Transformer(CFG)
    opt = make_optimizer(OptimConfig(learning_rate=1e-2, warmup_steps=1), 10)
    data = batches(3)
    step = compile_train_step(model, opt, mesh, {k: (v.shape, v.dtype) for k, v in data[0].items()})
    state = create_train_state(model, opt, mesh, seed=0)
    losses = []
    for batch in data:
        state, metrics = step(state, sharding.put_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.fixture(scope="module")
def single():
    return train_3_steps(sharding.single_device_mesh())


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_train_equals_single_device(single, shape):
    mesh = sharding.make_mesh(sharding.MeshConfig(*shape))
    state, losses = train_3_steps(mesh)
    ref_state, ref_losses = single
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
    assert ref_losses[2] < ref_losses[0]  # the steps really trained
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
        state.params,
        ref_state.params,
    )
    if shape == (2, 2, 2):  # the params really are split over fsdp and tensor
        spec = state.params["layers_0"]["mlp"]["wi"].sharding.spec
        assert tuple(spec) == ("fsdp", "tensor")
        mu = state.opt_state[1][0].mu["layers_0"]["mlp"]["wi"]  # Adam moment follows its param
        assert tuple(mu.sharding.spec) == ("fsdp", "tensor")


def test_sharded_generation_equals_single_device(single):
    params = jax.device_get(single[0].params)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13], [14, 15]]
    cfg = SamplingConfig(max_new_tokens=6, temperature=0.8, top_k=20)
    results = []
    for mesh in (sharding.single_device_mesh(), sharding.make_mesh(sharding.MeshConfig(2, 2, 2))):
        model = Transformer(CFG)
        _, shardings = abstract_params(model, mesh)
        placed = jax.device_put(params, shardings)
        results.append(
            Sampler(model, mesh, eos_id=2, pad_id=0).generate(placed, prompts, cfg, seed=3)
        )
    assert [t for t, _ in results[0]] == [t for t, _ in results[1]]
    for (_, a), (_, b) in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_logical_rules_replicate_what_does_not_divide():
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    spec = sharding.logical_to_spec(
        ("embed", "kv_heads", "head_dim"), (64, 1, 16), mesh, sharding.PARAM_RULES
    )
    assert tuple(spec) == ("fsdp", None, None)  # one kv head (MQA) cannot be split
    spec = sharding.logical_to_spec(("batch", "length"), (8, 5), mesh, sharding.ACT_RULES)
    assert tuple(spec) == (("data", "fsdp"), None)


@pytest.mark.parametrize(
    "cfg,msg",
    [
        (sharding.MeshConfig(3, 1, 1), "needs 3 devices but 8 are available"),
        (sharding.MeshConfig(-1, 3, 1), "cannot be fitted to 8 devices"),
        (sharding.MeshConfig(-1, -1, 1), "at most one axis may be -1"),
    ],
)
def test_impossible_mesh(cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        sharding.make_mesh(cfg)


def test_non_divisible_batch():
    mesh = sharding.make_mesh(sharding.MeshConfig(4, 2, 1))
    with pytest.raises(ConfigError, match=r"batch_size=6 is not divisible .* = 8"):
        sharding.check_batch(6, mesh)
