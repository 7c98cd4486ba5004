"""The learning-curve command: eval_log.jsonl of several runs -> one PNG, and its clear errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from cm3leon_jax import curves


def _run_dir(path, losses, accuracies):
    path.mkdir(parents=True)
    with (path / "eval_log.jsonl").open("w") as file:
        for i, (loss, accuracy) in enumerate(zip(losses, accuracies), start=1):
            file.write(json.dumps({"step": 10 * i, "tokens": 3072 * 10 * i,
                                   "validation/loss": loss,
                                   "samples/attribute_accuracy": accuracy}) + "\n")
    return path


def test_curves_png_has_a_line_per_run_and_a_panel_per_logged_figure(tmp_path):
    a = _run_dir(tmp_path / "a", [3.0, 2.5, 2.0], [0.1, 0.3, 0.5])
    b = _run_dir(tmp_path / "b", [3.2, 2.9, 2.7], [0.1, 0.2, 0.25])
    panels = curves.write(curves.parse_runs([f"with={a}", f"without={b}"]),
                          ["validation/loss", "samples/attribute_accuracy", "absent/figure"],
                          str(tmp_path / "c.png"))
    assert set(panels) == {"validation/loss", "samples/attribute_accuracy"}
    tokens, values = panels["validation/loss"]["without"]
    assert list(tokens) == [30720, 61440, 92160] and list(values) == [3.2, 2.9, 2.7]
    import PIL.Image
    image = np.asarray(PIL.Image.open(tmp_path / "c.png").convert("L"))
    assert image.shape[1] > image.shape[0] and image.std() > 10  # two panels, drawn


def test_curves_command_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    # The command prints the refusal as one line and exits 2 (one process; the rest in-process).
    done = subprocess.run([sys.executable, "-m", "cm3leon_jax.curves", "--run",
                           f"x={tmp_path / 'empty'}", "--out", str(tmp_path / "o.png")],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "has no eval_log.jsonl" in done.stderr and "Traceback" not in done.stderr
    for specs, message in ((["nolabel"], "expected label=run directory"),
                           ([], "at least one --run")):
        with pytest.raises(ValueError, match=message):
            curves.parse_runs(specs)
    with pytest.raises(ValueError, match="none of"):
        curves.write({"a": str(_run_dir(tmp_path / "a", [1.0], [0.5]))}, ["other"],
                     str(tmp_path / "x.png"))
