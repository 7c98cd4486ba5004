"""Learning curves of training runs as one PNG: eval figures against training tokens.

    python -m cm3leon_jax.curves --run "with retrieval=W/pretrain" \\
        --run "without retrieval=W2/pretrain" --out docs/images/level3_curves.png

Each `--run` is `label=run directory` (a stage's directory, which holds eval_log.jsonl: one line
per eval, written by the training loop). One panel per figure in `--figures` that some run logged
(default: validation loss with and without the retrieved documents, and the verifier on the
eval samples), one line per run. The figures are also printed as a table, so a terminal without
an image viewer still shows the curves' numbers.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from cm3leon_jax import plots
from cm3leon_jax.train import loop

_RUNS = flags.DEFINE_multi_string("run", [], "label=run directory (holding eval_log.jsonl).")
_OUT = flags.DEFINE_string("out", "curves.png", "PNG to write.")
_FIGURES = flags.DEFINE_list(
    "figures", "validation/loss,validation_no_retrieval/loss,samples/attribute_accuracy,"
    "samples/exact_match", "Keys of eval_log.jsonl to plot, one panel each.")
_TITLE = flags.DEFINE_string("title", "", "Title over the panels.")

TITLES = {
    "validation/loss": "validation loss, retrieved documents in context",
    "validation_no_retrieval/loss": "validation loss, documents alone",
    "samples/attribute_accuracy": "text-to-image samples: verifier attributes",
    "samples/exact_match": "text-to-image samples: verifier exact match",
}


def parse_runs(specs: list[str]) -> dict[str, str]:
    """{label: run directory} from `label=dir` strings; ValueError naming a bad one."""
    runs = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"--run {spec!r}: expected label=run directory")
        if not os.path.exists(os.path.join(path, loop.EVAL_LOG)):
            raise ValueError(f"--run {spec!r}: {path} has no {loop.EVAL_LOG} (is it a stage's "
                             "directory, such as W/pretrain, of a run that reached an eval?)")
        runs[label] = path
    if not runs:
        raise ValueError("give at least one --run label=run directory")
    return runs


def curves(runs: dict[str, str], figures: list[str]) -> dict[str, dict[str, plots.Series]]:
    """{figure: {label: (tokens, values)}} for the figures some run logged."""
    panels: dict[str, dict[str, plots.Series]] = {}
    for label, path in runs.items():
        log = loop.read_train_log(path, loop.EVAL_LOG)
        for figure in figures:
            points = [(entry["tokens"], entry[figure]) for _, entry in sorted(log.items())
                      if figure in entry]
            if points:
                tokens, values = zip(*points)
                panels.setdefault(figure, {})[label] = (tokens, values)
    return panels


def write(runs: dict[str, str], figures: list[str], out: str, title: str = "") -> dict:
    panels = curves(runs, figures)
    if not panels:
        raise ValueError(f"none of {figures} is in the runs' {loop.EVAL_LOG}")
    plots.line_plot(out, {}, title=title, xlabel="training tokens", ylabel="",
                    styles={label: "o-" for label in runs},
                    panels={TITLES.get(f, f): series for f, series in panels.items()})
    return panels


def main(argv: list[str]) -> None:
    del argv
    try:
        runs = parse_runs(_RUNS.value)
        panels = write(runs, _FIGURES.value, _OUT.value, _TITLE.value)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for figure, series in panels.items():
        print(figure)
        for label, (tokens, values) in series.items():
            print(f"  {label}: " + ", ".join(f"{t / 1e6:.2f}M {v:.3f}"
                                             for t, v in zip(tokens, values)))
    print(f"[curves] {len(panels)} panels -> {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
