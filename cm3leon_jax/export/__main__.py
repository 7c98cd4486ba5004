"""Command line: export a run's checkpoint, or import a transformers checkpoint.

    python -m cm3leon_jax.export --workdir W --format hf --out DIR [--stage pretrain|sft]
        [--step N] [--config experiments/x.py] [--dtype float32|bfloat16|float16]
        [--max_shard_bytes 5000000000] [--vocab VOCAB_DIR] [--license other] [--verify]
    python -m cm3leon_jax.export --workdir W --format tf_saved_model --out DIR [--seq_len 128]
        [--batch_size 1]
    python -m cm3leon_jax.export import --from DIR --workdir W [--config base_experiment.py]

Export reads the newest checkpoint of W/sft (when there is one) or W/pretrain, one tensor at a
time, and takes the model config from the checkpoint itself (`--config` overrides it). The
vocabulary is `--vocab`, else the one the run's prepared data names, else W/vocab.
`--verify` reloads the export in transformers and compares logits and greedy decoding on a mixed
text-image prompt (needs torch). Import writes W/pretrain/checkpoints (step 0),
W/imported_config.py and W/vocab; see `hf_import.py`.

Errors a user can fix (unknown format, no checkpoint, a config the target cannot express) print
one line saying what to change and exit with status 2.

The flags are defined only when this module runs as the program (`define_flags`): tests import
`run_export` / `run_import`, and flag names such as --seq_len or --vocab also exist in other entry
points that a test session imports (absl refuses a second definition).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

from absl import app, flags
import ml_collections

from cm3leon_jax import compilation_cache, paths
from cm3leon_jax import cli  # noqa: F401 - defines --config and --workdir
from cm3leon_jax import config as config_lib
from cm3leon_jax.config import ConfigError

FORMATS = {"hf": "transformers checkpoint (safetensors + config.json)",
           "tf_saved_model": "TensorFlow SavedModel of the forward pass (jax2tf)"}

class ExportError(ConfigError):
    """A request the export cannot carry out; the message says what to change."""


def find_vocabulary(workdir: str, full_config: dict, explicit: Optional[str]):
    """The run's Vocabulary (or None): --vocab, the prepared data's, the config's, the
    workdir's trained one, an imported one."""
    from cm3leon_jax.vocab import VOCAB_FILE, Vocabulary  # noqa: PLC0415

    candidates = [explicit] if explicit else []
    work = paths.Workdir(workdir)
    manifest = str(work.prepared_manifest)
    if os.path.exists(manifest):
        with open(manifest) as handle:
            candidates.append(json.load(handle).get("vocab"))
    candidates.append((full_config.get("prepare") or {}).get("vocab_dir"))
    found = paths.first_existing([*candidates, *work.vocab_candidates()], VOCAB_FILE)
    if found is not None:
        return Vocabulary.load(str(found))
    if explicit:
        raise ExportError(f"--vocab {explicit}: no {VOCAB_FILE} there")
    return None


def resolve_model_config(meta: dict, override: Optional[ml_collections.ConfigDict]):
    """--config's model section, else the one the checkpoint recorded."""
    if override is not None:
        return config_lib.model_config(override)
    recorded = (meta.get("config") or {}).get("model")
    if not recorded:
        raise ExportError("the checkpoint's meta records no model config (an old run?); pass "
                          "--config experiments/<the run's config>.py")
    return config_lib.from_dict(recorded, config_lib.ModelConfig, prefix="model")


def run_export(workdir: str, out: str, *, fmt: str = "hf", stage: Optional[str] = None,
               step: Optional[int] = None, override: Optional[ml_collections.ConfigDict] = None,
               dtype: str = "float32", max_shard_bytes: int = 5 * 10**9,
               vocab_dir: Optional[str] = None, license_id: str = "other",
               verify: bool = False, seq_len: int = 0, batch_size: int = 1):
    """The export command as a function (tests call it); returns the format's report."""
    from cm3leon_jax.export import param_sources  # noqa: PLC0415

    if fmt not in FORMATS:
        raise ExportError(f"--format={fmt!r} is not a known export format; choose one of: "
                          + "; ".join(f"{name} ({what})" for name, what in FORMATS.items()))
    if not out:
        raise ExportError("--out is required: the directory to write the export into")
    location = param_sources.find_checkpoint(workdir, stage, step)
    meta = param_sources.read_meta(location)
    model = resolve_model_config(meta, override)
    source = param_sources.OrbaxParams(location)
    provenance = {"checkpoint": str(location.checkpoints_dir), "step": location.step,
                  "stage": location.stage}
    print(f"exporting {location.stage} step {location.step} from {location.checkpoints_dir} "
          f"({model.preset}, {model.num_layers} layers, d_model {model.d_model}) as {fmt}")
    if fmt == "tf_saved_model":
        from cm3leon_jax.export import tf_saved_model  # noqa: PLC0415

        report = tf_saved_model.export_saved_model(source, model, out, seq_len=seq_len,
                                                   batch_size=batch_size)
        print(f"wrote a SavedModel to {out}: logits(int32 tokens [{report.batch_size}, "
              f"{report.seq_len}])")
        return report
    from cm3leon_jax.export import hf_export  # noqa: PLC0415

    vocab = find_vocabulary(workdir, meta.get("config") or {}, vocab_dir)
    report = hf_export.export_hf(source, model, out, vocab=vocab, dtype=dtype,
                                 max_shard_bytes=max_shard_bytes, workdir=workdir,
                                 provenance=provenance, license_id=license_id)
    print(f"wrote {report.architecture} to {out}: {report.num_tensors} tensors, "
          f"{report.tensor_bytes:,} bytes in {len(report.files)} file(s); largest leaf held "
          f"{report.largest_leaf_read:,} bytes")
    for note in report.notes:
        print(f"  note: {note}")
    if verify:
        _verify(source, model, out, vocab)
    return report


