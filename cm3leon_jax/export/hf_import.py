"""Import a transformers checkpoint (OPT or Chameleon) as our params, ready for SFT.

    python -m cm3leon_jax.export import --from DIR --workdir W [--config base.py]

1. `config.json` -> our `ModelConfig` (`hf_config.model_config_from_hf`; anything our decoder
   cannot express, e.g. OPT biases or affine LayerNorms, fails with the key and the reason);
2. every tensor -> our leaf (`hf_tensors.from_hf`, the inverse of the export's layout change),
   stacked on a leading layer axis when the config scans layers; tensors are read one at a time
   from the (memory-mapped) safetensors shards, and the host holds one copy of the params (Orbax
   saves a whole pytree at once);
3. saved through the project's own `train/checkpoint.py` as step 0 of `W/pretrain/checkpoints`
   (state `{"params": ...}`, meta with the model signature and the config), which is where
   `python -m cm3leon_jax.sft` looks (`train.init_from` / `W/pretrain`);
4. `W/imported_model.json` (the model section) and `W/imported_config.py` (a config file: a base
   experiment with its model section replaced, usable as `--config`), and the overrides printed;
5. when DIR holds our tokenizers (`cm3leon_vocab/`, written by the export), they are restored as
   `W/vocab` in the project's native format (VQ-GAN as msgpack), which `data.prepare` reads.

Export followed by import gives back every parameter bit for bit (tested): the layouts only
reshape and transpose. Importing into a workdir that already has pretraining checkpoints is
refused rather than mixing two models in one run directory. The imported checkpoint is a
starting point (params only): `pretrain` cannot *resume* from it (no optimizer or data state);
to continue pretraining, point `train.init_from` at `W/pretrain` from another workdir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Optional

import ml_collections
import numpy as np

from cm3leon_jax import paths
from cm3leon_jax import config as config_lib, experiment_files
from cm3leon_jax.config import ModelConfig
from cm3leon_jax.export import hf_config, hf_tensors, tokenizer_files
from cm3leon_jax.export.hf_export import expected_shapes
from cm3leon_jax.export.safetensors_stream import TensorReader
from cm3leon_jax.vocab import Vocabulary

EXPERIMENTS = str(experiment_files.EXPERIMENTS)
DEFAULT_BASE_EXPERIMENT = "sft_tiny.py"
IMPORT_STEP = 0
# Tensors a Chameleon checkpoint carries that are not part of our decoder (its image encoder).
IGNORED_PREFIXES = ("model.vqmodel.",)


@dataclasses.dataclass
class ImportReport:
    model: ModelConfig
    checkpoint_dir: str
    step: int
    config_file: str
    overrides: list[str]
    vocab_dir: Optional[str]
    notes: list[str]


def _dtype(model: ModelConfig) -> np.dtype:
    import jax.numpy as jnp  # noqa: PLC0415

    return np.dtype({"float32": jnp.float32, "bfloat16": jnp.bfloat16}[model.param_dtype])


def params_from_hf(reader: TensorReader, model: ModelConfig) -> dict:
    """Our params pytree (numpy, `model.param_dtype`) from an HF state dict reader."""
    shapes = expected_shapes(model, model.scan_layers)
    dtype = _dtype(model)
    params: dict = {}
    used = set()

    def put(path: tuple[str, ...], value: np.ndarray) -> None:
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    for rule in hf_tensors.tensor_rules(model):
        if not rule.per_layer:
            used.add(rule.name())
            put(rule.ours, hf_tensors.from_hf(rule, reader.read(rule.name()),
                                              shapes[rule.ours]).astype(dtype))
            continue
        if model.scan_layers:
            stacked_shape = shapes[("layers",) + rule.ours]
            stacked = np.empty(stacked_shape, dtype)
            for layer in range(model.num_layers):
                used.add(rule.name(layer))
                stacked[layer] = hf_tensors.from_hf(rule, reader.read(rule.name(layer)),
                                                    stacked_shape[1:])
            put(("layers",) + rule.ours, stacked)
        else:
            for layer in range(model.num_layers):
                path = (f"layers_{layer}",) + rule.ours
                used.add(rule.name(layer))
                put(path, hf_tensors.from_hf(rule, reader.read(rule.name(layer)),
                                             shapes[path]).astype(dtype))
    leftover = [name for name in reader.names() if name not in used
                and not name.startswith(IGNORED_PREFIXES)]
    if model.tie_embeddings and "lm_head.weight" in leftover:
        leftover.remove("lm_head.weight")  # a duplicate of the tied embedding some writers keep
    if leftover:
        raise hf_config.UnsupportedByTarget(
            f"the checkpoint has tensors our {model.preset} decoder has no place for: "
            f"{leftover[:6]}{' ...' if len(leftover) > 6 else ''} (biases? affine norms?)")
    return params


def _base_config(base: Optional[ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
    if base is not None:
        return ml_collections.ConfigDict(base.to_dict())
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location(
        "imported_base", os.path.join(EXPERIMENTS, DEFAULT_BASE_EXPERIMENT))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def model_overrides(model: ModelConfig) -> list[str]:
    """`--config.model.<field>=<value>` for every field that differs from ModelConfig()."""
    defaults = ModelConfig()
    return [f"--config.model.{field.name}={getattr(model, field.name)!r}"
            if isinstance(getattr(model, field.name), str)
            else f"--config.model.{field.name}={getattr(model, field.name)}"
            for field in dataclasses.fields(ModelConfig)
            if getattr(model, field.name) != getattr(defaults, field.name)]


CONFIG_TEMPLATE = '''"""Config of a model imported from transformers.

