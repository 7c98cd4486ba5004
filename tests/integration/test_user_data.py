"""A user's own pictures end to end: the README's user-data commands as written (with smaller
sizes appended), on a folder of photo-like pictures that no `shapes` verifier can read.

One module-scoped run of the stage-by-stage chain (tokenizers -> retrieval -> prepare -> pretrain ->
SFT -> evaluate), then fine-tuning that model on a second folder with its tokenizers kept; the
tests read what each step wrote and check the refusals a user meets (wrong image size, another
vocabulary, a workdir with no model).
"""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from user_folder import write_folder
import locations

REPO = locations.ROOT
MARK = "<!-- user-data-commands -->"

# Appended to every command that takes the config: minutes become seconds (32-px pictures, a
# few steps per stage). Later flags win, so the README's own flags stay as written.
SMALL = ("--config.data.image_size=32 --config.vqgan_train.num_steps=20 "
         "--config.vqgan_train.warmup_steps=2 --config.retrieval.train_steps=10 "
         "--config.retrieval.warmup_steps=2 --config.retrieval.batch_size=16 "
         "--config.retrieval.embed_batch_size=64 --config.train.steps=3 "
         "--config.train.warmup_steps=1 --config.train.eval_batches=1 "
         "--config.prepare.num_shards=2")


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split(MARK, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines() if line.strip()]


def _env() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"  # one device: faster here
    return env


