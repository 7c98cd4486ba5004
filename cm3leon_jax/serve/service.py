"""The model behind the page: loaded once, shared by every request, each task one method.

No web library here: each method takes plain values (text, uint8 images, numbers) and returns
plain results, so it is tested without a server. A request that cannot be served raises
`RequestProblem` with the sentence the page shows; nothing here stops the server.

Sampling defaults are `generate`'s (`config.IMAGE_SAMPLING` for image tokens, greedy text, 4 image
samples, 1 text sample), and the model is the one `generate` loads: W/sft when it has a
checkpoint, else W/pretrain, unless `stage` names one.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
from typing import Optional

import numpy as np

from cm3leon_jax import paths
from cm3leon_jax.config import CD_K_WHEN_CHOSEN, IMAGE_SAMPLING, ConfigError, SamplingConfig

IMAGE_SAMPLES = 4  # generate's default for image tasks
MAX_TEXT_TOKENS = 64  # generate's --max_new_tokens
RETRIEVAL_CHOICES = ("auto", "on", "off")


class RequestProblem(ValueError):
    """A request that cannot be served; its message is shown in the page as it is."""


@dataclasses.dataclass
class ImageSettings:
    """What a person can set for an image task; the defaults are `generate`'s."""

    num_samples: int = IMAGE_SAMPLES
    cfg_scale: float = IMAGE_SAMPLING.cfg_scale
    top_p: float = IMAGE_SAMPLING.top_p
    temperature: float = IMAGE_SAMPLING.temperature
    contrastive: bool = False  # CD-K with k = config.CD_K_WHEN_CHOSEN
    retrieval: str = "auto"
    upscale: bool = False
    seed: int = 0

    def sampling(self) -> SamplingConfig:
        if not 1 <= int(self.num_samples) <= 16:
            raise RequestProblem(f"number of samples must be 1 to 16, got {self.num_samples}")
        try:
            return SamplingConfig(temperature=float(self.temperature), top_p=float(self.top_p),
                                  cfg_scale=float(self.cfg_scale),
                                  cd_k=CD_K_WHEN_CHOSEN if self.contrastive else 0,
                                  cd_alpha=IMAGE_SAMPLING.cd_alpha).check()
        except ConfigError as error:
            raise RequestProblem(str(error).replace("config.sampling.", "")) from None


@dataclasses.dataclass
class Sample:
    image: np.ndarray  # uint8 [H, W, 3]
    label: str


@dataclasses.dataclass
class Answer:
    """What one request produced, for the page to show."""

    samples: list[Sample] = dataclasses.field(default_factory=list)
    texts: list[str] = dataclasses.field(default_factory=list)
    documents: list[Sample] = dataclasses.field(default_factory=list)  # retrieved, when used
    summary: str = ""


def _retrieval(choice: str) -> Optional[bool]:
    if choice not in RETRIEVAL_CHOICES:
        raise RequestProblem(f"retrieval must be one of {', '.join(RETRIEVAL_CHOICES)}, "
                             f"got {choice!r}")
    return {"auto": None, "on": True, "off": False}[choice]


def _text(value: Optional[str], what: str) -> str:
    value = (value or "").strip()
    if not value:
        raise RequestProblem(f"type {what} first: it is empty")
    return value