def _verify(source, model, out: str, vocab) -> None:
    """Reloads the export in transformers and compares it with our decoder (float32, CPU).
    Holds the whole params in memory: meant for models that fit a workstation."""
    import dataclasses  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    from cm3leon_jax.export import hf_export, param_sources, verify  # noqa: PLC0415

    params = param_sources.read_all(source, np.float32)
    model = dataclasses.replace(model, scan_layers=hf_export.is_scanned(source.shapes()),
                                dtype="float32", param_dtype="float32", attention="xla")
    length = min(32, model.max_seq_len // 2)
    ids = verify.mixed_prompt(model, vocab, length, np.random.default_rng(0))
    result = verify.compare(params, model, out, ids, steps=length)
    print(f"verify: max |logit difference| {result['max_abs_logit_diff']:.3g}; greedy decoding "
          f"{'identical' if result['greedy_identical'] else 'DIFFERS'} "
          f"({result['ours'].shape[1]} tokens)")


def run_import(hf_dir: Optional[str], workdir: str,
               base: Optional[ml_collections.ConfigDict] = None):
    from cm3leon_jax.export import hf_import  # noqa: PLC0415

    if not hf_dir:
        raise ExportError("import needs --from DIR, a transformers checkpoint directory")
    report = hf_import.import_hf(hf_dir, workdir, base)
    print(f"imported {hf_dir} ({report.model.preset}, {report.model.num_layers} layers) into "
          f"{report.checkpoint_dir} step {report.step}")
    print(f"config file: {report.config_file}")
    print("model overrides for another experiment: " + " ".join(report.overrides))
    if report.vocab_dir:
        print(f"tokenizers restored to {report.vocab_dir}")
    for note in report.notes:
        print(f"  note: {note}")
    print(f"next: python -m cm3leon_jax.sft --config {report.config_file} --workdir {workdir}")
    return report


def define_flags() -> None:
    flags.DEFINE_string("format", "hf", "Export format: " + "; ".join(
        f"{name} = {what}" for name, what in FORMATS.items()))
    flags.DEFINE_string("out", None, "Directory to write the export into.")
    flags.DEFINE_string("stage", None, "Which run to export: pretrain or sft (default: sft when "
                        "W/sft has a checkpoint, else pretrain).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.DEFINE_string("dtype", "float32", "Tensor dtype of the export: float32, bfloat16, "
                        "float16.")
    flags.DEFINE_integer("max_shard_bytes", 5 * 10**9, "Largest safetensors shard (bytes).")
    flags.DEFINE_string("vocab", None, "Vocabulary directory (default: the run's).")
    flags.DEFINE_string("license", "other", "License id for the model card header.")
    flags.DEFINE_bool("verify", False, "Compare the export with our decoder afterwards (torch).")
    flags.DEFINE_integer("seq_len", 0, "tf_saved_model: sequence length of the signature "
                         "(0 = model.max_seq_len).")
    flags.DEFINE_integer("batch_size", 1, "tf_saved_model: batch size of the signature.")
    flags.DEFINE_string("from", None, "import: the transformers checkpoint directory.")


def main(argv: list[str]) -> None:
    values = flags.FLAGS
    command = argv[1:]
    if command not in ([], ["import"]):
        raise app.UsageError(f"unexpected arguments {' '.join(command)}: the only command is "
                             "`import`; without it the workdir's checkpoint is exported")
    if not values.workdir:
        raise app.UsageError("--workdir is required")
    compilation_cache.enable()  # before the first compile: JAX decides once per process
    try:
        if command == ["import"]:
            run_import(values["from"].value, values.workdir, values.config)
        else:
            run_export(values.workdir, values.out, fmt=values.format, stage=values.stage,
                       step=values.step, override=values.config, dtype=values.dtype,
                       max_shard_bytes=values.max_shard_bytes, vocab_dir=values.vocab,
                       license_id=values.license, verify=values.verify,
                       seq_len=values.seq_len, batch_size=values.batch_size)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"export error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    app.run(main)
