"""Which backward passes a traced program uses: the hand-written ones or JAX's autodiff.

Four functions of the model have a custom VJP written for XLA:CPU: the weight matmuls
(`matmul.matmul`), exact GELU (`layers.gelu`), the attention core (`attention._xla_attention`)
and the loss's log-normaliser (`loss.log_z_and_target_logit`). Each has a plain twin that JAX
differentiates itself; both give the same gradients (tests/test_train_parity.py checks both
against torch autograd). `config.model.backward` chooses:

* `custom`: the hand-written passes, everywhere;
* `autodiff`: JAX's own, everywhere;
* `auto`: custom where they were measured faster (the CPU backend; figures in each function's
  docstring and in docs/BENCHMARKS.md, "Backward passes"), autodiff on GPU and TPU, where XLA's
  own fusion of the autodiff graph is the well-trodden path and the custom ones are unmeasured.

The choice is made when the model is traced, from this process's backend; a program lowered here
for another platform (`jax.export`) should set `custom` or `autodiff` explicitly.
"""

from __future__ import annotations

from typing import Optional

import jax

# Backends on which `auto` takes the hand-written passes: where a benchmark showed them faster.
MEASURED_FASTER_ON = ("cpu",)


def use_custom(choice: str, platform: Optional[str] = None) -> bool:
    """True when the hand-written backward passes apply for `config.model.backward == choice`
    on `platform` (default: this process's JAX backend)."""
    if choice == "custom":
        return True
    if choice == "autodiff":
        return False
    if choice != "auto":
        raise ValueError(f"model.backward={choice!r}: must be 'auto', 'custom' or 'autodiff'")
    return (platform or jax.default_backend()) in MEASURED_FASTER_ON
