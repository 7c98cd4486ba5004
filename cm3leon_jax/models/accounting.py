"""Parameter and FLOP accounting of the decoder, from shapes alone (`jax.eval_shape`: nothing is
allocated). The FLOPs are the PaLM paper's accounting, used for every MFU figure:

* FLOPs per trained token: 6 * N_matmul (forward 2N, backward 4N; N_matmul = weights that enter a
  matmul: everything except the position table and, when untied, the input embedding table, which
  are lookups) + 12 * layers * seq_len * heads * head_dim (attention scores and the weighted sum of
  values, forward + backward, over the full seq_len x seq_len square as the `xla` implementation
  computes it; a causal kernel skips about half).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn

from cm3leon_jax.config import ModelConfig
from cm3leon_jax.models.decoder import Decoder


def abstract_params(config: ModelConfig) -> Any:
    """The model's weights as boxed ShapeDtypeStructs (with logical axis names); no allocation."""
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(lambda t: Decoder(config).init(jax.random.key(0), t)["params"],
                          tokens)


def count_params(config: ModelConfig) -> int:
    """The exact number of the model's weights."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(abstract_params(config))))

def lookup_only_params(config: ModelConfig, params: Mapping[str, Any]) -> int:
    """Weights used only as lookup tables (no matmul FLOPs)."""
    count = 0
    if "embed_positions" in params:
        count += math.prod(params["embed_positions"]["embedding"].shape)
    if not config.tie_embeddings:
        count += math.prod(params["embed_tokens"]["embedding"].shape)
    return count


def flops_per_token(config: ModelConfig, num_params: int, lookup_params: int,
                    seq_len: int) -> dict[str, int]:
    """Training FLOPs per token at `seq_len`: 6 x matmul weights, the attention term, their sum
    (the module docstring says how)."""
    matmul = 6 * (num_params - lookup_params)
    attention = 12 * config.num_layers * seq_len * config.num_heads * config.resolved_head_dim
    return {"matmul_6n": matmul, "attention": attention, "total": matmul + attention}
