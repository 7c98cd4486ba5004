"""Our `ModelConfig` <-> Hugging Face transformers configs (`OPTConfig`, `ChameleonConfig`).

The two presets have exact counterparts in transformers:

* `cm3leon` -> `OPTForCausalLM` with `enable_bias=False`, `layer_norm_elementwise_affine=False`,
  `do_layer_norm_before=True`, `activation_function="gelu"` (HF's `gelu` is the exact erf form,
  as our `layers.gelu`; `gelu_new` would be the tanh approximation, which we never use),
  `word_embed_proj_dim=hidden_size` (no project_in/out), and learned positions: OPT's table has
  `max_position_embeddings + 2` rows and reads row `position + 2` (the "offset of 2" inherited from
  fairseq), so our row p becomes HF row p + 2 and HF rows 0 and 1 are written as zeros (HF reads
  row 1 only for left padding).
* `chameleon` -> `ChameleonForConditionalGeneration`: RMSNorm, SwiGLU, RoPE (`rotate_half` layout,
  as ours), QK-norm as a per-head LayerNorm with weight and bias, grouped-query attention,
  swin_norm (HF's `ChameleonSwinDecoderLayer` normalises each sub-block's output exactly like our
  `swin_norm=True` block).

What a target cannot express raises `UnsupportedByTarget` (a `ConfigError`) naming the field and
what to change, before any tensor is read: OPT has no grouped-query attention, QK-norm or
swin-norm; both hard-code the epsilon of their LayerNorms to 1e-5 (OPT's `nn.LayerNorm` default,
Chameleon's QK LayerNorm), derive the head width as hidden_size / num_heads and (Chameleon)
always apply QK-norm.

Not part of the model config, so nothing to check: segment-id packing (a training-time layout:
an HF model reads one document per row, positions from 0, which is what our decoder computes for
an unpacked row), remat, scan_layers, dtype of the compute, attention implementation, z-loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from cm3leon_jax.config import ConfigError, ModelConfig
from cm3leon_jax import vocab as vocab_lib

# Position-table rows OPT keeps in front of position 0 (fairseq's padding_idx + 1).
OPT_POSITION_OFFSET = 2
# Epsilon hard-coded in HF OPT's nn.LayerNorm and Chameleon's QK LayerNorm.
HF_FIXED_LAYER_NORM_EPS = 1e-5
TARGETS = {"cm3leon": "OPTForCausalLM", "chameleon": "ChameleonForConditionalGeneration"}
MODEL_TYPES = {"opt": "cm3leon", "chameleon": "chameleon"}


class UnsupportedByTarget(ConfigError):
    """The model config uses a feature the transformers architecture cannot express."""


def _unsupported(field: str, value: Any, target: str, change: str) -> UnsupportedByTarget:
    return UnsupportedByTarget(f"config.model.{field}={value!r}: transformers' {target} cannot "
                               f"express it; {change}")


def check_exportable(model: ModelConfig) -> str:
    """Raises `UnsupportedByTarget` for a config the target cannot express; returns the target's
    architecture name."""
    target = TARGETS[model.preset]
    if model.head_dim and model.head_dim * model.num_heads != model.d_model:
        raise _unsupported("head_dim", model.head_dim, target,
                           f"it derives the head width as d_model / num_heads = "
                           f"{model.d_model / model.num_heads:g}; set model.head_dim=0 and a "
                           "d_model divisible by num_heads")
    if model.norm_eps != HF_FIXED_LAYER_NORM_EPS:
        raise _unsupported("norm_eps", model.norm_eps, target,
                           f"its {'LayerNorms' if model.preset == 'cm3leon' else 'QK LayerNorm'} "
                           f"use a fixed epsilon of {HF_FIXED_LAYER_NORM_EPS}; train with "
                           f"model.norm_eps={HF_FIXED_LAYER_NORM_EPS}")
    if model.preset == "cm3leon":
        if model.kv_heads != model.num_heads:
            raise _unsupported("num_kv_heads", model.num_kv_heads, target,
                               "OPT has no grouped-query attention; use num_kv_heads=0 or the "
                               "chameleon preset (Llama-like, supports it)")
        if model.qk_norm:
            raise _unsupported("qk_norm", True, target,
                               "OPT has no QK-norm; set model.qk_norm=False or use the chameleon "
                               "preset")
        if model.swin_norm:
            raise _unsupported("swin_norm", True, target,
                               "OPT only has pre- or post-LayerNorm blocks; set "
                               "model.swin_norm=False or use the chameleon preset")
    else:
        if not model.qk_norm:
            raise _unsupported("qk_norm", False, target,
                               "ChameleonAttention always applies its per-head LayerNorm to q "
                               "and k (weight 1 / bias 0 is still a normalisation, not the "
                               "identity); train with model.qk_norm=True")
    return target


def hf_config_dict(model: ModelConfig, special_ids: dict[str, int], torch_dtype: str,
                   vocabulary_map: Optional[dict[str, int]] = None,
                   vq_config: Optional[dict] = None) -> dict:
    """Keyword arguments of the transformers config class for `model` (after
    `check_exportable`). special_ids: our `<pad>`/`<eos>` ids (we have no BOS)."""
    common = dict(vocab_size=model.vocab_size, num_hidden_layers=model.num_layers,
                  num_attention_heads=model.num_heads,
                  max_position_embeddings=model.max_seq_len,
                  tie_word_embeddings=model.tie_embeddings,
                  pad_token_id=special_ids[vocab_lib.PAD], eos_token_id=special_ids[vocab_lib.EOS],
                  bos_token_id=None, dtype=torch_dtype, use_cache=True)
    if model.preset == "cm3leon":
        return dict(common, architectures=["OPTForCausalLM"], hidden_size=model.d_model,
                    word_embed_proj_dim=model.d_model, ffn_dim=model.hidden_dim,
                    do_layer_norm_before=True, _remove_final_layer_norm=False,
                    activation_function="gelu", enable_bias=False,
                    layer_norm_elementwise_affine=False, dropout=0.0, attention_dropout=0.0,
                    layerdrop=0.0, init_std=model.init_std)
    return dict(common, architectures=["ChameleonForConditionalGeneration"],
                hidden_size=model.d_model, intermediate_size=model.hidden_dim,
                num_key_value_heads=model.kv_heads, hidden_act="silu",
                rms_norm_eps=model.norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": model.rope_theta},
                attention_bias=False, mlp_bias=False, attention_dropout=0.0,
                swin_norm=model.swin_norm, model_parallel_size=1,
                initializer_range=model.init_std, vocabulary_map=vocabulary_map or {},
                vq_config=vq_config)


def build_hf_config(model: ModelConfig, special_ids: dict[str, int], torch_dtype: str,
                    vocabulary_map: Optional[dict[str, int]] = None,
                    vq_config: Optional[dict] = None):
    """The transformers config object (imports transformers, not torch)."""
    import transformers  # noqa: PLC0415 - optional dependency, only for HF export

    kwargs = hf_config_dict(model, special_ids, torch_dtype, vocabulary_map, vq_config)
    kwargs.pop("architectures")
    cls = transformers.OPTConfig if model.preset == "cm3leon" else transformers.ChameleonConfig
    config = cls(**kwargs)
    config.architectures = [TARGETS[model.preset]]
    return config


def _get(raw: dict, key: str, default: Any = None) -> Any:
    value = raw.get(key, default)
    return default if value is None else value


def model_config_from_hf(raw: dict, base: Optional[ModelConfig] = None) -> ModelConfig:
    """Our ModelConfig for a transformers `config.json` (as a dict) of OPT or Chameleon.

    Fields transformers does not record (dtype policy, remat, init stds, ...) come from `base`
    (default: ModelConfig defaults); the imported weights make init settings moot anyway.
    Raises UnsupportedByTarget for checkpoints our decoder cannot express (biases, affine
    LayerNorms, OPT's project_in/out, post-LayerNorm OPT, another activation, rotary scaling).
    """
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UnsupportedByTarget(f"config.json model_type={model_type!r}: only "
                                  f"{', '.join(sorted(MODEL_TYPES))} checkpoints can be imported")
    base = base or ModelConfig()
    preset = MODEL_TYPES[model_type]
    hidden = raw["hidden_size"]
    fields = dict(preset=preset, vocab_size=raw["vocab_size"], num_layers=raw["num_hidden_layers"],
                  d_model=hidden, num_heads=raw["num_attention_heads"], head_dim=0,
                  max_seq_len=raw["max_position_embeddings"],
                  tie_embeddings=bool(_get(raw, "tie_word_embeddings",
                                           preset == "cm3leon")),
                  norm_eps=HF_FIXED_LAYER_NORM_EPS)

    def refuse(key: str, value: Any, why: str) -> UnsupportedByTarget:
        return UnsupportedByTarget(f"config.json {key}={value!r}: our {preset} decoder cannot "
                                   f"express it ({why})")

    if preset == "cm3leon":
        # key: (OPTConfig's default, what our block needs)
        expected = {"enable_bias": (True, False),
                    "layer_norm_elementwise_affine": (True, False),
                    "do_layer_norm_before": (True, True),
                    "_remove_final_layer_norm": (False, False)}
        for key, (hf_default, wanted) in expected.items():
            if bool(_get(raw, key, hf_default)) != wanted:
                raise refuse(key, raw.get(key, hf_default),
                             f"the CM3leon block needs {key}={wanted}")
        if _get(raw, "word_embed_proj_dim", hidden) != hidden:
            raise refuse("word_embed_proj_dim", raw["word_embed_proj_dim"],
                         "no project_in/project_out layers")
        if raw.get("activation_function") != "gelu":
            raise refuse("activation_function", raw.get("activation_function"),
                         "the MLP uses exact GELU")
        fields.update(mlp_dim=raw["ffn_dim"], num_kv_heads=0, qk_norm=False, swin_norm=False)
    else:
        rope = raw.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default":
            raise refuse("rope_parameters.rope_type", rope.get("rope_type"),
                         "only plain RoPE is implemented")
        for key in ("attention_bias", "mlp_bias"):
            if raw.get(key):
                raise refuse(key, raw[key], "no biases")
        if raw.get("hidden_act", "silu") != "silu":
            raise refuse("hidden_act", raw["hidden_act"], "SwiGLU uses SiLU")
        if _get(raw, "model_parallel_size", 1) != 1:
            raise refuse("model_parallel_size", raw["model_parallel_size"],
                         "QK-norm weights are per head, not per shard")
        rms_eps = float(_get(raw, "rms_norm_eps", HF_FIXED_LAYER_NORM_EPS))
        if rms_eps != HF_FIXED_LAYER_NORM_EPS:
            raise refuse("rms_norm_eps", rms_eps, "one norm_eps serves RMSNorm and the QK "
                         f"LayerNorm, whose epsilon HF fixes to {HF_FIXED_LAYER_NORM_EPS}")
        fields.update(mlp_dim=raw["intermediate_size"],
                      num_kv_heads=_get(raw, "num_key_value_heads", raw["num_attention_heads"]),
                      qk_norm=True, swin_norm=bool(raw.get("swin_norm")),
                      rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))))
    config = dataclasses.replace(base, **fields)
    config.check("model")
    return config
