"""Which of our parameters is which transformers tensor, and how its layout changes.

One table per preset (`tensor_rules`) lists every tensor of the exported state dict: its HF name,
the path of our parameter (inside a block for per-layer tensors) and a layout:

* `dense`: our kernels keep heads as their own axes, inputs first ([d, heads, head_dim] for
  q/k/v, [heads, head_dim, d] for o_proj, [d, mlp] for MLPs); torch's `nn.Linear.weight` is
  [out, in]. So the input axes are flattened, the output axes are flattened and the matrix is
  transposed. Head-major flattening is exactly HF's `view(bsz, len, heads, head_dim)`, and our RoPE
  uses HF's `rotate_half` halves, so no permutation of q/k rows is needed (unlike Meta's
  interleaved Llama checkpoints).
* `copy`: same array (embeddings, RMSNorm scales, the per-head QK LayerNorm weight and bias,
  both [heads, head_dim] in HF too).
* `positions`: OPT's learned position table with its offset of 2 (see `hf_config`).

Both directions are here (`to_hf`, `from_hf`), so export followed by import is the identity, bit
for bit: only reshapes, transposes and the zero rows are involved, never arithmetic.

Layers are stored either stacked (`scan_layers=True`: one leaf `layers/...` with a leading layer
axis) or per layer (`layers_0/...`); `layer_leaf_path` hides the difference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from cm3leon_jax.config import ModelConfig
from cm3leon_jax.export.hf_config import OPT_POSITION_OFFSET

Path = tuple[str, ...]
LAYER = "{layer}"


@dataclasses.dataclass(frozen=True)
class TensorRule:
    hf_name: str  # contains "{layer}" for per-layer tensors
    ours: Path  # inside a block for per-layer tensors, else from the params root
    layout: str = "copy"  # "copy" | "dense" | "positions"
    input_axes: int = 1  # dense: how many leading axes of our kernel are inputs

    @property
    def per_layer(self) -> bool:
        return LAYER in self.hf_name

    def name(self, layer: Optional[int] = None) -> str:
        return self.hf_name.replace(LAYER, str(layer)) if self.per_layer else self.hf_name


def _opt_rules(model: ModelConfig) -> list[TensorRule]:
    block = "model.decoder.layers.{layer}."
    rules = [TensorRule("model.decoder.embed_tokens.weight", ("embed_tokens", "embedding")),
             TensorRule("model.decoder.embed_positions.weight", ("embed_positions", "embedding"),
                        "positions")]
    for name in ("q_proj", "k_proj", "v_proj"):
        rules.append(TensorRule(block + f"self_attn.{name}.weight",
                                ("attention", name, "kernel"), "dense"))
    rules += [TensorRule(block + "self_attn.out_proj.weight", ("attention", "o_proj", "kernel"),
                         "dense", input_axes=2),
              TensorRule(block + "fc1.weight", ("mlp", "fc1", "kernel"), "dense"),
              TensorRule(block + "fc2.weight", ("mlp", "fc2", "kernel"), "dense")]
    if not model.tie_embeddings:
        rules.append(TensorRule("lm_head.weight", ("lm_head", "kernel"), "dense"))
    return rules


def _chameleon_rules(model: ModelConfig) -> list[TensorRule]:
    block = "model.layers.{layer}."
    rules = [TensorRule("model.embed_tokens.weight", ("embed_tokens", "embedding"))]
    for name in ("q_proj", "k_proj", "v_proj"):
        rules.append(TensorRule(block + f"self_attn.{name}.weight",
                                ("attention", name, "kernel"), "dense"))
    rules.append(TensorRule(block + "self_attn.o_proj.weight", ("attention", "o_proj", "kernel"),
                            "dense", input_axes=2))
    for norm in ("q_norm", "k_norm"):
        rules += [TensorRule(block + f"self_attn.{norm}.weight", ("attention", norm, "scale")),
                  TensorRule(block + f"self_attn.{norm}.bias", ("attention", norm, "bias"))]
    for name in ("gate_proj", "up_proj", "down_proj"):
        rules.append(TensorRule(block + f"mlp.{name}.weight", ("mlp", name, "kernel"), "dense"))
    rules += [TensorRule(block + "input_layernorm.weight", ("attention_norm", "scale")),
              TensorRule(block + "post_attention_layernorm.weight", ("mlp_norm", "scale")),
              TensorRule("model.norm.weight", ("final_norm", "scale"))]
    if not model.tie_embeddings:
        rules.append(TensorRule("lm_head.weight", ("lm_head", "kernel"), "dense"))
    return rules


def tensor_rules(model: ModelConfig) -> list[TensorRule]:
    """Every tensor of the exported state dict, in the order they are written."""
    return _opt_rules(model) if model.preset == "cm3leon" else _chameleon_rules(model)


def layer_leaf_path(rule: TensorRule, layer: int, scanned: bool) -> tuple[Path, Optional[int]]:
    """(path of our leaf, index along its leading layer axis or None) for one tensor."""
    if not rule.per_layer:
        return rule.ours, None
    if scanned:
        return ("layers",) + rule.ours, layer
    return (f"layers_{layer}",) + rule.ours, None


def hf_shape(rule: TensorRule, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the HF tensor for our (per-layer) array of `our_shape`."""
    if rule.layout == "dense":
        inputs = math.prod(our_shape[:rule.input_axes])
        return (math.prod(our_shape[rule.input_axes:]), inputs)
    if rule.layout == "positions":
        return (our_shape[0] + OPT_POSITION_OFFSET,) + tuple(our_shape[1:])
    return tuple(our_shape)


def to_hf(rule: TensorRule, array: np.ndarray) -> np.ndarray:
    """Our (per-layer) array -> the HF tensor, C-contiguous."""
    if rule.layout == "dense":
        inputs = math.prod(array.shape[:rule.input_axes])
        return np.ascontiguousarray(array.reshape(inputs, -1).T)
    if rule.layout == "positions":
        padding = np.zeros((OPT_POSITION_OFFSET,) + array.shape[1:], array.dtype)
        return np.concatenate([padding, array], axis=0)
    return np.ascontiguousarray(array)


def from_hf(rule: TensorRule, tensor: np.ndarray, our_shape: tuple[int, ...]) -> np.ndarray:
    """The HF tensor -> our (per-layer) array of `our_shape`."""
    if rule.layout == "dense":
        return np.ascontiguousarray(tensor.T).reshape(our_shape)
    if rule.layout == "positions":
        return np.ascontiguousarray(tensor[OPT_POSITION_OFFSET:OPT_POSITION_OFFSET + our_shape[0]])
    return np.ascontiguousarray(tensor).reshape(our_shape)
