"""TFDS builder ``hh_rlhf``: Anthropic's HH-RLHF comparisons and red-team prompts."""

from cai.data.hh_rlhf.hh_rlhf import HhRlhf, builder, cai_prompts, release_split

__all__ = ["HhRlhf", "builder", "cai_prompts", "release_split"]
