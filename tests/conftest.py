"""Test set-up shared by every test module.

Eight fake CPU devices (big_vision's trick) so sharding logic runs on meshes such as (2, 2, 2) on
one machine. This must happen before jax is imported anywhere, hence here.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


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
