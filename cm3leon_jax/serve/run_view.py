"""What a workdir records about its runs, in the shapes the page shows: figures, curves, grids,
cards. Read-only: nothing here writes into the workdir (curve PNGs go to a scratch directory).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from cm3leon_jax import paths, plots

DECODER_RUNS = ("pretrain", "sft", paths.SUPERRES_RUN)  # runs with train_log / eval_log
VALIDATION_LOSS = "/loss"


def _flat(figures: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(figures, dict):
        return [(prefix, figures)]
    rows = []
    for key, value in sorted(figures.items()):
        rows += _flat(value, f"{prefix}/{key}" if prefix else str(key))
    return rows


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def metrics_markdown(workdir: str) -> str:
    """metrics.json as one table per stage (nested figures flattened to a/b/c)."""
    path = paths.Workdir(workdir).metrics
    if not path.exists():
        return (f"No `{path}` yet: every stage writes its final figures there when it ends "
                f"(`python -m cm3leon_jax.demo --workdir {workdir}` runs them all).")
    try:
        metrics = json.loads(path.read_text())
    except ValueError as error:
        return f"`{path}` is not valid JSON ({error})."
    parts = []
    for stage, figures in sorted(metrics.items()):
        rows = _flat(figures)
        parts += [f"### {stage}", "", "| figure | value |", "|---|---|"]
        parts += [f"| {name or stage} | {_shown(value)} |" for name, value in rows]
        parts.append("")
    return "\n".join(parts)


def curves(workdir: str, out_dir: str) -> dict[str, str]:
    """PNGs of each decoder run's curves: training loss and every validation loss, against the
    step, from the run's train_log.jsonl / eval_log.jsonl. {run: path}, for the runs of
    `DECODER_RUNS` that logged something."""
    from cm3leon_jax.train import loop  # noqa: PLC0415

    work = paths.Workdir(workdir)
    written = {}
    for stage in DECODER_RUNS:
        train = loop.read_train_log(str(work.run(stage)), loop.TRAIN_LOG)
        evals = loop.read_train_log(str(work.run(stage)), loop.EVAL_LOG)
        panels: dict[str, dict[str, plots.Series]] = {}
        steps = sorted(s for s, entry in train.items() if "loss" in entry)
        if steps:
            panels["training loss"] = {"train": (steps, [train[s]["loss"] for s in steps])}
        keys = sorted({k for entry in evals.values() for k in entry
                       if k.endswith(VALIDATION_LOSS) and k.count("/") == 1})
        if keys:
            panels["validation loss"] = {
                key.split("/")[0]: ([s for s in sorted(evals) if key in evals[s]],
                                    [evals[s][key] for s in sorted(evals) if key in evals[s]])
                for key in keys}
        if not panels:
            continue
        os.makedirs(out_dir, exist_ok=True)
        markers = {name: "-o" for name in panels.get("validation loss", {})}
        path = plots.line_plot(os.path.join(out_dir, f"{stage}_curves.png"), {}, panels=panels,
                               title=f"{stage}: {len(steps)} logged steps, {len(evals)} evals",
                               xlabel="step", ylabel="loss", size=(5.0, 3.4), styles=markers)
        written[stage] = path
    return written


EVAL_SAMPLES_SHOWN = 6  # the newest grids of each run


def eval_samples(workdir: str, out_dir: str) -> list[tuple[str, str]]:
    """The text-to-image grids the training loop wrote to TensorBoard at its evals (a row per
    validation caption: its real image, then the samples), as PNGs in `out_dir`:
    [(path, caption)], each run's newest last."""
    import tensorflow as tf  # noqa: PLC0415 - reads the event files

    from cm3leon_jax.train import samples  # noqa: PLC0415

    work = paths.Workdir(workdir)
    found = []
    for stage in DECODER_RUNS:
        events = paths.tensorboard_of(work.run(stage))
        if not events.exists():
            continue
        grids = {}
        for path in sorted(events.glob("events.out.tfevents.*")):
            for record in tf.data.TFRecordDataset(str(path)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    if value.tag == samples.TEXT_TO_IMAGE_TAG:  # [width, height, PNG, ...] strings
                        grids[event.step] = tf.make_ndarray(value.tensor)[2]
        for step in sorted(grids)[-EVAL_SAMPLES_SHOWN:]:
            os.makedirs(out_dir, exist_ok=True)
            png = os.path.join(out_dir, f"{stage}_samples_{step}.png")
            with open(png, "wb") as handle:
                handle.write(grids[step])
            found.append((png, f"{stage}: eval samples at step {step} (a row per caption: real, then samples)"))
    return found


def sample_grids(workdir: str) -> list[tuple[str, str]]:
    """The PNG grids a workdir holds: the VQ-GAN's reconstructions, evaluate's, the demo's and
    any a run wrote. [(path, caption)], in that order."""
    work = paths.Workdir(workdir)
    found = []
    if work.reconstructions.exists():
        found.append((str(work.reconstructions), "VQ-GAN reconstructions"))
    for directory, what in ((work.evaluation, "evaluate"), (work.demo, "demo"),
                            *((work.run(stage), stage) for stage in DECODER_RUNS)):
        if directory.exists():
            found += [(str(p), f"{what}: {p.stem}") for p in sorted(directory.glob("*.png"))]
    return found


def data_card(workdir: str) -> str:
    path = paths.Workdir(workdir).data_card_markdown
    if path.exists():
        return path.read_text()
    return (f"No data card (`{path}`): `python -m cm3leon_jax.data.prepare` writes it with the "
            "prepared data (sources, licences, removals, counts).")


def model_card(workdir: str, generator: Optional[Any]) -> str:
    from cm3leon_jax.export import model_card as card  # noqa: PLC0415

    if generator is None:
        return "No model is loaded, so there is no model card."
    return card.run_card(generator.model_cfg, generator.stage, generator.step, workdir)
