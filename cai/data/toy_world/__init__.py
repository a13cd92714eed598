"""TFDS builder ``toy_world``: the embedded world's corpus and prompt sets."""

from cai.data.toy_world.toy_world import ToyWorld, ToyWorldConfig, builder

__all__ = ["ToyWorld", "ToyWorldConfig", "builder"]
