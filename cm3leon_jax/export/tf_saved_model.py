"""The decoder's forward pass as a TensorFlow SavedModel (`jax2tf`), for TF Serving / TFLite-style
consumers that cannot run JAX.

    python -m cm3leon_jax.export --workdir W --format tf_saved_model --out DIR \
        [--seq_len 128] [--batch_size 1]
    model = tf.saved_model.load(DIR); logits = model.logits(tokens)   # int32 [batch, seq_len]

Signature `serving_default` / `logits`: int32 tokens [batch, seq_len] -> float32 logits
[batch, seq_len, vocab]. Right-pad shorter inputs: attention is causal, so logits at real
positions do not depend on the padding after them. The weights are `tf.Variable`s saved in the
SavedModel's variables (embedding them as graph constants would hit protobuf's 2 GB limit for
large models); the computation is serialised as StableHLO (jax2tf native serialisation) for the
platform it was exported on (CPU here).

Two constraints come from pairing jax 0.10 with TensorFlow 2.20 (pinned for scann):
* jax serialises StableHLO at a version ~4 weeks old (`WEEK_4`), newer than TF 2.20's
  deserialiser (1.12.1), which then rejects e.g. the `erf` composite of our GELU. The export asks
  TF for the newest StableHLO version it reads and has jax serialise for that version
  (`_stablehlo_version_for_tensorflow`: jax's version hook patched for the duration of the save).
* TF 2.20 cannot refine the dynamic shapes of a batch-polymorphic module from this jax, so both
  batch and length are fixed at export (`--batch_size`, `--seq_len`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import numpy as np

from cm3leon_jax.config import ModelConfig
from cm3leon_jax.export import hf_export, param_sources


@dataclasses.dataclass
class SavedModelReport:
    out_dir: str
    seq_len: int
    batch_size: int
    num_variables: int


@contextlib.contextmanager
def _stablehlo_version_for_tensorflow():
    """Has jax serialise StableHLO at the newest version the installed TensorFlow reads."""
    from jax._src.lib.mlir.dialects import hlo  # noqa: PLC0415 - the hook jax.export calls
    from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo  # noqa: PLC0415

    original = hlo.get_version_from_compatibility_requirement
    hlo.get_version_from_compatibility_requirement = (
        lambda requirement: tf_stablehlo.get_current_version())
    try:
        yield
    finally:
        hlo.get_version_from_compatibility_requirement = original


def export_saved_model(source: param_sources.ParamSource, model: ModelConfig, out_dir: str,
                       seq_len: int = 0, batch_size: int = 1) -> SavedModelReport:
    import jax  # noqa: PLC0415
    from jax.experimental import jax2tf  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from cm3leon_jax.models.decoder import Decoder  # noqa: PLC0415

    hf_export.check_params_match(model, source.shapes())
    seq_len = seq_len or model.max_seq_len
    if not 0 < seq_len <= model.max_seq_len:
        raise ValueError(f"--seq_len={seq_len}: must be in [1, model.max_seq_len="
                         f"{model.max_seq_len}]")
    if batch_size < 1:
        raise ValueError(f"--batch_size={batch_size}: must be positive")
    model = dataclasses.replace(model, scan_layers=hf_export.is_scanned(source.shapes()),
                                attention="xla", remat="none")
    params = param_sources.read_all(source)

    def forward(weights, tokens):
        return Decoder(model).apply({"params": weights}, tokens)

    converted = jax2tf.convert(forward, with_gradient=False)
    module = tf.Module()
    module.params = jax.tree.map(lambda x: tf.Variable(np.asarray(x), trainable=False), params)

    @tf.function(input_signature=[tf.TensorSpec([batch_size, seq_len], tf.int32,
                                                name="tokens")], autograph=False)
    def logits(tokens):
        return converted(module.params, tokens)

    module.logits = logits
    os.makedirs(out_dir, exist_ok=True)
    with _stablehlo_version_for_tensorflow():
        tf.saved_model.save(module, out_dir, signatures={"serving_default": logits})
    return SavedModelReport(out_dir=out_dir, seq_len=seq_len, batch_size=batch_size,
                            num_variables=len(jax.tree.leaves(params)))
