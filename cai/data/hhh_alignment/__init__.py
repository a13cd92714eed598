"""TFDS builder ``hhh_alignment``: BIG-bench's HHH alignment task (evaluation only)."""

from cai.data.hhh_alignment.hhh_alignment import HhhAlignment, builder

__all__ = ["HhhAlignment", "builder"]