class Service:
    """A workdir's model and what serves its requests (one request at a time: `lock`)."""

    def __init__(self, workdir: str, stage: Optional[str] = None, batch_size: int = 16,
                 max_image_pixels: int = 4096 * 4096):
        self.workdir = str(workdir)
        self.work = paths.Workdir(self.workdir)
        self.max_image_pixels = max_image_pixels
        self.lock = threading.Lock()
        self.generator = None
        self.upsampler = None
        self.problem = ""  # why there is no model, with the command that makes one
        self._load(stage, batch_size)

    def _load(self, stage: Optional[str], batch_size: int) -> None:
        from cm3leon_jax.generation.generator import Generator  # noqa: PLC0415

        if stage is None and not any(self.work.has_checkpoint(s) for s in ("pretrain", "sft")):
            self.problem = (f"{self.workdir} has no trained model: train one with `python -m "
                            f"cm3leon_jax.demo --workdir {self.workdir}` (every stage), or `python "
                            f"-m cm3leon_jax.pretrain --config experiments/pretrain_tiny.py "
                            f"--workdir {self.workdir}`, then restart the page")
            return
        try:
            self.generator = Generator.from_workdir(self.workdir, stage=stage,
                                                    batch_size=batch_size)
        except (FileNotFoundError, ValueError, ConfigError) as error:
            self.problem = f"the model could not be loaded: {error}"
            return
        if self.work.upsampler.exists():
            from cm3leon_jax.superres.upsampler import Upsampler  # noqa: PLC0415

            try:
                upsampler = Upsampler.from_workdir(self.workdir, batch_size=batch_size)
                upsampler.check_base(self.generator.vocab)
                self.upsampler = upsampler
            except (FileNotFoundError, ValueError) as error:
                self.problem = f"the upsampler is not used: {error}"

    # --------------------------------------------------------------------------- state
    @property
    def ready(self) -> bool:
        return self.generator is not None

    def describe(self) -> str:
        """One line: which model serves the page (or why none does)."""
        if not self.ready:
            return self.problem
        gen = self.generator
        model = gen.model_cfg
        line = (f"{gen.stage} model at step {gen.step} from {self.workdir}: {model.preset}, "
                f"{model.num_layers} layers, d_model {model.d_model}, "
                f"{gen.vocab.code_shape[0]}x{gen.vocab.code_shape[1]} codes per "
                f"{gen.image_tokenizer.image_size}px image")
        extras = []
        if gen.retriever is not None:
            extras.append("retrieval index")
        if self.upsampler is not None:
            extras.append(f"upsampler to {self.upsampler.meta.high_image_size}px")
        if extras:
            line += "; with " + ", ".join(extras)
        if self.problem:
            line += f" ({self.problem})"
        return line

    def _model(self):
        if not self.ready:
            raise RequestProblem(self.problem)
        return self.generator

    @property
    def image_size(self) -> int:
        return self._model().image_tokenizer.image_size

    # ---------------------------------------------------------------------------- input
    def read_image(self, data) -> np.ndarray:
        """uint8 [1, S, S, 3] at the model's image size from an uploaded file's bytes, a path,
        or an array; RequestProblem for anything that is not a usable picture."""
        from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

        from cm3leon_jax.data.sources import images  # noqa: PLC0415

        size = self.image_size
        if data is None:
            raise RequestProblem("give an image first: upload one or pick one from the test split")
        if isinstance(data, np.ndarray):
            array = np.asarray(data)
            if array.ndim != 3 or array.shape[-1] not in (3, 4) or 0 in array.shape:
                raise RequestProblem(f"an image must be H x W x 3, got shape {array.shape}")
            data = Image.fromarray(array.astype(np.uint8))
            return images.centre_crop_resize(images.to_rgb(data), size)[None]
        if isinstance(data, str):
            try:
                with open(data, "rb") as handle:
                    data = handle.read()
            except OSError as error:
                raise RequestProblem(f"the uploaded file could not be read: {error}") from None
        if not data:
            raise RequestProblem("the uploaded file is empty")
        try:
            with Image.open(io.BytesIO(data)) as header:  # reads the size, not the pixels
                width, height = header.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise RequestProblem("the uploaded file is not an image PIL can read (PNG, JPEG, "
                                 "WebP, GIF, BMP, ...)") from None
        except Image.DecompressionBombError:
            width = height = self.max_image_pixels + 1
        if width * height > self.max_image_pixels:
            raise RequestProblem(f"the image is {width}x{height} = {width * height:,} pixels, "
                                 f"more than this page accepts ({self.max_image_pixels:,}); "
                                 "shrink it first")
        try:
            return images.decode(data, "upload", size)[None]
        except images.BadImage as error:
            raise RequestProblem(f"the uploaded image is unusable: {error.reason}") from None

    def test_examples(self, count: int = 12) -> list[tuple[np.ndarray, str]]:
        """The first `count` (image, caption) pairs of the model's data's test split, or [] when
        the workdir does not hold that data (the page then offers uploads only)."""
        if not self.ready:
            return []
        import ml_collections  # noqa: PLC0415

        from cm3leon_jax import config as config_lib  # noqa: PLC0415
        from cm3leon_jax.data.sources import catalog  # noqa: PLC0415
        from cm3leon_jax.generation.generator import read_meta  # noqa: PLC0415

        meta, _ = read_meta(self.work.run(self.generator.stage))
        saved = ml_collections.ConfigDict(meta.get("config") or {})
        if "data" not in saved:
            return []
        try:
            data = config_lib.data_config(saved)
            return [(np.asarray(e["image"], np.uint8), str(e["caption"])) for e in
                    catalog.numpy_examples(data, self.workdir, "test", limit=count)]
        except Exception as error:  # noqa: BLE001 - no test split here is normal (a moved data dir)
            logging.warning("no test-split images to pick from: %s", error)
            return []

    # ---------------------------------------------------------------------------- tasks
    def _run(self, work):
        """Runs `work(generator)` alone; the generator's refusals become RequestProblem."""
        generator = self._model()
        with self.lock:
            try:
                return work(generator)
            except (ValueError, FileNotFoundError, ConfigError) as error:
                if isinstance(error, RequestProblem):
                    raise
                raise RequestProblem(str(error)) from None

    def _documents(self, generator, documents) -> list[Sample]:
        shown = []
        for rank, document in enumerate(documents, 1):
            text, image = generator.show_document(document)
            if image is None:
                image = np.full((generator.image_tokenizer.image_size,) * 2 + (3,), 255, np.uint8)
            shown.append(Sample(image, f"retrieved #{rank}: {text}"))
        return shown

    def _images(self, generator, result, label: str, upscale: bool, seed: int) -> Answer:
        samples = [Sample(image, f"#{i + 1} {result.score_name} {score:.3f}")
                   for i, (image, score) in enumerate(zip(result.images, result.scores))]
        if upscale:
            high = self.upsampler.upsample_codes(result.codes, [label] * len(result.codes),
                                                 seed=seed)
            upscaled = self.upsampler.decode(high)
            samples = [shown for sample, big in zip(samples, upscaled) for shown in
                       (sample, Sample(big, f"{sample.label} upscaled {big.shape[0]}px"))]
        return Answer(samples=samples, documents=self._documents(generator, result.documents),
                      summary=f"{len(result.images)} sample(s), best first, by {result.score_name}"
                              f"; retrieved documents: {result.retrieved}")

    def text_to_image(self, prompt: str, settings: ImageSettings = ImageSettings()) -> Answer:
        prompt = _text(prompt, "a prompt")
        sampling = settings.sampling()
        retrieval = _retrieval(settings.retrieval)
        if settings.upscale and self.upsampler is None:
            raise RequestProblem("this workdir has no upsampler: train one with `python -m "
                                 "cm3leon_jax.superres --config experiments/superres_shapes.py "
                                 f"--workdir {self.workdir}`")

        def work(generator):
            result = generator.text_to_image([prompt], num_samples=int(settings.num_samples),
                                             sampling=sampling, seed=int(settings.seed),
                                             retrieval=retrieval)[0]
            return self._images(generator, result, prompt, settings.upscale, int(settings.seed))
        return self._run(work)

    def edit(self, image, instruction: str, settings: ImageSettings = ImageSettings()) -> Answer:
        instruction = _text(instruction, "an edit instruction")
        sampling = settings.sampling()
        source = self.read_image(image)

        def work(generator):
            result = generator.edit(source, [instruction], num_samples=int(settings.num_samples),
                                    sampling=sampling, seed=int(settings.seed))[0]
            answer = self._images(generator, result, instruction, False, int(settings.seed))
            answer.samples.insert(0, Sample(source[0], "source image"))
            return answer
        return self._run(work)

    def _texts(self, generator, result) -> Answer:
        return Answer(texts=list(result.texts),
                      documents=self._documents(generator, result.documents),
                      summary=f"mean log-prob {float(result.scores[0]):.3f}; retrieved "
                              f"documents: {result.retrieved}")

    def caption(self, image, retrieval: str = "auto") -> Answer:
        source = self.read_image(image)
        use = _retrieval(retrieval)
        return self._run(lambda generator: self._texts(generator, generator.caption(
            source, max_new_tokens=MAX_TEXT_TOKENS, retrieval=use)[0]))

    def vqa(self, image, question: str) -> Answer:
        question = _text(question, "a question")
        source = self.read_image(image)
        return self._run(lambda generator: self._texts(generator, generator.vqa(
            source, [question], max_new_tokens=MAX_TEXT_TOKENS)[0]))

    def infill(self, text: str) -> Answer:
        text = _text(text, "a text with <mask> where words are missing")
        return self._run(lambda generator: self._texts(generator, generator.infill(
            [text], max_new_tokens=MAX_TEXT_TOKENS)[0]))
