"""`parallel.distributed.initialize_if_needed`: which case calls `jax.distributed.initialize`, and a
real two-process CPU job on localhost."""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import pytest

from cm3leon_jax.parallel import distributed

REPO = pathlib.Path(__file__).resolve().parent.parent
_ENV_KEYS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
             "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_NUM_SLICES")


@pytest.fixture
def calls(monkeypatch):
    """Records jax.distributed.initialize calls instead of making them; a clean environment."""
    for key in _ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    recorded = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: recorded.append(kwargs))
    monkeypatch.setattr(distributed, "_tpu_chips_on_this_host", lambda: 0)
    return recorded


def test_one_process_does_nothing(calls):
    assert distributed.initialize_if_needed() is False
    assert calls == []


def test_environment_coordinates_initialize(calls, monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert distributed.initialize_if_needed() is True
    assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)]


def test_arguments_take_precedence_over_environment(calls, monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert distributed.initialize_if_needed("localhost:99", num_processes=2, process_id=0)
    assert calls == [dict(coordinator_address="localhost:99", num_processes=2, process_id=0)]


def test_one_process_with_coordinator_does_nothing(calls):
    assert distributed.initialize_if_needed("localhost:99", num_processes=1, process_id=0) is False
    assert calls == []


def test_coordinator_without_process_id_is_a_clear_error(calls, monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:99")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="process id"):
        distributed.initialize_if_needed()
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    with pytest.raises(ValueError, match=r"must be in \[0, 2\)"):
        distributed.initialize_if_needed()
    monkeypatch.setenv("JAX_PROCESS_ID", "first")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='first' must be an integer"):
        distributed.initialize_if_needed()
    assert calls == []


def test_multi_host_tpu_slice_initializes_without_arguments(calls, monkeypatch):
    monkeypatch.setattr(distributed, "_tpu_chips_on_this_host", lambda: 4)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")
    monkeypatch.setenv("MEGASCALE_NUM_SLICES", "1")
    assert distributed.tpu_process_count() == 4
    assert distributed.initialize_if_needed() is True
    assert calls == [{}]


def test_single_host_tpu_vm_does_nothing(calls, monkeypatch):
    monkeypatch.setattr(distributed, "_tpu_chips_on_this_host", lambda: 8)
    answers = {"worker-network-endpoints": "t1v-n-0:0:10.1.0.2", "tpu-env": "ZONE: 'us-west4-a'\n"}
    monkeypatch.setattr(distributed, "_tpu_vm_metadata", answers.__getitem__)
    assert distributed.tpu_process_count() == 1
    assert distributed.initialize_if_needed() is False
    assert calls == []


def test_tpu_vm_metadata_counts_workers_times_slices(calls, monkeypatch):
    monkeypatch.setattr(distributed, "_tpu_chips_on_this_host", lambda: 4)
    answers = {"worker-network-endpoints": "a:0:10.1.0.2,b:1:10.1.0.3",
               "tpu-env": "ACCELERATOR_TYPE: 'v5p-16'\nMEGASCALE_NUM_SLICES: '2'\n"}
    monkeypatch.setattr(distributed, "_tpu_vm_metadata", answers.__getitem__)
    assert distributed.tpu_process_count() == 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_form_one_job(tmp_path):
    """Two real processes on localhost, two fake CPU devices each: one job of four devices."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from cm3leon_jax.parallel import distributed
        assert distributed.initialize_if_needed() is True
        import jax
        from jax.experimental import multihost_utils
        ids = multihost_utils.process_allgather(np.array([jax.process_index()]))
        print("RESULT", jax.process_count(), jax.device_count(), jax.local_device_count(),
              sorted(ids.ravel().tolist()))
    """))
    port = _free_port()
    procs = []
    for process_id in range(2):
        env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(process_id))
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=180)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output
        assert "RESULT 2 4 2 [0, 1]" in output, output