def run_command(line: str, paths: dict[str, pathlib.Path], extra: str = "",
                check: bool = True) -> subprocess.CompletedProcess:
    """One README line with W, W2, my_data, new_data replaced by `paths`, `extra` appended."""
    words = []
    for word in shlex.split(line):
        for name, path in paths.items():
            word = re.sub(rf"(?<![\w/]){name}(?=$|/)", str(path), word)
            word = re.sub(rf"=({name})(?=$|/)", f"={path}", word)
        words.append(word)
    if "--config" in words:
        words += shlex.split(SMALL)
    words += shlex.split(extra)
    assert words[0] == "python"
    done = subprocess.run([sys.executable, *words[1:]], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    if check:
        assert done.returncode == 0, f"{' '.join(words)}\n{done.stdout[-3000:]}\n" \
                                     f"{done.stderr[-5000:]}"
    return done


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_data")
    paths = {"W2": root / "w2", "W": root / "w", "my_data": root / "my_data",
             "new_data": root / "new_data"}
    write_folder(paths["my_data"], 160, seed=0)
    write_folder(paths["new_data"], 100, seed=1, broken=False)
    outputs = {}
    commands = readme_commands()
    for index, line in enumerate(commands):
        extra = "--num_examples 4" if "cm3leon_jax.evaluate" in line else ""
        if "cm3leon_jax.demo" in line:
            extra = "--config.demo.stages='(\"data\",)'"  # the chain itself runs stage by stage
        outputs[index] = run_command(line, paths, extra)
    return paths, commands, outputs


def test_readme_lists_the_whole_chain_and_the_fine_tuning():
    commands = readme_commands()
    stages = [re.search(r"-m (\S+)", line).group(1) for line in commands]
    assert stages[0] == "cm3leon_jax.demo"
    for stage in ("tokenizers.train_all", "retrieval.train_encoder", "data.prepare", "pretrain",
                  "sft", "evaluate"):
        assert f"cm3leon_jax.{stage}" in stages
    assert any("init_from=W" in line and "new_data" in line for line in commands)


def test_chain_on_a_user_folder_reports_what_applies(chain):
    paths, _, outputs = chain
    metrics = json.loads((paths["W"] / "metrics.json").read_text())
    vq = metrics["vqgan"]
    assert vq["psnr_db"] > 5 and 0 < vq["ssim"] <= 1
    assert "verifier_exact_match" not in vq and vq["verifier"].startswith("no verifier for this")
    assert metrics["sft_tasks"]["left_out"].keys() == {"vqa", "editing"}
    assert set(metrics["sft_tasks"]["applied"]) == {"text_to_image", "captioning"}
    evaluation = metrics["evaluate"]
    assert evaluation["data_source"] == "folder"
    assert evaluation["tokenizer"]["psnr_db"] > 5
    t2i = evaluation["text2image"]
    assert t2i["fid"] >= 0 and "fid_real_vs_real_half" in t2i and "clip_score" in t2i
    assert "exact_match" not in t2i and "no verifier" in json.dumps(t2i["skipped_metrics"])
    caption = evaluation["caption"]
    assert 0 <= caption["cider_d"] and 0 <= caption["distinct_captions"] <= 1
    assert "no question/answer pairs" in evaluation["vqa"]["skipped"]
    assert "no edit pairs" in evaluation["edit"]["skipped"]
    recall = evaluation["retrieval"]
    assert 0 <= recall["text_to_image_recall@1"] <= 1 and recall["examples"] == 4
    printed = "".join(o.stdout for o in outputs.values())
    assert "nan" not in printed.lower().replace("nanos", "")
    assert "left out: vqa" in printed


def test_fine_tuning_starts_from_the_trained_model_with_its_tokenizers(chain):
    paths, _, outputs = chain
    sft = [o for o in outputs.values() if "params from" in o.stdout]
    assert any(str(paths["W"]) in o.stdout for o in sft), [o.stdout[-500:] for o in sft]
    manifest = json.loads((paths["W2"] / "prepared" / "manifest.json").read_text())
    assert pathlib.Path(manifest["vocab"]) == paths["W"] / "tokenizers" / "vocab"
    metrics = json.loads((paths["W2"] / "metrics.json").read_text())
    assert metrics["sft"]["steps"] == 3 and "evaluate" in metrics


def test_refusals_name_the_problem(chain, tmp_path):
    paths, commands, _ = chain
    prepare_line = next(line for line in commands if "W2" in line and "data.prepare" in line)
    sft_line = next(line for line in commands if "W2" in line and "cm3leon_jax.sft" in line)
    # New data at another image size than the kept VQ-GAN reads.
    other = dict(paths, W2=tmp_path / "w3")
    done = run_command(prepare_line, other, "--config.data.image_size=64", check=False)
    assert done.returncode == 2 and "reads 32x32 images" in done.stderr
    assert "Traceback" not in done.stderr
    # Data prepared with other tokenizers than the model's.
    import shutil
    # Another VQ-GAN behind the same layout (its weights nudged): its ids mean other pictures.
    import jax
    import numpy as np
    from cm3leon_jax.tokenizers.image_tokenizer import ImageTokenizer
    from cm3leon_jax.vocab import Vocabulary
    vocab_other = tmp_path / "other_vocab"
    shutil.copytree(paths["W"] / "tokenizers" / "vocab", vocab_other)
    tokenizer = Vocabulary.load(vocab_other).image_tokenizer()
    nudged = ImageTokenizer(tokenizer.config, jax.tree.map(
        lambda x: np.asarray(x) * 1.01 if np.issubdtype(np.asarray(x).dtype, np.floating)
        else np.asarray(x), tokenizer.variables))
    nudged.save(tmp_path / "other_vqgan")
    layout = json.loads((vocab_other / "vocab.json").read_text())
    layout["image_tokenizer"] = str(tmp_path / "other_vqgan")
    (vocab_other / "vocab.json").write_text(json.dumps(layout))
    w4 = tmp_path / "w4"
    run_command(prepare_line, dict(paths, W2=w4),
                f"--config.prepare.vocab_dir={vocab_other}")
    done = run_command(sft_line, dict(paths, W2=w4), check=False)
    assert done.returncode == 2 and "another vocabulary" in done.stderr
    assert "Traceback" not in done.stderr
    # A model directory that is not there.
    done = run_command(sft_line, dict(paths, W2=w4, W=tmp_path / "nothing"), check=False)
    assert done.returncode == 2 and "no such directory" in done.stderr
    assert "Traceback" not in done.stderr
