"""`parallel.distributed.initialize_if_needed`: which case calls `jax.distributed.initialize`, and
real two-process CPU jobs on localhost: one that forms a job of four devices, one that trains the
tiny decoder with the production train step and matches one process with four devices."""

import functools
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from cm3leon_jax.parallel import distributed
import locations

REPO = locations.ROOT
HERE = os.path.dirname(os.path.abspath(__file__))  # the workers import this module
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
        env = dict(os.environ,
                   PYTHONPATH=os.pathsep.join([str(REPO), str(locations.TESTS), HERE]),
                   JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
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


def train_tiny_decoder(devices=None, steps=3) -> list[float]:
    """Losses of `steps` production train steps (`train/state.py`, `train/step.py`, the decoder's
    loss and shardings) of a tiny decoder on a (data=2, fsdp=2) mesh over `devices` (default: all,
    which in a two-process job spans both hosts), on the same fixed batch every step."""
    from cm3leon_jax.config import MeshConfig, ModelConfig, TrainConfig
    from cm3leon_jax.parallel import mesh as mesh_lib, sharding as sharding_lib
    from cm3leon_jax.train import decoder_task, optimizer, state as state_lib, step as step_lib

    model = ModelConfig(preset="cm3leon", vocab_size=128, num_layers=2, d_model=32, num_heads=2,
                        max_seq_len=16, zero_init_output_projections=False)
    mesh_config = MeshConfig(data=2, fsdp=2, tensor=1)
    mesh, rules = mesh_lib.make_mesh(mesh_config, devices), mesh_config.logical_axis_rules()
    train = TrainConfig(steps=steps, warmup_steps=1, lr=1e-2, batch_size=8)
    tx = optimizer.make_optimizer(train)
    state, shardings = state_lib.create_sharded_train_state(
        functools.partial(decoder_task.init_params, model),
        decoder_task.param_shardings(model, mesh, rules), tx, mesh, jax.random.key(0))
    batch_sharding = sharding_lib.batch_sharding(mesh, rules)
    step = sharding_lib.ShardedFunction(step_lib.jit_train_step(
        decoder_task.make_loss_fn(model, (64, 128)), tx, optimizer.learning_rate(train),
        shardings, batch_sharding), mesh, rules)
    rng = np.random.default_rng(0)
    rows = {"ids": rng.integers(0, 128, (8, 16)).astype(np.int32),
            "weights": rng.uniform(0.5, 1.0, (8, 16)).astype(np.float32)}
    # Each process builds only the rows its own devices hold (data is loaded per host).
    batch = {k: jax.make_array_from_callback(v.shape, batch_sharding, lambda i, v=v: v[i])
             for k, v in rows.items()}
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))  # metrics are replicated: readable on every host
    return losses


_TRAIN_WORKER = """
import json
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from cm3leon_jax.parallel import distributed
assert distributed.initialize_if_needed() is True
import test_distributed

losses = test_distributed.train_tiny_decoder()
print("RESULT", json.dumps({"processes": jax.process_count(), "devices": jax.device_count(),
                            "losses": losses}))
"""


def _start(script, devices, coordinates=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(locations.TESTS), HERE]),
               JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for key in _ENV_KEYS:
        env.pop(key, None)
    if coordinates:
        port, process_id = coordinates
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(process_id))
    return subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _result(proc, output):
    assert proc.returncode == 0, output[-3000:]
    line = [l for l in output.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
    """The production state creation and train step on a (data=2, fsdp=2) mesh spanning two
    processes (gloo collectives, two fake CPU devices each) give the losses of one process with
    four devices (this one, on four of its eight fake devices)."""
    script = tmp_path / "train_worker.py"
    script.write_text(_TRAIN_WORKER)
    port = _free_port()
    procs = [_start(script, 2, (port, 0)), _start(script, 2, (port, 1))]
    outputs = []
    try:
        single = train_tiny_decoder(jax.devices()[:4])
        for proc in procs:
            outputs.append(proc.communicate(timeout=120)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    first, second = (_result(p, o) for p, o in zip(procs, outputs))
    assert (first["processes"], first["devices"]) == (2, 4)
    assert first["losses"] == second["losses"]  # every host sees the same replicated metrics
    assert single[-1] < single[0]  # it trains
    np.testing.assert_allclose(first["losses"], single, rtol=1e-5)
