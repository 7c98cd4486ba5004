"""Export our decoder as a transformers checkpoint directory, streaming tensor by tensor.

    report = export_hf(InMemoryParams(params), model_cfg, "out/")       # from a params pytree
    report = export_hf(OrbaxParams(location), model_cfg, "out/", ...)  # from a checkpoint

writes into `out/`:
  config.json, generation_config.json      transformers' config (`hf_config`)
  model.safetensors | model-0000i-of-0000N.safetensors + model.safetensors.index.json
  cm3leon_vocab/ , load_tokenizers.py, tokenizer files   (`tokenizer_files`, when a vocabulary
                                                          is given)
  README.md                                model card (`model_card`)

Order of work: the config is checked against the target (`hf_config.check_exportable`) and the
parameter shapes against the config before anything is written; every tensor's HF name, shape
and dtype is planned from shapes alone; then each tensor is read once (one layer of a stacked
`scan_layers` leaf at a time), converted (`hf_tensors.to_hf`, dtype cast) and appended to its
shard. The host holds one of our tensors and its converted copy at a time.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Optional

import jax
import ml_dtypes
import numpy as np

from cm3leon_jax import vocab as vocab_lib
from cm3leon_jax.config import ConfigError, ModelConfig
from cm3leon_jax.export import hf_config, hf_tensors
from cm3leon_jax.export.param_sources import ParamSource
from cm3leon_jax.export.safetensors_stream import ShardedWriter, TensorSpec

EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
                 "float16": np.dtype(np.float16)}
# transformers' own default shard size for save_pretrained.
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9


@dataclasses.dataclass
class ExportReport:
    out_dir: str
    architecture: str
    files: list[str]
    num_tensors: int
    tensor_bytes: int
    largest_leaf_read: int  # bytes: the largest single read of our params (one tensor)
    params_bytes_read: int  # bytes: sum over all reads (every tensor read once)
    notes: list[str] = dataclasses.field(default_factory=list)


def is_scanned(shapes: dict) -> bool:
    """True when the params stack the layers on a leading axis (`scan_layers=True`)."""
    return any(path[0] == "layers" for path in shapes)


def expected_shapes(model: ModelConfig, scanned: bool) -> dict:
    from cm3leon_jax.models.decoder import init_params  # noqa: PLC0415 - model import is heavy

    config = dataclasses.replace(model, scan_layers=scanned)
    abstract = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    return {tuple(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
            for path, leaf in flat}


def check_params_match(model: ModelConfig, shapes: dict) -> bool:
    """Raises ConfigError when the params are not those of `model`; returns `scanned`."""
    scanned = is_scanned(shapes)
    expected = expected_shapes(model, scanned)
    found = {path: shape for path, (shape, _) in shapes.items()}
    if expected != found:
        missing = sorted("/".join(p) for p in set(expected) - set(found))
        extra = sorted("/".join(p) for p in set(found) - set(expected))
        wrong = sorted(f"{'/'.join(p)}: {found[p]} vs config {expected[p]}"
                       for p in set(found) & set(expected) if found[p] != expected[p])
        raise ConfigError(
            "the checkpoint's params do not match config.model "
            f"(preset={model.preset}, d_model={model.d_model}, layers={model.num_layers}): "
            + "; ".join(part for part in (
                f"missing {missing[:4]}" if missing else "",
                f"unexpected {extra[:4]}" if extra else "",
                f"shapes {wrong[:4]}" if wrong else "") if part)
            + ". Pass the run's own config (--config) or let the export read it from the "
              "checkpoint")
    return scanned


def plan_tensors(model: ModelConfig, shapes: dict, dtype: np.dtype) -> list[TensorSpec]:
    """Name, shape and dtype of every exported tensor, in write order, from shapes alone."""
    scanned = is_scanned(shapes)
    specs = []
    for rule in hf_tensors.tensor_rules(model):
        layers = range(model.num_layers) if rule.per_layer else [None]
        for layer in layers:
            path, index = hf_tensors.layer_leaf_path(rule, layer or 0, scanned)
            shape = shapes[path][0][1:] if index is not None else shapes[path][0]
            specs.append(TensorSpec(rule.name(layer), hf_tensors.hf_shape(rule, shape), dtype))
    return specs


def stream_tensors(model: ModelConfig, source: ParamSource,
                   dtype: np.dtype) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, tensor) in `plan_tensors` order: each of our per-layer tensors is read once
    (one layer of a stacked leaf at a time), each other leaf once."""
    scanned = is_scanned(source.shapes())
    for rule in hf_tensors.tensor_rules(model):
        if not rule.per_layer:
            yield rule.name(), hf_tensors.to_hf(rule, source.read(rule.ours)).astype(dtype)
            continue
        read_layer = source.layer_reader(("layers",) + rule.ours) if scanned else None
        for layer in range(model.num_layers):
            leaf = (read_layer(layer) if scanned
                    else source.read((f"layers_{layer}",) + rule.ours))
            yield rule.name(layer), hf_tensors.to_hf(rule, leaf).astype(dtype)


