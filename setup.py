from setuptools import find_packages, setup

setup(
    name="cai",
    version="0.1.0",
    description="Constitutional AI (arXiv 2212.08073) in JAX: from a laptop toy world to TPU pods.",
    packages=find_packages(include=["cai", "cai.*"]),
    # The toy world's helpful-only base model (params, tokenizer, metadata; a few MB) ships with
    # the package: the main job starts from it.
    package_data={"cai": ["assets/toy_base/**/*"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "ml-collections>=1.0",
        "absl-py",
        "numpy",
        "scipy",  # Wilson intervals' binomial tests (McNemar), Bradley-Terry fits
        "tqdm",
        "tensorboardX",
        "sentencepiece",
        "protobuf",  # editing sentencepiece model protos (GGUF vocabularies)
        "matplotlib",
        # TFDS builders (cai/data/*): array_record files read with as_data_source, no TensorFlow.
        "tensorflow-datasets",
        "array_record",
        "importlib_resources",
    ],
    extras_require={
        "test": ["pytest>=8", "ruff"],
        # torch must be installed first as `pip install torch==2.13.0` (CPU wheel); see README.
        # Real checkpoints: HF safetensors, GGUF files, BPE tokenizers, parity tests.
        "hf": ["transformers>=4.45", "safetensors", "tokenizers", "gguf", "accelerate", "jinja2"],
        "bench": ["transformers>=4.45", "safetensors"],
    },
)
