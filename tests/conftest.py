"""Tests run on 8 fake CPU devices so sharding is exercised as on a pod (set before jax loads)."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> pathlib.Path:
    return REPO


def pytest_configure(config: pytest.Config) -> None:
    assert jax.device_count() == 8, (
        "tests expect 8 fake CPU devices; import jax only after conftest"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``long`` tests run only with CAI_LONG_TESTS=1: each repeats a whole pipeline another
    test already runs, on another model family, and would add minutes to every suite run."""
    if os.environ.get("CAI_LONG_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="a long test: set CAI_LONG_TESTS=1 to run it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
