"""Which backward passes a traced program uses: the hand-written ones or JAX's autodiff.

Three functions of the model have a custom VJP (the *parts*), each with a plain twin that JAX
differentiates itself; both give the same gradients (tests/integration/test_train_parity.py checks
both against torch autograd):

* `matmul`: the weight matmuls (`matmul.matmul` vs `matmul_autodiff`), written for XLA:CPU's GEMM
  paths: bfloat16 products that accumulate in float32 in the input-gradient too, float32 weight
  gradients, an optimisation barrier against a slow fusion;
* `attention`: the xla attention core (`attention._xla_attention`, FlashAttention-style: keeps the
  log-normaliser, recomputes the probabilities);
* `loss`: the loss's log-normaliser (`loss.log_z_and_target_logit`: keeps the logits and log Z, not
  the float32 softmax).

`config.model.backward` chooses: `custom` (all hand-written), `autodiff` (all JAX), parts joined
by `+` (e.g. `matmul+attention`; how the benchmark measures each part), or `auto`, which takes a
hand-written pass only where it was measured better (benchmarks/backward_passes.py, d_model 512,
8 layers, 4,096 tokens, the 2-core XLA:CPU machine; docs/BENCHMARKS.md, "Backward passes"):

| part | train step time, XLA:CPU, float32 / bfloat16 | step temporaries (vocab 32k, 8k tokens) | auto |
|---|---|---|---|
| matmul | 0.93x / **1.15x** faster | same | custom on CPU in 16-bit compute only |
| attention | **1.06x / 1.16x** faster | **2.3 GB less** (of 5.5) | custom everywhere |
| loss | 0.96x / 1.03x (noise) | **1.1 GB less** | custom everywhere |

The memory saving holds on every backend: which residuals autodiff keeps is decided by JAX's
linearisation before XLA sees the program. The matmul's reasons are XLA:CPU's own (YNNPACK, Eigen),
so GPU and TPU get JAX's autodiff there. The choice is made when the model is traced, from this
platform traced for (`models/platform.py`: this process's backend, or the one a program is
lowered for with `jax.export`, so a TPU program lowered on a CPU gets TPU's choices).
"""

from __future__ import annotations

from typing import Optional

from cm3leon_jax.config import BACKWARD_PARTS as PARTS, backward_problem as problem
from cm3leon_jax.models import platform

_SIXTEEN_BIT = ("bfloat16", "float16")


def use_custom(choice: str, part: str, compute_dtype: str = "float32",
               on: Optional[str] = None) -> bool:
    """True when `part`'s hand-written backward pass applies for `config.model.backward ==
    choice`, compute dtype `compute_dtype` (`config.model.dtype`), on `on` (default: the
    platform traced for, `platform.backend()`)."""
    if part not in PARTS:
        raise ValueError(f"unknown backward part {part!r}; parts: {', '.join(PARTS)}")
    reason = problem(choice)
    if reason:
        raise ValueError(f"model.backward={choice!r}: {reason}")
    if choice == "custom":
        return True
    if choice == "autodiff":
        return False
    if choice != "auto":
        return part in choice.split("+")
    if part == "matmul":
        return (on or platform.backend()) == "cpu" and compute_dtype in _SIXTEEN_BIT
    return True