Written by `python -m cm3leon_jax.export import` from {source} ({architecture});
params in {checkpoints} (step {step}).

    python -m cm3leon_jax.sft --config {config_file} --workdir {workdir}
    python -m cm3leon_jax.sft --config {config_file}:path/to/base_experiment.py --workdir {workdir}

get_config(arg): the base experiment `arg` (default {default_base})
with its `model` section replaced by the imported architecture ({model_file}, next to this
file). Everything else (data, cm3, train, sft, mesh) comes from the base experiment.
"""

import importlib.util
import json
import pathlib

import ml_collections

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_BASE = pathlib.Path({default_base!r})


def get_config(arg=None):
    base_path = pathlib.Path(arg) if arg else DEFAULT_BASE
    spec = importlib.util.spec_from_file_location("imported_base", base_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model = ml_collections.ConfigDict(json.loads((HERE / {model_file!r}).read_text()))
    return config
'''


def _write_config_files(workdir: str, model: ModelConfig, hf_dir: str, architecture: str,
                        checkpoints: str) -> str:
    with open(paths.Workdir(workdir).imported_model, "w") as handle:
        json.dump(dataclasses.asdict(model), handle, indent=2, sort_keys=True)
        handle.write("\n")
    config_file = str(paths.Workdir(workdir).imported_config)
    with open(config_file, "w") as handle:
        handle.write(CONFIG_TEMPLATE.format(
            source=os.path.abspath(hf_dir), architecture=architecture, checkpoints=checkpoints,
            step=IMPORT_STEP, config_file=config_file, workdir=workdir,
            default_base=os.path.join(EXPERIMENTS, DEFAULT_BASE_EXPERIMENT),
            model_file=paths.Workdir(workdir).imported_model.name))
    return config_file


def restore_vocabulary(hf_dir: str, workdir: str) -> Optional[str]:
    """Our tokenizers from an export (`cm3leon_vocab/`) as `W/vocab` in the native format."""
    source = os.path.join(hf_dir, tokenizer_files.OUR_VOCAB_DIR)
    if not os.path.exists(os.path.join(source, "vocab.json")):
        return None
    from cm3leon_jax.export import loader  # noqa: PLC0415

    target = str(paths.Workdir(workdir).imported_vocab)
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(source, "vocab.json")) as handle:
        layout = json.load(handle)
    shutil.copyfile(os.path.join(source, layout["text_model"]),
                    os.path.join(target, layout["text_model"]))
    if layout.get("image_tokenizer_format") == "safetensors":
        loader.load_image_tokenizer(hf_dir, batch_size=1).save(
            os.path.join(target, tokenizer_files.IMAGE_TOKENIZER_DIR))
        layout["image_tokenizer"] = tokenizer_files.IMAGE_TOKENIZER_DIR
        del layout["image_tokenizer_format"]
    with open(os.path.join(target, "vocab.json"), "w") as handle:
        json.dump(layout, handle, indent=2)
        handle.write("\n")
    return target


def import_hf(hf_dir: str, workdir: str,
              base: Optional[ml_collections.ConfigDict] = None) -> ImportReport:
    """Steps 1-5 of the module docstring; returns what was written."""
    import jax  # noqa: PLC0415
    from cm3leon_jax.train.checkpoint import Checkpoints  # noqa: PLC0415
    from cm3leon_jax.train.decoder_task import model_signature  # noqa: PLC0415

    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"--from {hf_dir}: no config.json (not a transformers "
                                "checkpoint directory)")
    with open(config_path) as handle:
        raw = json.load(handle)
    full_config = _base_config(base)
    base_model = (config_lib.model_config(full_config) if "model" in full_config
                  else ModelConfig())
    model = hf_config.model_config_from_hf(raw, base_model)
    checkpoints_dir = str(paths.Workdir(workdir).checkpoints("pretrain"))
    if os.path.exists(checkpoints_dir) and os.listdir(checkpoints_dir):
        raise FileExistsError(f"{checkpoints_dir} already holds checkpoints; import into a new "
                              "--workdir (or move them away)")
    params = params_from_hf(TensorReader(hf_dir), model)
    full_config.model = ml_collections.ConfigDict(dataclasses.asdict(model))
    vocab_dir = None
    notes = []
    if (paths.Workdir(workdir).imported_vocab / "vocab.json").exists():
        notes.append(f"{workdir}/vocab exists already: the export's tokenizers were not copied")
    else:
        vocab_dir = restore_vocabulary(hf_dir, workdir)
        if vocab_dir is None:
            notes.append("no cm3leon_vocab/ in the checkpoint: build a vocabulary whose ids "
                         "match the model before preparing data")
    # The restored tokenizers' fingerprint: fine-tuning refuses data prepared with other ones.
    fingerprint = Vocabulary.load(vocab_dir).fingerprint if vocab_dir else ""
    meta = {"model": model_signature(model), "data_fingerprint": "", "task": "import",
            "vocab_fingerprint": fingerprint,
            "imported_from": os.path.abspath(hf_dir), "config": full_config.to_dict()}
    train = config_lib.TrainConfig(async_checkpoints=False, keep_best=False)
    checkpoints = Checkpoints(checkpoints_dir, train)
    checkpoints.save(IMPORT_STEP, {"params": jax.tree.map(np.asarray, params)}, {}, meta)
    checkpoints.close()
    architecture = hf_config.TARGETS[model.preset]
    config_file = _write_config_files(workdir, model, hf_dir, architecture, checkpoints_dir)
    return ImportReport(model=model, checkpoint_dir=checkpoints_dir, step=IMPORT_STEP,
                        config_file=config_file, overrides=model_overrides(model),
                        vocab_dir=vocab_dir, notes=notes)
