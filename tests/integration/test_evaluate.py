"""Evaluation: Fréchet distance against closed forms, CIDEr-D against a hand computation, the
attribute / answer scoring, the results table, and the command line on a tiny random workdir.

Tiny random models only (d_model 32, 2 layers, 3 test examples): the file runs in about a minute
on a 2-core CPU, most of it the one command-line run.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.linalg

from cm3leon_jax.evaluation import attributes, cider, fid, table, tasks, vqa

import tiny_stack
import locations

REPO = locations.ROOT
TINY_DATA = dict(source="shapes", image_size=32, num_train=4, num_validation=2, num_test=4,
                 seed=0)


# ------------------------------------------------------------------------------------ FID --

def _spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T + (0 if rank else 0.5 * np.eye(d))


def test_frechet_distance_of_two_diagonal_gaussians_has_its_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    # W2² of diagonal Gaussians: |mu1 - mu2|² + sum (sqrt(a) - sqrt(b))²  = 5 + 1 + 1 + 0.
    assert fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(7.0)
    assert fid.frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(0.0,
                                                                                        abs=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_and_sample_estimates():
    rng = np.random.default_rng(0)
    for d in (2, 5, 12):
        s1, s2 = _spd(rng, d), _spd(rng, d)
        m1, m2 = rng.normal(size=d), rng.normal(size=d)
        want = (m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(
            scipy.linalg.sqrtm(s1 @ s2).real)
        assert fid.frechet_distance(m1, s1, m2, s2) == pytest.approx(want, rel=1e-7)
    # Samples of the two Gaussians: the estimate converges to the closed form.
    s1, s2 = _spd(rng, 3), _spd(rng, 3)
    m1, m2 = np.zeros(3), np.ones(3)
    x = rng.multivariate_normal(m1, s1, size=200_000)
    y = rng.multivariate_normal(m2, s2, size=200_000)
    assert fid.fid(x, y) == pytest.approx(fid.frechet_distance(m1, s1, m2, s2), rel=0.02)
    # Rank-deficient covariances (fewer samples than dimensions) stay real and >= 0.
    few = rng.normal(size=(4, 10))
    assert fid.fid(few, few) == pytest.approx(0.0, abs=1e-9)
    assert np.isfinite(fid.fid(few, rng.normal(size=(5, 10)) + 1)) and \
        fid.fid(few, rng.normal(size=(5, 10)) + 1) > 0
    with pytest.raises(ValueError, match="n >= 2"):
        fid.statistics(np.zeros((1, 3)))


def test_feature_extractors_give_one_vector_per_image():
    from cm3leon_jax.retrieval import byte_tokenizer, encoder  # noqa: PLC0415

    arch = encoder.ClipArchitecture(
        text_vocab_size=byte_tokenizer.VOCAB_SIZE, text_max_length=16, text_width=32,
        text_layers=1, text_heads=2, text_mlp_dim=64, eos_token_id=byte_tokenizer.EOS_ID,
        image_size=16, patch_size=8, vision_width=24, vision_layers=1, vision_heads=2,
        vision_mlp_dim=48, projection_dim=16)
    rng = np.random.default_rng(0)  # random weights from the shapes: no init compilation
    params = jax.tree.map(lambda leaf: (rng.normal(size=leaf.shape) * 0.1).astype(leaf.dtype),
                          jax.eval_shape(lambda key: encoder.init_params(arch, key),
                                         jax.random.key(0)))
    biencoder = encoder.BiEncoder(arch, params, "test")
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    extractor = fid.feature_extractor(biencoder, None, batch_size=4)
    features = extractor(images)
    assert extractor.name == fid.BIENCODER and features.shape == (5, 24)
    np.testing.assert_allclose(extractor(images[:2]), features[:2], atol=1e-5)  # padding-free


# ---------------------------------------------------------------------------------- CIDEr --

def test_cider_d_on_a_hand_computed_case():
    # Two images, one reference each. df("a") = 2 -> weight log 2 - log 2 = 0; every other
    # n-gram of a reference has df 1 -> weight log 2. The identical caption's vectors are equal:
    # cosine 1 for n = 1, 2, 3, and 0 for n = 4 (no 4-grams) -> mean 0.75, x 10 = 7.5.
    # The unrelated caption shares no n-gram with its reference: 0.
    mean, per_image = cider.cider_d(["a red circle", "green cross"],
                                    [["a red circle"], ["a blue square"]])
    np.testing.assert_allclose(per_image, [7.5, 0.0])
    assert mean == pytest.approx(3.75)
    # Punctuation and case do not matter; repeating a word earns nothing (CIDEr-D's clipping)
    # and a length mismatch costs (the Gaussian penalty).
    assert cider.cider_d(["A red circle."], [["a red circle"]])[0] == 0.0  # one image: 0
    _, scores = cider.cider_d(["A red, circle.", "a red red red circle circle", "x"],
                              [["a red circle"], ["a red circle"], ["a blue square"]])
    assert scores[0] > scores[1] > 0 and scores[2] == 0.0
    with pytest.raises(ValueError, match="reference"):
        cider.cider_d(["a"], [[]])


# ------------------------------------------------------------------- attributes and VQA --

RED_CIRCLE = ("circle", "red", "small", 0)
BLUE_SQUARE = ("square", "blue", "large", 4)


def test_caption_attribute_words_and_exact_match():
    good = attributes.caption_scores(
        "a picture of a small red circle at the top left and a large blue square in the centre",
        [RED_CIRCLE, BLUE_SQUARE])
    assert good["attributes"] == 1.0 and good["exact"] == 1.0 and good["size"] == 1.0
    # "at the top" must not count as "top left"; word presence ignores binding ("blue circle").
    partial = attributes.caption_scores("a large blue circle at the top", [RED_CIRCLE])
    assert partial["colour"] == 0.0 and partial["shape"] == 1.0 and partial["position"] == 0.0
    assert partial["attributes"] == pytest.approx(1 / 3) and partial["exact"] == 0.0
    swapped = attributes.caption_scores(
        "a small blue circle at the top left and a large red square in the centre",
        [RED_CIRCLE, BLUE_SQUARE])
    assert swapped["attributes"] == 1.0 and swapped["exact"] == 0.0 and swapped["parsed"] == 1.0
    assert attributes.caption_scores("no.", [RED_CIRCLE])["parsed"] == 0.0
    refs = attributes.references([RED_CIRCLE, BLUE_SQUARE])
    assert len(refs) == 4 and refs[1] == ("there is a small red circle at the top left and a "
                                          "large blue square in the centre")


def test_object_scores_penalise_missing_wrong_and_extra_objects():
    assert attributes.object_scores([BLUE_SQUARE, RED_CIRCLE], [RED_CIRCLE, BLUE_SQUARE]) == {
        "shape": 1.0, "colour": 1.0, "size": 1.0, "position": 1.0, "attributes": 1.0,
        "count": 1.0}
    wrong_colour = attributes.object_scores([("circle", "green", "small", 0)], [RED_CIRCLE])
    assert wrong_colour["colour"] == 0.0 and wrong_colour["attributes"] == 0.75
    missing = attributes.object_scores([RED_CIRCLE], [RED_CIRCLE, BLUE_SQUARE])
    assert missing["attributes"] == 0.5 and missing["shape"] == 0.5 and missing["count"] == 0.0
    extra = attributes.object_scores([RED_CIRCLE, BLUE_SQUARE], [RED_CIRCLE])
    assert extra["shape"] == 1.0 and extra["attributes"] == 0.5
    assert attributes.object_scores([], [RED_CIRCLE])["attributes"] == 0.0


def test_vqa_answer_normalisation():
    assert vqa.correct("Three.", "three") and vqa.correct("3", "three")
    assert vqa.correct("the top left.", "top left") and vqa.correct("Center", "centre")
    assert not vqa.correct("top", "top left") and not vqa.correct("no.", "yes")
    assert vqa.question_type("how many objects are there?") == "count"
    assert vqa.question_type("is there a red circle?") == "yes_no"


def test_settings_and_results_table_markdown(tmp_path):
    with pytest.raises(ValueError, match="decoding"):
        tasks.EvalSettings(decoding="beam").check()
    with pytest.raises(ValueError, match="num_examples"):
        tasks.EvalSettings(num_examples=1).check()
    cdk = tasks.EvalSettings(decoding="cd_k", cfg_scale=3.0).image_sampling()
    assert cdk.cd_k == 8 and cdk.top_p == 1.0 and cdk.cfg_scale == 3.0
    settings = tasks.EvalSettings(num_examples=4)
    row = dict(stage="sft", retrieval=False, decoding="cd_k", cfg_scale=3.0, fid=1.234,
               fid_real_vs_real_half=0.5, exact_match=0.25, attribute_accuracy=0.5,
               clip_score=None)
    result = {"rows": {"text2image": [row], "caption": [dict(
        stage="sft", retrieval=True, cider_d=1.5, attribute_accuracy=0.5, exact_match=0.0)],
        "vqa": [dict(stage="sft", questions=8, accuracy=0.125, count_accuracy=0.5)],
        "edit": [dict(stage="sft", decoding="top_p", cfg_scale=1.0, exact_match=0.0,
                      attribute_accuracy=0.2, copy_attribute_accuracy=0.75)]},
        "notes": ["pretrain: no checkpoint"], "models": {"sft": {"step": 7},
                                                         "fid_features": "test features"},
        "settings": __import__("dataclasses").asdict(settings), "seconds": 60.0}
    text = table.markdown(result, "/w", "python -m cm3leon_jax.evaluate --table")
    assert "| sft | off | CD-K (k=8, α=0.1) | 3 | 1.23 | 0.50 | 0.250 | 0.500 | – |" in text
    assert "| sft | on | 1.500 | 0.500 | 0.000 |" in text
    assert "### Text-guided editing (SFT)" in text and "note: pretrain: no checkpoint" in text
    path = tmp_path / "RESULTS.md"
    table.write_markdown(path, "PLACEHOLDER")
    path.write_text("# Mine\n\nkept above\n\n" + path.read_text().split("\n\n", 2)[2]
                    + "\nkept below\n")
    table.write_markdown(path, text)
    written = path.read_text()
    assert written.startswith("# Mine\n\nkept above") and written.endswith("kept below\n")
    assert "PLACEHOLDER" not in written and text.rstrip() in written


# ------------------------------------------------------------------------- command line --

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    tiny_stack.random_model_project(root, model=dict(max_seq_len=256), data=TINY_DATA)
    return root


def test_untrained_workdir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cm3leon_jax.pretrain"):
        tasks.Evaluator(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cm3leon_jax.pretrain"):
        tasks.evaluate(str(tmp_path), tasks.EvalSettings(num_examples=2))


def test_pretrained_model_skips_sft_only_tasks(project):
    evaluator = tasks.Evaluator(str(project), stage="pretrain", num_examples=2,
                                retrieval_index=False)
    assert evaluator.features.name == fid.VQGAN  # no retrieval encoder in this workdir
    figures = evaluator.run(tasks.EvalSettings(num_examples=2, tasks=("vqa", "edit")))
    assert "skipped" in figures["vqa"] and "skipped" in figures["edit"]
    assert figures["stage"] == "pretrain" and figures["fid_features"] == fid.VQGAN


def test_command_line_writes_every_task_to_metrics_json(project):
    command = [sys.executable, "-m", "cm3leon_jax.evaluate", "--workdir", str(project),
               "--num_examples", "3", "--questions_per_example", "1", "--grid_examples", "2",
               "--cfg_scale", "2", "--seed", "1", "--batch_size", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((project / "metrics.json").read_text())["evaluate"]
    assert metrics["stage"] == "sft" and metrics["num_examples"] == 3 and metrics["seed"] == 1
    assert metrics["settings"]["cfg_scale"] == 2.0
    for key in ("fid", "exact_match", "attribute_accuracy", "colour_accuracy",
                "vqgan_ceiling_attribute_accuracy"):
        assert isinstance(metrics["text2image"][key], float), key
    assert 0 <= metrics["caption"]["cider_d"] and "attribute_accuracy" in metrics["caption"]
    # 3 scenes: 1/3 when one sentence serves all, up to 1 (an untrained model may repeat itself).
    assert metrics["caption"]["distinct_captions"] in (1 / 3, 2 / 3, 1.0)
    assert metrics["vqa"]["questions"] == 3 and 0 <= metrics["vqa"]["accuracy"] <= 1
    assert "copy_attribute_accuracy" in metrics["edit"]
    assert (project / "evaluate" / "text2image.png").exists()
    assert (project / "evaluate" / "edit.png").exists()
    assert (project / "evaluate" / "caption.png").exists()
    assert list((project / "evaluate" / "tensorboard").glob("events.out.tfevents.*"))
