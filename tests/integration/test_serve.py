"""The web page (`python -m cm3leon_jax.serve`): every task and every bad input through gradio's own
client against a server started on localhost, and a real browser (headless Chromium) that types a
prompt, presses generate and waits for the pictures.

The workdir is `tiny_stack.random_model_project` (random 2-layer models: the page's plumbing is
under test, not the model) with a 6-example `shapes` test split, a metrics.json, training and eval
logs, an evaluate grid and a data card, so every part of "the run" tab has something to show.
"""

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

import locations
import tiny_stack

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

REPO = locations.ROOT
PROMPT = "a large red circle at the top left"
SAMPLING = (2, 3.0, 0.9, 1.0, False, 0, False)  # samples, CFG, top-p, temperature, CD-K, seed, up
DATA_CARD_LINE = "Data card of the serve test"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _eval_sample_grid() -> np.ndarray:
    """A training-time sample grid (`train/samples.py`'s layout): 2 captions x (real + 3)."""
    from cm3leon_jax.train import samples  # noqa: PLC0415

    rng = np.random.default_rng(0)
    return samples.sample_grid(rng.integers(0, 256, (2, 32, 32, 3), np.uint8),
                               rng.integers(0, 256, (2, 3, 32, 32, 3), np.uint8))


def _write_run_records(root: pathlib.Path) -> None:
    """What training, evaluate and prepare leave in a workdir, written by their own writers."""
    from cm3leon_jax import results, visualize  # noqa: PLC0415
    from cm3leon_jax.train import loop  # noqa: PLC0415

    for stage, losses in (("pretrain", (5.1, 4.2, 3.6)), ("sft", (3.0, 2.1))):
        run = root / stage
        for step, loss in enumerate(losses, 1):
            loop._log_line(run, step * 10, {"loss": loss}, loop.TRAIN_LOG)
        loop._log_line(run, 10 * len(losses), {"tokens": 640, "validation/loss": losses[-1] + .2},
                       loop.EVAL_LOG)
        results.write_metrics(str(root), stage, {"train_loss": losses[-1], "steps": 10 * len(losses),
                                                 "eval": {"validation": {"loss": losses[-1] + .2}}})
    from clu import metric_writers  # noqa: PLC0415

    from cm3leon_jax import paths  # noqa: PLC0415

    writer = metric_writers.create_default_writer(str(paths.tensorboard_of(root / "pretrain")))
    writer.write_images(30, {"samples/text_to_image": _eval_sample_grid()[None]})
    writer.close()
    grid = np.zeros((2, 32, 32, 3), np.uint8)
    grid[1] = 200
    (root / "evaluate").mkdir()
    visualize.save_grid(str(root / "evaluate" / "text2image.png"), list(grid), ["real", "generated"])
    (root / "DATA_CARD.md").write_text(f"# {DATA_CARD_LINE}\n\nshapes, CC0.\n")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    tiny_stack.random_model_project(root, data=dict(source="shapes", num_train=4, num_validation=4,
                                                    num_test=6, image_size=32, max_objects=1))
    _write_run_records(root)
    return root


