"""`benchmarks/accelerator.py --dry_run`: the first-device command runs end to end on CPU."""

import json
import os
import subprocess
import sys
import locations

REPO = locations.ROOT


def test_dry_run_measures_every_figure_and_the_torch_reference(tmp_path):
    out = tmp_path / "accelerator.json"
    env = dict(os.environ, PYTHONPATH=str(REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    done = subprocess.run([sys.executable, "benchmarks/accelerator.py", "--dry_run",
                           "--torch_threads=1", f"--out={out}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["backend"] == "cpu" and result["dry_run"]
    assert set(result["train"]) == {"xla", "splash"}  # what this backend runs
    for figures in result["train"].values():
        assert figures["tokens_per_s"] > 0 and 0 < figures["mfu"] < 1.5
    assert set(result["decode"]) == {"1", "16"}
    assert all(f["tokens_per_s"] > 0 for f in result["decode"].values())
    best = result["torch"]["best"]
    # Every setting that can be the reference's best is timed and kept (benchmarks/reference.py).
    assert set(result["torch"]["settings"]) == {"1_threads_eager", "1_threads_sdpa"}
    assert set(result["torch"]["best_setting"]) == set(best)
    assert best["train_tokens_per_s"] > 0 and best["decode_batch16_tokens_per_s"] > 0
    assert "| decode, batch 16 |" in done.stdout