def special_ids(vocab: Optional[vocab_lib.Vocabulary]) -> dict[str, int]:
    """Our structural token ids (fixed by `vocab.STRUCTURAL`, whatever the vocabulary)."""
    if vocab is not None:
        return {name: vocab.special_id(name) for name in vocab_lib.STRUCTURAL}
    return {name: index for index, name in enumerate(vocab_lib.STRUCTURAL)}


def export_hf(source: ParamSource, model: ModelConfig, out_dir: str, *,
              vocab: Optional[vocab_lib.Vocabulary] = None, dtype: str = "float32",
              max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, workdir: Optional[str] = None,
              provenance: Optional[dict] = None, license_id: str = "other") -> ExportReport:
    """Writes the transformers checkpoint directory (module docstring); returns a report.

    vocab: the run's vocabulary; exported alongside (text model, VQ-GAN, id layout, Chameleon's
      vocabulary map). Without it only the weights and config are written and the ids stay ours.
    workdir: the project workdir, for the model card (data_card.json, metrics.json).
    provenance: what to record in the card about the source (checkpoint path, step, stage).
    license_id: the card's `license` (an HF licence id; `other` when the owner has not chosen).
    """
    from cm3leon_jax.export import model_card, tokenizer_files, vqgan_hf  # noqa: PLC0415

    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"--dtype={dtype!r}: must be one of {', '.join(EXPORT_DTYPES)}")
    architecture = hf_config.check_exportable(model)
    shapes = source.shapes()
    check_params_match(model, shapes)
    target_dtype = EXPORT_DTYPES[dtype]
    os.makedirs(out_dir, exist_ok=True)

    notes: list[str] = []
    vocabulary_map, vq_config, vq_tensors = None, None, []
    if model.preset == "chameleon":
        vocabulary_map = tokenizer_files.chameleon_vocabulary_map(vocab, model.vocab_size)
        vq_config, vq_tensors, vq_note = vqgan_hf.chameleon_vq_part(vocab)
        vq_tensors = [(name, array.astype(target_dtype)) for name, array in vq_tensors]
        notes.append(vq_note)
    specs = plan_tensors(model, shapes, target_dtype) + [
        TensorSpec(name, tuple(array.shape), array.dtype) for name, array in vq_tensors]
    writer = ShardedWriter(out_dir, specs, max_shard_bytes,
                           metadata={"exported_by": "cm3leon_jax.export"})
    for name, tensor in stream_tensors(model, source, target_dtype):
        writer.write(name, tensor)
    for name, tensor in vq_tensors:
        writer.write(name, tensor)
    files = writer.close()

    ids = special_ids(vocab)
    config = hf_config.build_hf_config(model, ids, dtype, vocabulary_map, vq_config)
    config.save_pretrained(out_dir)
    _write_generation_config(out_dir, ids)
    if vocab is not None:
        notes += tokenizer_files.export_tokenizers(vocab, out_dir, model)
    else:
        notes.append("no vocabulary was given: ids are the model's own and no tokenizer files "
                     "were written")
    report = ExportReport(out_dir=out_dir, architecture=architecture, files=files,
                          num_tensors=len(specs), tensor_bytes=sum(s.nbytes for s in specs),
                          largest_leaf_read=getattr(source, "largest_read", 0),
                          params_bytes_read=getattr(source, "bytes_read", 0), notes=notes)
    model_card.write_model_card(out_dir, model, report, vocab=vocab, workdir=workdir,
                                provenance=provenance or {}, dtype=dtype,
                                license_id=license_id)
    return report


def _write_generation_config(out_dir: str, ids: dict[str, int]) -> None:
    import transformers  # noqa: PLC0415

    transformers.GenerationConfig(eos_token_id=ids[vocab_lib.EOS], pad_token_id=ids[vocab_lib.PAD],
                                  bos_token_id=None).save_pretrained(out_dir)
