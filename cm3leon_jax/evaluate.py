"""Evaluate a trained model on the `shapes` test split: text-to-image, captioning, VQA, editing.

    python -m cm3leon_jax.evaluate --workdir W                      # W/sft if trained
    python -m cm3leon_jax.evaluate --workdir W --stage pretrain --retrieval off \\
        --cfg_scale 1 --decoding cd_k --num_examples 64 --seed 0
    python -m cm3leon_jax.evaluate --workdir W --table --results_md docs/RESULTS.md

One evaluation writes its figures to `W/metrics.json` under "evaluate" (merged with the other
stages', `results.py`), TensorBoard scalars `<task>/<metric>` to `W/evaluate/tensorboard` at the
model's step, and grids (real vs generated, source / edited / target) to `W/evaluate/*.png`.
`--table` runs the paper-style ablation grid instead (`evaluation/table.py`: retrieval off/on,
CFG alpha 1/3/5, top-p vs CD-K, pretrain vs SFT), writes it under "evaluate_table" and as
markdown to `--results_md` (default `W/RESULTS.md`).

Metrics (definitions in `cm3leon_jax/evaluation/`): text-to-image exact match and attribute
accuracy judged by the `shapes` verifier, FID on the retrieval bi-encoder's image-tower features
(VQ-GAN latents when W has no trained encoder; `fid_features` says which), CLIP score;
captioning CIDEr-D and attribute-word accuracy; VQA normalised exact match; editing verifier
accuracy. `--fid_weights PATH` (pytorch-fid's Inception file, which nothing here downloads) makes
FID the standard one, comparable with published figures. The model's config comes from its
checkpoint (or `--config`), the test examples from that config's `data` section. Every figure is at a fixed `--seed` and `--num_examples`.
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags

from cm3leon_jax import cli, console, paths  # cli also defines --config and --workdir
from cm3leon_jax.config import EvalSettings

DEFAULTS = EvalSettings()  # every flag's default is the library's

FLAGS = flags.FLAGS
_TASKS = flags.DEFINE_list("tasks", ",".join(DEFAULTS.tasks), "Tasks to evaluate.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", DEFAULTS.num_examples,
                                     "Test examples per task (first ones).")
_SEED = flags.DEFINE_integer("seed", 0, "Decoding seed.")
_STAGE = flags.DEFINE_enum("stage", None, ["pretrain", "sft"],
                           "Which model: default sft if W/sft has a checkpoint, else pretrain.")
_RETRIEVAL = flags.DEFINE_enum("retrieval", "auto", ["auto", "on", "off"],
                               "Retrieved documents before text2image / caption prompts: auto = "
                               "on for the pretrained model when W has an index, off for SFT.")
_CFG_SCALE = flags.DEFINE_float("cfg_scale", DEFAULTS.cfg_scale,
                                "Classifier-free guidance alpha (1 = off).")
_DECODING = flags.DEFINE_enum("decoding", "top_p", ["top_p", "cd_k"],
                              "Image-token decoding: nucleus sampling or contrastive TopK.")
_TEMPERATURE = flags.DEFINE_float("temperature", DEFAULTS.temperature, "Image-token temperature.")
_TOP_P = flags.DEFINE_float("top_p", DEFAULTS.top_p, "Nucleus mass (decoding top_p).")
_CD_K = flags.DEFINE_integer("cd_k", DEFAULTS.cd_k, "CD-K's k (decoding cd_k).")
_CD_ALPHA = flags.DEFINE_float("cd_alpha", DEFAULTS.cd_alpha, "CD-K's alpha (decoding cd_k).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", DEFAULTS.num_samples,
                                    "Images per prompt (best kept by rerank).")
_QUESTIONS = flags.DEFINE_integer("questions_per_example", 0,
                                  "VQA questions per image (0 = all).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", DEFAULTS.batch_size,
                                   "Rows per compiled decoding call.")
_GRID_EXAMPLES = flags.DEFINE_integer("grid_examples", DEFAULTS.grid_examples,
                                      "Examples drawn in the PNG grids.")
_FID_WEIGHTS = flags.DEFINE_string(
    "fid_weights", "", "FID's Inception-v3 weights (pytorch-fid's pt_inception-2015-12-05-"
    "6726825d.pth, or an .npz of it): standard, comparable FID. Empty: the project's features.")
_TABLE = flags.DEFINE_bool("table", False, "Run the ablation grid and write --results_md.")
_RESULTS_MD = flags.DEFINE_string("results_md", None, "--table: markdown (default W/RESULTS.md).")
_TABLE_STAGES = flags.DEFINE_list("table_stages", "pretrain,sft", "--table: stages.")
_TABLE_RETRIEVAL = flags.DEFINE_list("table_retrieval", "off,on", "--table: retrieval settings.")
_TABLE_DECODINGS = flags.DEFINE_list("table_decodings", "top_p,cd_k", "--table: decodings.")
_TABLE_CFG = flags.DEFINE_list("table_cfg_scales", "1,3,5", "--table: CFG alphas.")


def settings_from_flags():
    return EvalSettings(
        num_examples=_NUM_EXAMPLES.value, seed=_SEED.value, stage=_STAGE.value,
        retrieval={"auto": None, "on": True, "off": False}[_RETRIEVAL.value],
        cfg_scale=_CFG_SCALE.value, decoding=_DECODING.value, temperature=_TEMPERATURE.value,
        top_p=_TOP_P.value, cd_k=_CD_K.value, cd_alpha=_CD_ALPHA.value,
        num_samples=_NUM_SAMPLES.value, questions_per_example=_QUESTIONS.value,
        tasks=tuple(_TASKS.value), batch_size=_BATCH_SIZE.value,
        grid_examples=_GRID_EXAMPLES.value).check()


def grid_from_flags():
    from cm3leon_jax.evaluation.table import Grid  # noqa: PLC0415

    switches = {"off": False, "on": True}
    bad = [v for v in _TABLE_RETRIEVAL.value if v not in switches]
    if bad:
        raise ValueError(f"--table_retrieval takes on/off, got {bad}")
    return Grid(stages=tuple(_TABLE_STAGES.value),
                retrieval=tuple(switches[v] for v in _TABLE_RETRIEVAL.value),
                decodings=tuple(_TABLE_DECODINGS.value),
                cfg_scales=tuple(float(v) for v in _TABLE_CFG.value))


def run_table(workdir: str) -> str:
    from etils import epath  # noqa: PLC0415

    from cm3leon_jax import results  # noqa: PLC0415
    from cm3leon_jax.evaluation import table, tasks  # noqa: PLC0415

    settings = settings_from_flags()
    result = table.run_table(workdir, settings, grid_from_flags(), cfg=FLAGS.config,
                             fid_weights=_FID_WEIGHTS.value)
    results.write_metrics(workdir, "evaluate_table", result)
    values = {}
    for task, rows in result["rows"].items():
        for row in rows:
            tag = "_".join(f"{k}-{row[k]}" for k in ("stage", "retrieval", "decoding",
                                                     "cfg_scale") if k in row)
            values.update({f"table/{task}/{tag}/{k}": float(v) for k, v in row.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)
                           and k != "cfg_scale"})
    tasks.write_tensorboard(workdir, 0, values)
    out = epath.Path(_RESULTS_MD.value or paths.Workdir(workdir).results_table)
    command = "python -m cm3leon_jax.evaluate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    table.write_markdown(out, table.markdown(result, workdir, command))
    return str(out)


def main(argv: list[str]) -> None:
    cli.start_app_main(argv, FLAGS.workdir)
    from cm3leon_jax.config import ConfigError  # noqa: PLC0415

    try:
        if _TABLE.value:
            out = run_table(FLAGS.workdir)
            console.say(f"[evaluate] ablation table -> {out}; figures in "
                        f"{paths.Workdir(FLAGS.workdir).metrics} (evaluate_table)")
            return
        from cm3leon_jax.evaluation import tasks  # noqa: PLC0415

        figures = tasks.evaluate(FLAGS.workdir, settings_from_flags(), cfg=FLAGS.config,
                                 fid_weights=_FID_WEIGHTS.value)
    except (ConfigError, FileNotFoundError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    work = paths.Workdir(FLAGS.workdir)
    console.say(f"[evaluate] {figures['stage']} step {figures['step']}, "
                f"{figures['num_examples']} examples, seed {figures['seed']}: figures in "
                f"{work.metrics} (evaluate), TensorBoard in {work.evaluation / 'tensorboard'}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
