"""Generate with a trained model: text-to-image, captioning, VQA, editing, text infilling.

    python -m cm3leon_jax.generate --workdir W --task text2image \\
        --prompt "a red circle at the top left" --out grid.png
    python -m cm3leon_jax.generate --workdir W --task caption --image x.png
    python -m cm3leon_jax.generate --workdir W --task vqa --image x.png \\
        --question "what colour is the circle?"
    python -m cm3leon_jax.generate --workdir W --task edit --image x.png \\
        --instruction "make the circle green" --out edited.png
    python -m cm3leon_jax.generate --workdir W --task infill \\
        --prompt "a <mask> circle at the top left"
    python -m cm3leon_jax.generate --workdir W --task text2image --upscale \\
        --prompt "a red circle at the top left" --out grid.png
    python -m cm3leon_jax.generate --workdir W --task upscale --image x.png --out up.png

The model is W/sft when it has a checkpoint, else W/pretrain (`--stage` chooses); its config comes
from the checkpoint (or `--config experiments/<file>.py`), the vocabulary from
W/prepared/manifest.json (or W/tokenizers/vocab, or an imported W/vocab). Prompts follow the chosen
stage's training layout and SFT templates (`cm3leon_jax/generation/prompts.py`). When W has a
retrieval index, text-to-image and captioning prompts of the pretrained model get 2 retrieved
documents in front, as in its training (`--retrieval off` or `--no_retrieval` turns that off); the
SFT model's prompts get none unless `--retrieval on` (its instruction examples never had any, and
with them the demo's SFT model answered "no." instead of captioning).

Images are written as one PNG grid (`--out`, default W/generated/<task>.png): N samples best first
(reranked by the retrieval encoder's text-image score when W has one, else by the model's mean
log-probability), each labelled with the prompt and its score; editing shows the source image first.
Text results are printed, one line per sample; `--json` prints one JSON object instead.

Super-resolution (`python -m cm3leon_jax.superres` trains it into W/superres, or
`--upsampler DIR`): `--upscale` runs text-to-image at base resolution, then the upsampler on each
sample's codes (refused, with the reason, when the upsampler was trained on another base VQ-GAN);
the grid shows each base image next to its upscaled one. `--task upscale --image x.png` needs no
base model: the image is resized to base resolution, encoded with the upsampler's low-res VQ-GAN,
its high-res codes generated (exactly h*w, constrained; greedy unless `--temperature`) and decoded
with the high-res VQ-GAN; the grid shows the input, bicubic and the upsampler's output.

Sampling defaults per task: images temperature 1, top-p 1, CFG scale 3 (the paper's alpha ~ 3),
4 samples; text greedy (temperature 0), 1 sample. Every flag overrides them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

from absl import app, flags

# The shared `--config` / `--workdir` flags (defined once for every entry point: modules such as
# the retriever import `cli` too, and absl refuses a flag defined twice). Here `--config` is
# optional: by default the model's config is the one saved in its checkpoint.
from cm3leon_jax import cli, paths  # cli also defines --config and --workdir
from cm3leon_jax.config import IMAGE_SAMPLING, ConfigError, SamplingConfig

TASKS = ("text2image", "caption", "vqa", "edit", "infill", "upscale")
IMAGE_TASKS = ("text2image", "edit", "upscale")

FLAGS = flags.FLAGS
_TASK = flags.DEFINE_enum("task", "text2image", TASKS, "What to generate.")
_PROMPT = flags.DEFINE_string("prompt", None, "text2image: the caption; infill: text with <mask>.")
_IMAGE = flags.DEFINE_string("image", None, "caption / vqa / edit: the input image file.")
_QUESTION = flags.DEFINE_string("question", None, "vqa: the question.")
_INSTRUCTION = flags.DEFINE_string("instruction", None, "edit: the edit instruction.")
_OUT = flags.DEFINE_string("out", None,
                           "PNG grid for image tasks (default W/generated/<task>.png).")
_STAGE = flags.DEFINE_enum("stage", None, ["pretrain", "sft"],
                           "Which model: default sft if W/sft has a checkpoint, else pretrain.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Samples per prompt (images: 4, text: 1).")
_TEMPERATURE = flags.DEFINE_float(
    "temperature", None, f"0 = greedy (images: {IMAGE_SAMPLING.temperature:g}, text and upscale: 0).")
_TOP_P = flags.DEFINE_float(
    "top_p", None, f"Nucleus sampling mass, 1 = off (images: {IMAGE_SAMPLING.top_p:g}, text: 1).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
_CFG_SCALE = flags.DEFINE_float("cfg_scale", None,
                                "Classifier-free guidance alpha for image tokens "
                                f"(default {IMAGE_SAMPLING.cfg_scale:g}; 1 = off).")
_CD_K = flags.DEFINE_integer("cd_k", 0, "Contrastive decoding TopK: k (0 = off).")
_CD_ALPHA = flags.DEFINE_float("cd_alpha", 0.1, "Contrastive decoding TopK: alpha.")
_RETRIEVAL = flags.DEFINE_enum("retrieval", "auto", ["auto", "on", "off"],
                               "Retrieved documents before text2image / caption prompts: auto = "
                               "on for the pretrained model when W has an index, off for SFT.")
_NO_RETRIEVAL = flags.DEFINE_bool("no_retrieval", False, "Same as --retrieval off.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (the same seed gives the same samples).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Text tasks: longest output.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Rows per compiled decoding call.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object with every result.")
_UPSCALE = flags.DEFINE_bool("upscale", False,
                             "text2image: upsample each image with the super-resolution stage.")
_UPSAMPLER = flags.DEFINE_string("upsampler", None,
                                 "--upscale / --task upscale: the superres run directory (or a "
                                 "workdir holding superres/); default W.")


class UsageProblem(ValueError):
    """A flag combination that cannot work; reported as one line."""


def _require(value: Optional[str], flag: str, task: str) -> str:
    if not value:
        raise UsageProblem(f"--task {task} needs --{flag}")
    return value


def sampling_from_flags(task: str):
    """The sampling of `--task`: the flags given, `config.IMAGE_SAMPLING` for image tokens,
    greedy text."""
    image = task in IMAGE_TASKS

    def given(flag, default):
        return flag.value if flag.value is not None else default

    top_p = given(_TOP_P, IMAGE_SAMPLING.top_p if image else 1.0)
    if task == "upscale":  # the upsampler has no unconditional stream; greedy by default
        if (_CFG_SCALE.value not in (None, 1.0)) or _CD_K.value:
            raise UsageProblem("--cfg_scale / --cd_k do not apply to --task upscale")
        return _checked(SamplingConfig(temperature=given(_TEMPERATURE, 0.0), top_k=_TOP_K.value,
                                       top_p=given(_TOP_P, 1.0)))
    temperature = given(_TEMPERATURE, IMAGE_SAMPLING.temperature if image else 0.0)
    cfg_scale = given(_CFG_SCALE, IMAGE_SAMPLING.cfg_scale if image else 1.0)
    if not image and (cfg_scale != 1.0 or _CD_K.value):
        raise UsageProblem(f"--cfg_scale / --cd_k guide image tokens; --task {task} writes text")
    return _checked(SamplingConfig(temperature=temperature, top_k=_TOP_K.value, top_p=top_p,
                                   cfg_scale=cfg_scale, cd_k=_CD_K.value,
                                   cd_alpha=_CD_ALPHA.value))


def _checked(sampling: SamplingConfig) -> SamplingConfig:
    """`sampling`, or a usage error naming the flag (`--top_p=...`) that is out of range."""
    try:
        return sampling.check()
    except ConfigError as error:
        raise UsageProblem(str(error).replace("config.sampling.", "--")) from None


def _read_image(path: str, size: int):
    from cm3leon_jax.data.sources import images  # noqa: PLC0415

    return images.read(path, size)[None]


def _upsampler(workdir: str):
    from cm3leon_jax.superres.upsampler import Upsampler  # noqa: PLC0415

    return Upsampler.from_workdir(_UPSAMPLER.value or workdir, batch_size=_BATCH_SIZE.value)


def run_upscale(workdir: str) -> dict:
    """--task upscale: any image -> base resolution -> low codes -> high codes -> high image."""
    from cm3leon_jax import image_metrics, visualize  # noqa: PLC0415
    from cm3leon_jax.data.sources import images as images_lib  # noqa: PLC0415

    path = _require(_IMAGE.value, "image", "upscale")
    sampling = sampling_from_flags("upscale")
    upsampler = _upsampler(workdir)
    source = images_lib.read(path, upsampler.meta.low_image_size)[None]
    captions = [_PROMPT.value] if _PROMPT.value else None
    upscaled = upsampler.upsample_images(source, captions, sampling=sampling, seed=_SEED.value)
    size = upsampler.meta.high_image_size
    out = _OUT.value or str(paths.Workdir(workdir).generated / "upscale.png")
    visualize.save_grid(out, [source[0], image_metrics.bicubic(source, size)[0], upscaled[0]],
                        [f"input resized to {source.shape[1]}px", f"bicubic {size}px",
                         f"upsampler {size}px"], columns=3)
    return {"task": "upscale", "workdir": workdir, "stage": "superres",
            "step": upsampler.step, "image": path, "out": out, "sampling": sampling.__dict__,
            "seed": _SEED.value, "image_size": list(upscaled.shape[1:3]), "scores": [],
            "score_name": "none", "retrieved": 0}


def run(workdir: str, task: str) -> dict:
    """Runs one request from the flags; returns what `--json` prints."""
    import numpy as np  # noqa: PLC0415

    from cm3leon_jax import visualize  # noqa: PLC0415
    from cm3leon_jax.generation.generator import Generator  # noqa: PLC0415

    if task == "upscale":
        return run_upscale(workdir)
    if _UPSCALE.value and task != "text2image":
        raise UsageProblem("--upscale applies to --task text2image (use --task upscale --image "
                           "for an image file)")
    sampling = sampling_from_flags(task)
    image_task = task in IMAGE_TASKS
    num_samples = _NUM_SAMPLES.value or (4 if image_task else 1)
    if task in ("text2image", "infill"):
        _require(_PROMPT.value, "prompt", task)
    if task in ("caption", "vqa", "edit"):
        _require(_IMAGE.value, "image", task)
    retrieval = {"auto": None, "on": True, "off": False}[_RETRIEVAL.value]
    if _NO_RETRIEVAL.value:
        retrieval = False
    generator = Generator.from_workdir(workdir, stage=_STAGE.value, cfg=FLAGS.config,
                                       retrieval=retrieval is not False,
                                       batch_size=_BATCH_SIZE.value)
    upsampler = None
    if _UPSCALE.value:
        upsampler = _upsampler(workdir)
        upsampler.check_base(generator.vocab)  # before spending time on the base images
    report = {"task": task, "workdir": workdir, "stage": generator.stage, "step": generator.step,
              "sampling": sampling.__dict__, "seed": _SEED.value, "num_samples": num_samples}
    source = None
    if _IMAGE.value:
        source = _read_image(_IMAGE.value, generator.image_tokenizer.image_size)
        report["image"] = _IMAGE.value
    common = dict(num_samples=num_samples, sampling=sampling, seed=_SEED.value)
    if task == "text2image":
        result = generator.text_to_image([_PROMPT.value], retrieval=retrieval, **common)[0]
        report["prompt"] = _PROMPT.value
    elif task == "edit":
        instruction = _require(_INSTRUCTION.value, "instruction", task)
        result = generator.edit(source, [instruction], **common)[0]
        report["instruction"] = instruction
    elif task == "caption":
        result = generator.caption(source, max_new_tokens=_MAX_NEW_TOKENS.value,
                                   retrieval=retrieval, **common)[0]
    elif task == "vqa":
        question = _require(_QUESTION.value, "question", task)
        result = generator.vqa(source, [question], max_new_tokens=_MAX_NEW_TOKENS.value,
                               **common)[0]
        report["question"] = question
    else:
        result = generator.infill([_PROMPT.value], max_new_tokens=_MAX_NEW_TOKENS.value,
                                  **common)[0]
        report["prompt"] = _PROMPT.value

    if image_task:
        out = _OUT.value or str(paths.Workdir(workdir).generated / f"{task}.png")
        label = report.get("prompt") or report.get("instruction")
        texts = [f"{label} | #{i + 1} {result.score_name} {score:.3f}"
                 for i, score in enumerate(result.scores)]
        images = list(result.images)
        if upsampler is not None:
            high = upsampler.upsample_codes(result.codes, [_PROMPT.value] * len(result.codes),
                                            seed=_SEED.value)
            upscaled = upsampler.decode(high)
            images = [tile for pair in zip(images, upscaled) for tile in pair]
            texts = [t for text in texts for t in (text, f"upscaled {upscaled.shape[1]}px")]
            report.update(upscaled_codes=high.tolist(), upscaled_size=list(upscaled.shape[1:3]),
                          upsampler_step=upsampler.step)
        if source is not None:
            images, texts = [source[0]] + images, ["source image"] + texts
        visualize.save_grid(out, images, texts, columns=min(len(images), 4))
        report.update(out=out, score_name=result.score_name, retrieved=result.retrieved,
                      scores=[float(s) for s in result.scores],
                      codes=np.asarray(result.codes).tolist())
    else:
        report.update(texts=result.texts, scores=[float(s) for s in result.scores],
                      score_name="mean_log_prob", retrieved=result.retrieved)
        if result.spans is not None:
            report["spans"] = result.spans
    return report


def _print(report: dict) -> None:
    if _JSON.value:
        print(json.dumps(report))
        return
    where = f"[{report['stage']} step {report['step']}]"
    if report["task"] == "upscale":
        print(f"{where} wrote the {report['image_size'][0]}px upscaled image (next to the input "
              f"and bicubic) to {report['out']}")
        return
    if report["task"] in IMAGE_TASKS:
        scores = ", ".join(f"{s:.3f}" for s in report["scores"])
        print(f"{where} wrote {len(report['scores'])} image(s) to {report['out']} "
              f"({report['score_name']}: {scores}; retrieved documents: {report['retrieved']})")
        return
    for index, text in enumerate(report["texts"]):
        print(f"{where} #{index + 1} ({report['scores'][index]:.3f}): {text}")


def main(argv: list[str]) -> None:
    cli.start_app_main(argv, FLAGS.workdir)
    from cm3leon_jax.config import ConfigError  # noqa: PLC0415

    try:
        report = run(FLAGS.workdir, _TASK.value)
    except (UsageProblem, ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    _print(report)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
