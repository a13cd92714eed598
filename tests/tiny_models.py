"""Tiny random models for tests, drawn in numpy as ``model.init`` would draw them (normal with
std 1/sqrt(fan-in), norm scales 1): compiling the init would cost seconds per test."""

import math

import jax
import numpy as np

from cai import sharding, train_lib
from cai.model import ModelConfig, Transformer


def random_params(cfg: ModelConfig, seed: int = 0):
    """A parameter tree (numpy arrays) of ``Transformer(cfg)``."""
    shapes, _ = train_lib.abstract_params(Transformer(cfg), sharding.single_device_mesh())
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "scale":
            return np.ones(shape, np.float32)
        fan_in = {"embedding": shape[-1], "o": math.prod(shape[:2])}.get(name, shape[0])
        return rng.normal(0.0, fan_in**-0.5, shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)
