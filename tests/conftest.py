"""Test set-up shared by every test module.

Layout: `unit/` mirrors the package (in-process tests of one module each); `integration/` holds
what starts subprocesses or runs a stage end to end. Every test under `integration/`, and the few
subprocess tests kept beside their unit tests, carry the `integration` marker, so the fast set
runs alone: `python -m pytest -m "not integration"`. Shared helpers (`tiny_stack`, `toy_task`,
`user_folder`, `locations`) live in tests/ itself, which is put on sys.path here.

Eight fake CPU devices (big_vision's trick) so sharding logic runs on meshes such as (2, 2, 2) on
one machine. This must happen before jax is imported anywhere, hence here.

One persistent XLA compilation cache per test session (`cm3leon_jax.compilation_cache`), shared by
the test process and the entry points the tests start as subprocesses: the same train step,
VQ-GAN step or decode loop compiled again (a resumed run, a second process) is loaded instead.
It lives in a temporary directory, never the user's cache.
"""

import os
import pathlib
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("CM3LEON_JAX_CACHE_DIR", tempfile.mkdtemp(prefix="cm3leon_jax_tests_xla_"))

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # the shared helpers

import pytest  # noqa: E402

from cm3leon_jax import compilation_cache  # noqa: E402

compilation_cache.enable()


@pytest.fixture(autouse=True, scope="session")
def _tensorflow_on_cpu_only():
    """tf.data must never grab an accelerator or all host threads that JAX needs."""
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - tensorflow is a hard dependency
        yield
        return
    tf.config.set_visible_devices([], "GPU")
    yield


# The longest files first: with two workers taking whole files (pytest.ini), a long file started
# last would run alone at the end while the other worker idles.
SLOWEST_FIRST = ("test_user_data.py", "test_recipe_learns.py", "test_vqgan.py",
                 "test_pretrain_sft.py", "test_run_control.py", "test_train_parity.py",
                 "test_accelerator_benchmark.py")


INTEGRATION = pathlib.Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config, items):
    del config
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)
    rank = {name: position for position, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
