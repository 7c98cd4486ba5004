"""Joins the processes of a multi-host run into one JAX job: `initialize_if_needed()`.

Call it first thing in an entry point's `main`, before anything touches a JAX device (a
`jax.devices()` call, an array, a jit): `jax.distributed.initialize()` refuses to run after the
backend is up. It decides between three cases:

* explicit coordinates — a coordinator address plus the process count and this process's id, from
  the arguments, the `--coordinator_address` / `--num_processes` / `--process_id` flags, or the
  environment variables `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` (in that
  order of precedence). This is how several CPU processes on one machine form a job, e.g. two
  terminals with `JAX_COORDINATOR_ADDRESS=localhost:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0|1`.
* a multi-host Cloud TPU slice (several TPU VM workers, or several slices): JAX reads the topology
  from the TPU VM itself, so `jax.distributed.initialize()` is called without arguments. This is what
  `tpu/launch.sh` relies on: the same command runs on every worker and nothing differs per worker.
* one process (a laptop, one GPU, a single-host TPU VM such as v5litepod-8): nothing to do.

Initializing also starts JAX's preemption sync service on multi-host runs, which lets every host
agree on the step at which to write the checkpoint after one of them receives SIGTERM.
"""

from __future__ import annotations

import os
import urllib.request
from typing import Optional

from absl import flags, logging
import jax

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for a multi-process run that is not a TPU slice (e.g. CPU processes "
    "on localhost). Also read from JAX_COORDINATOR_ADDRESS.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run (with --coordinator_address). Also JAX_NUM_PROCESSES.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, 0..num_processes-1 (with --coordinator_address). "
    "Also JAX_PROCESS_ID.")


def _flag_value(flag: flags.FlagHolder):
    return flag.value if flags.FLAGS.is_parsed() else None


def _env_int(name: str) -> Optional[int]:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from None


def _tpu_chips_on_this_host() -> int:
    """TPU chips attached to this machine over PCI (0 off TPU VMs); reads sysfs, no network."""
    from jax._src import hardware_utils  # the scan JAX itself uses to detect Cloud TPU VMs

    return hardware_utils.num_available_tpu_chips_and_device_id()[0]


def _tpu_vm_metadata(key: str) -> str:
    host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
    url = f"http://{host}/computeMetadata/v1/instance/attributes/{key}"
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode()
    except OSError as error:
        raise RuntimeError(
            f"this machine has TPU chips but its metadata server did not answer for {key!r} "
            f"({error}); on a Cloud TPU VM the worker list comes from there. Outside Cloud TPU, "
            "give --coordinator_address/--num_processes/--process_id instead") from error


def tpu_process_count() -> int:
    """Processes (one per TPU VM worker, times slices) in this TPU job; 0 when not on a TPU VM.

    GKE sets TPU_WORKER_HOSTNAMES (or TPU_PROCESS_ADDRESSES); a Cloud TPU VM lists its workers in
    the instance metadata (`worker-network-endpoints`) and multislice jobs add MEGASCALE_NUM_SLICES
    (environment or the metadata's `tpu-env`).
    """
    if _tpu_chips_on_this_host() == 0:
        return 0
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_PROCESS_ADDRESSES")
    slices = _env_int("MEGASCALE_NUM_SLICES")
    if hosts is None:
        hosts = _tpu_vm_metadata("worker-network-endpoints")
    if slices is None:
        for line in _tpu_vm_metadata("tpu-env").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "MEGASCALE_NUM_SLICES":
                slices = int(value.strip().strip("'\""))
    workers = [h for h in hosts.split(",") if h.strip()]
    return max(len(workers), 1) * (slices or 1)


def initialize_if_needed(coordinator_address: Optional[str] = None,
                         num_processes: Optional[int] = None,
                         process_id: Optional[int] = None) -> bool:
    """Initializes `jax.distributed` when this is one process of several; returns whether it is.

    Safe to call more than once (later calls see the job already initialized). Raises ValueError
    when a coordinator address is given without the process count or id.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = (coordinator_address or _flag_value(_COORDINATOR_ADDRESS)
                           or os.environ.get("JAX_COORDINATOR_ADDRESS") or None)
    if coordinator_address:
        num_processes = next((v for v in (num_processes, _flag_value(_NUM_PROCESSES),
                                          _env_int("JAX_NUM_PROCESSES")) if v is not None), None)
        process_id = next((v for v in (process_id, _flag_value(_PROCESS_ID),
                                       _env_int("JAX_PROCESS_ID")) if v is not None), None)
        if num_processes is None or process_id is None:
            raise ValueError(
                f"coordinator address {coordinator_address!r} is set but the "
                f"{'process count' if num_processes is None else 'process id'} is not: give "
                "--num_processes and --process_id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process id {process_id} must be in [0, {num_processes})")
        if num_processes == 1:
            return False
        logging.info("jax.distributed: process %d of %d, coordinator %s", process_id,
                     num_processes, coordinator_address)
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
        return True
    processes = tpu_process_count()
    if processes > 1:
        logging.info("jax.distributed: multi-host TPU job with %d processes", processes)
        jax.distributed.initialize()
        return True
    return False
