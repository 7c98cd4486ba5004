"""The persistent compilation cache every entry point turns on (cm3leon_jax/compilation_cache.py)."""

import os
import subprocess
import sys
import locations

REPO = str(locations.ROOT)

PROGRAM = """
import jax, jax.numpy as jnp
from cm3leon_jax import compilation_cache

events = []
jax.monitoring.register_event_listener(lambda name, **kwargs: events.append(name))
print(repr(compilation_cache.enable()))
def f(x):
    for _ in range(40):
        x = jnp.tanh(x @ x.T) + jnp.sin(x)
    return x.sum()
jax.jit(jax.grad(f)).lower(jnp.ones((32, 32))).compile()
print(sum("compilation_cache/cache_hits" in name for name in events))
"""


def _run(cache_dir):
    env = dict(os.environ, CM3LEON_JAX_CACHE_DIR=cache_dir, PYTHONPATH=REPO)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True,
                         check=True, timeout=300).stdout.split("\n")
    return eval(out[0]), int(out[1])  # noqa: S307 - our own repr(); (directory, cache hits)


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    cache = str(tmp_path / "xla")
    used, hits = _run(cache)
    assert used == cache and os.listdir(cache) and hits == 0  # compiled, then written
    _, hits = _run(cache)
    assert hits >= 1  # loaded from the cache instead of compiled


def test_an_empty_setting_turns_it_off(tmp_path):
    used, hits = _run("")
    assert used == "" and hits == 0
