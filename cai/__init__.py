"""cai: Constitutional AI (arXiv 2212.08073) in JAX, from a laptop toy world to TPU pods."""

__version__ = "0.1.0"