@pytest.fixture(scope="module")
def server(workdir, tmp_path_factory):
    """The real command, on a free localhost port, with a 1 MB upload bound."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cm3leon_jax.serve", "--workdir", str(workdir), "--port",
             str(port), "--max_upload_mb", "1", "--max_image_pixels", str(1024 * 1024)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while "Running on local URL" not in log.read_text():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield {"url": url, "port": port, "process": process, "log": log}
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return Client(server["url"], verbose=False)


def _test_choices(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    return api["/caption"]["parameters"][1]["type"]["enum"]


def _refused(client, match, *args, api_name):
    with pytest.raises(Exception, match=match):
        client.predict(*args, api_name=api_name)


def test_every_task_through_the_api(client, tmp_path):
    gallery, summary, documents = client.predict(PROMPT, "auto", *SAMPLING, api_name="/text2image")
    assert len(gallery) == 2 and all(os.path.exists(item["image"]) for item in gallery)
    assert np.asarray(Image.open(gallery[0]["image"])).shape == (32, 32, 3)
    assert gallery[0]["caption"].startswith("#1 ") and "best first" in summary
    assert documents == []  # no retrieval index in this workdir

    choices = _test_choices(client)
    assert len(choices) == 7  # "none" and the 6 test examples
    text, summary, _ = client.predict(None, choices[1], "auto", api_name="/caption")
    assert isinstance(text, str) and "mean log-prob" in summary

    upload = tmp_path / "red.png"
    picture = np.full((48, 64, 3), 255, np.uint8)
    picture[8:24, 8:24] = (220, 30, 30)
    Image.fromarray(picture).save(upload)
    answer, summary = client.predict(handle_file(str(upload)), choices[0], "what colour is it?",
                                     api_name="/vqa")
    assert isinstance(answer, str) and "mean log-prob" in summary

    gallery, summary = client.predict(None, choices[2], "make it blue", *SAMPLING,
                                      api_name="/edit")
    assert [item["caption"] for item in gallery][0] == "source image" and len(gallery) == 3

    filled, _ = client.predict("a <mask> circle at the top left", api_name="/infill")
    assert filled.startswith("a ") and filled.endswith(" circle at the top left")


def test_the_run_tab_shows_curves_grids_figures_and_cards(client):
    record = client.predict(api_name="/run")
    assert sorted(record["curves"]) == ["pretrain", "sft"]  # no super-resolution run here
    curve = np.asarray(Image.open(record["curves"]["pretrain"]).convert("L"), np.float32)
    assert curve.shape[1] > 400 and curve.std() > 10  # a drawn plot, not an empty canvas
    assert [caption for _, caption in record["grids"]] == [
        "pretrain: eval samples at step 30 (a row per caption: real, then samples)",
        "evaluate: text2image"]
    written = np.asarray(Image.open(record["grids"][0][0]).convert("RGB"))
    assert np.array_equal(written, _eval_sample_grid())  # the training loop's grid, exactly
    figures, model_card, data_card = (record[k] for k in ("metrics", "model_card", "data_card"))
    assert "### sft" in figures and "| train_loss | 2.1 |" in figures
    assert "| eval/validation/loss | 2.3 |" in figures
    assert "sft model of" in model_card and "| layers | 2 |" in model_card
    assert DATA_CARD_LINE in data_card


def test_bad_input_is_a_message_and_the_server_goes_on(client, server, tmp_path):
    choices = _test_choices(client)
    _refused(client, "type a prompt first", "  ", "auto", *SAMPLING, api_name="/text2image")
    _refused(client, "give an image first", None, choices[0], "auto", api_name="/caption")
    fake = tmp_path / "fake.png"
    fake.write_text("this is not a picture")
    _refused(client, "not an image", handle_file(str(fake)), choices[0], "auto",
             api_name="/caption")
    big = tmp_path / "big.png"  # 2,000 x 2,000 of one colour: a small file, too many pixels
    Image.new("RGB", (2000, 2000), (0, 0, 255)).save(big)
    assert big.stat().st_size < 1_000_000
    _refused(client, "4,000,000 pixels, more than this page accepts", handle_file(str(big)),
             choices[0], "what is it?", api_name="/vqa")
    noise = tmp_path / "noise.png"  # over the 1 MB upload bound
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 700, 3), np.uint8)).save(noise)
    assert noise.stat().st_size > 1_000_000
    with pytest.raises(Exception):
        client.predict(handle_file(str(noise)), choices[0], "auto", api_name="/caption")
    _refused(client, "type a question first", None, choices[1], "", api_name="/vqa")
    _refused(client, "at least one <mask>", "no mask here", api_name="/infill")
    _refused(client, "no upsampler", PROMPT, "auto", 2, 3.0, 0.9, 1.0, False, 0, True,
             api_name="/text2image")
    assert server["process"].poll() is None
    gallery, _, _ = client.predict(PROMPT, "auto", *SAMPLING, api_name="/text2image")
    assert len(gallery) == 2
    assert "Traceback" not in server["log"].read_text()  # our refusals are messages only
    # A value outside a slider's range is refused by gradio itself (which logs it on the console).
    _refused(client, "less than minimum value", PROMPT, "auto", 2, 3.0, 0.0, 1.0, False, 0, False,
             api_name="/text2image")


def test_two_requests_at_once_both_finish(server):
    answers, errors = [], []

    def ask(seed):
        try:
            own = Client(server["url"], verbose=False)
            answers.append(own.predict(PROMPT, "off", 2, 3.0, 0.9, 1.0, False, seed, False,
                                       api_name="/text2image"))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
    threads = [threading.Thread(target=ask, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(answers) == 2 and all(len(a[0]) == 2 for a in answers)


def test_listens_on_localhost_only_and_makes_no_share_link(server):
    listening = set()
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and int(port, 16) == server["port"]:  # 0A: LISTEN
            listening.add(address)
    assert listening == {"0100007F"}  # 127.0.0.1, little-endian hex
    assert "gradio.live" not in server["log"].read_text()


def _in_process_client(workdir, stage=None):
    from cm3leon_jax.serve import page  # noqa: PLC0415
    from cm3leon_jax.serve.service import Service  # noqa: PLC0415

    blocks = page.build(Service(str(workdir), stage=stage))
    blocks.queue(default_concurrency_limit=1)
    _, url, _ = blocks.launch(server_name="127.0.0.1", server_port=_free_port(), share=False,
                              prevent_thread_lock=True, quiet=True, ssr_mode=False)
    return blocks, Client(url, verbose=False)


def test_a_pretrained_model_says_which_tasks_it_cannot_do(workdir, tmp_path):
    pretrained = tmp_path / "pretrained"
    shutil.copytree(workdir, pretrained, ignore=shutil.ignore_patterns("sft"))
    blocks, client = _in_process_client(pretrained)
    try:
        choices = _test_choices(client)
        _refused(client, "needs the instruction-tuned model", None, choices[1], "what is it?",
                 api_name="/vqa")
        _refused(client, "needs the instruction-tuned model", None, choices[1], "make it blue",
                 *SAMPLING, api_name="/edit")
        gallery, _, _ = client.predict(PROMPT, "auto", *SAMPLING, api_name="/text2image")
        assert len(gallery) == 2
    finally:
        blocks.close()


def test_a_workdir_without_a_model_says_which_command_to_run(tmp_path):
    blocks, client = _in_process_client(tmp_path)
    try:
        _refused(client, "has no trained model: train one with `python -m cm3leon_jax.demo",
                 PROMPT, "auto", *SAMPLING, api_name="/text2image")
        _refused(client, "has no trained model", "a <mask>", api_name="/infill")
        record = client.predict(api_name="/run")
        assert record["curves"] == {} and record["grids"] == []
        assert "No model is loaded" in record["model_card"]
        assert "No " in record["metrics"] and "No data card" in record["data_card"]
    finally:
        blocks.close()


def test_retrieved_documents_are_shown_as_caption_and_picture(workdir):
    from cm3leon_jax.data.input import layout  # noqa: PLC0415
    from cm3leon_jax.serve.service import Service  # noqa: PLC0415

    service = Service(str(workdir))
    vocab = service.generator.vocab
    codes = np.arange(np.prod(vocab.code_shape)) % vocab.codebook_size
    document = layout.Document(text=np.asarray(vocab.encode_text("a red circle"), np.int32),
                               image=(codes + vocab.image_offset).astype(np.int32))
    shown = service._documents(service.generator, [document])
    assert shown[0].label == "retrieved #1: a red circle"
    assert shown[0].image.shape == (32, 32, 3) and shown[0].image.dtype == np.uint8


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="no chromium / chromedriver (Debian: apt-get install chromium "
                           "chromium-driver; .ci/run installs them)")
def test_a_browser_types_a_prompt_and_gets_pictures(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support import expected_conditions  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    os.environ["SE_OFFLINE"] = "true"  # selenium must never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options,
                               service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        browser.get(server["url"])
        wait = WebDriverWait(browser, 180)
        box = wait.until(expected_conditions.element_to_be_clickable(
            (By.CSS_SELECTOR, "#prompt textarea")))
        box.send_keys(PROMPT)
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#samples img")) >= 4)
        wait.until(lambda b: all(b.execute_script("return arguments[0].complete && "
                                                  "arguments[0].naturalWidth > 0", img)
                                 for img in b.find_elements(By.CSS_SELECTOR, "#samples img")))
        shot = tmp_path / "page.png"
        browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 1000
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
