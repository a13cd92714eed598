"""Tests run on 8 fake CPU devices so sharding is exercised as on a pod (set before jax loads)."""

import os
import pathlib
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, the `python -m cai.*` subprocesses
# included: a rerun of a killed pipeline, and every smoke run after the first, loads the
# steps it compiled instead of compiling them again.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="cai-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def main_smoke(tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted run of the main job's smoke variant, ``(workdir, watched.Watched)``:
    the main-job test checks what it wrote and the fault-injection suite compares its killed
    and resumed run against it. Tests must not write into this workdir (copy it first)."""
    import watched

    workdir = tmp_path_factory.mktemp("main_smoke") / "runs" / "rlcai"
    run = watched.run(
        [f"--config={REPO}/experiments/rlcai.py:smoke", f"--workdir={workdir}"], timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir, run


def pytest_configure(config: pytest.Config) -> None:
    assert jax.device_count() == 8, (
        "tests expect 8 fake CPU devices; import jax only after conftest"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``long`` tests run only with CAI_LONG_TESTS=1: each repeats a whole pipeline another
    test already runs, on another model family, and would add minutes to every suite run."""
    if os.environ.get("CAI_LONG_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="a long test: set CAI_LONG_TESTS=1 to run it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
