"""The super-resolution stage at inference: its vocabulary, its rows, and upsampling with it.

CM3leon generates at base resolution and a separately trained stage upsamples. Here that stage is
the project's own decoder (`models/decoder.py`, a smaller config) reading the base image's codes
and writing the codes of a second, high-resolution VQ-GAN:

    row:     [caption <break>] <boi> aligned low codes <eoi> <break> <boi> high codes <eoi> <eos>
    prompt:  everything up to and including the last <boi>
    loss:    on the high codes only (weights 1 there, 0 elsewhere)

"Aligned" low codes: the low-res code grid repeated up to the high grid (each low code once per
high code it lies under, in the high grid's raster order), so high code i and the low code under
it are always the same distance apart (high grid + 3 tokens), whatever the caption. A model with
relative positions (the chameleon preset's RoPE) then finds "the low code under me" and its
neighbours at fixed offsets. The first layout, the compact 8x8 low grid before the high codes,
put high code i at a distance from its low code that changes with i: two upsamplers trained on it
learned the "copy the previous high code" rule and little from the low codes, and greedy decoding
collapsed to a flat image (docs/RESULTS.md, "Super-resolution").

Two codebooks, one id space (`UpsamplerVocab`). The unified vocabulary (`vocab.py`) has one image
code range; the upsampler keeps the base vocabulary's layout *unchanged* (special tokens, text
pieces, and the base VQ-GAN's codes at the same ids) and appends the high-resolution codebook after
it, then pads to a multiple of 128:

    0 .. text_offset-1 specials | text pieces | low codes (= base image ids) | high codes | padding

Why this layout rather than offsets inside one shared range, or a vocabulary of codes only: the
base model's generated ids (and captions) are valid upsampler input as they are, with no
re-mapping; the two code ranges are disjoint, so a low code can never be read as a high one and
"the prompt holds no high-res code" is a range check; and the decoding library
(`generation/constraints.py`, `generator.generate_images`) works unchanged, because
`UpsamplerVocab` presents the *high* range as its `image_*` attributes (the codes it generates),
so constrained decoding samples exactly h*w high codes then `<eoi>`. The text rows cost
text_size * d_model parameters when captions are off; kept so one layout serves both settings.

An upsampler is saved as a directory (`<workdir>/superres/upsampler/`, written by
`python -m cm3leon_jax.superres`): `upsampler.json` (layout, code grids, image sizes, whether the
caption conditions it, and the SHA-256 fingerprints of both tokenizers and of the text model),
the base vocabulary (`vocab.json`, `text.model`), and copies of both VQ-GAN exports
(`low_tokenizer/`, `high_tokenizer/`), so it is self-contained. Upsampling a base model's output
is refused, with a message, when the base model's VQ-GAN is not the one the upsampler was trained
on (`check_base`): its codes would mean other pictures.

    up = Upsampler.from_workdir("W")              # W/superres (checkpoint + upsampler/)
    high = up.upsample_codes(low_codes)            # int32 [n, 16, 16]
    images = up.upsample_images(any_uint8_images)  # resized to 32x32, encoded, upsampled, decoded
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from typing import Optional, Sequence

from etils import epath
import numpy as np

from cm3leon_jax import paths, vocab as vocab_lib
from cm3leon_jax.config import IMAGE_SAMPLING, SamplingConfig
from cm3leon_jax.models import kv_cache

EXPORT_DIR = paths.UPSAMPLER_EXPORT  # inside the superres run directory
META_FILE = "upsampler.json"
LOW_TOKENIZER, HIGH_TOKENIZER = "low_tokenizer", "high_tokenizer"
FORMAT_VERSION = 2  # 2: caption first, aligned low codes (1: compact low grid first)
GREEDY = SamplingConfig(temperature=0.0)


def row_length(high_code_shape: Sequence[int], max_caption_tokens: int = 0) -> int:
    """Tokens in the longest row: `[caption <break>] <boi> aligned low <eoi> <break> <boi> high
    <eoi> <eos>`, both code runs as long as the high grid."""
    high = int(high_code_shape[0]) * int(high_code_shape[1])
    caption = max_caption_tokens + 1 if max_caption_tokens else 0
    return caption + (high + 4) + high + 2


class UpsamplerMismatch(ValueError):
    """The upsampler was trained on another tokenizer than the one the codes come from."""


def file_fingerprint(*files) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(epath.Path(path).read_bytes())
    return digest.hexdigest()


def tokenizer_fingerprint(path) -> str:
    """SHA-256 of a VQ-GAN export's config and weights (a workdir holding one works too)."""
    from cm3leon_jax.tokenizers import image_tokenizer  # noqa: PLC0415

    export = image_tokenizer.resolve(path)
    return file_fingerprint(export / image_tokenizer.CONFIG_FILE,
                            export / image_tokenizer.VARIABLES_FILE)


def text_fingerprint(vocab) -> str:
    """SHA-256 of the base vocabulary's text tokenizer (its serialized sentencepiece model)."""
    return hashlib.sha256(vocab.text_tokenizer.model_proto).hexdigest()


# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------

class UpsamplerVocab:
    """The base vocabulary's ids plus a second (high-resolution) code range after them.

    `low_*`: the base VQ-GAN's codes (ids `base.image_offset ..`, exactly the base model's).
    `high_*`: the high-resolution VQ-GAN's codes (ids `base.used_size ..`).
    `image_offset`, `codebook_size`, `code_shape`, `image_mask()`, `tokens_per_image`: the high
    range, what the decoding library generates (see the module docstring).
    """

    def __init__(self, base, high_codebook_size: int, high_code_shape: tuple[int, int],
                 pad_to_multiple: Optional[int] = None):
        self.base = base
        self.low_offset = base.image_offset
        self.low_codebook_size = base.codebook_size
        self.low_code_shape = tuple(base.code_shape)
        self.high_offset = base.used_size
        self.high_codebook_size = int(high_codebook_size)
        self.high_code_shape = (int(high_code_shape[0]), int(high_code_shape[1]))
        if any(high % low for high, low in zip(self.high_code_shape, self.low_code_shape)) or \
                self.high_code_shape[0] * self.low_code_shape[1] != \
                self.high_code_shape[1] * self.low_code_shape[0]:
            raise UpsamplerMismatch(f"the high-res code grid {self.high_code_shape} must be the "
                                    f"low-res grid {self.low_code_shape} times one integer (each "
                                    "low code covers a square block of high codes)")
        self.used_size = self.high_offset + self.high_codebook_size
        self.vocab_size = vocab_lib.padded_size(self.used_size,
                                                pad_to_multiple or base.config.pad_to_multiple)
        for name in ("pad_id", "eos_id", "break_id", "mask_id", "boi_id", "eoi_id",
                     "sentinel_ids", "text_offset", "text_tokenizer"):
            setattr(self, name, getattr(base, name))

    # what the decoding library reads as "the image" it generates: the high-resolution codes
    @property
    def image_offset(self) -> int:
        return self.high_offset

    @property
    def codebook_size(self) -> int:
        return self.high_codebook_size

    @property
    def code_shape(self) -> tuple[int, int]:
        return self.high_code_shape

    @property
    def tokens_per_image(self) -> int:
        return self.high_code_shape[0] * self.high_code_shape[1] + 2

    def text_mask(self) -> np.ndarray:
        return vocab_lib.range_mask(self.vocab_size, self.text_offset, self.low_offset)

    def low_mask(self) -> np.ndarray:
        return vocab_lib.range_mask(self.vocab_size, self.low_offset,
                                    self.low_offset + self.low_codebook_size)

    def high_mask(self) -> np.ndarray:
        return vocab_lib.range_mask(self.vocab_size, self.high_offset, self.used_size)

    def image_mask(self) -> np.ndarray:
        return self.high_mask()

    def special_mask(self) -> np.ndarray:
        return vocab_lib.range_mask(self.vocab_size, 0, self.text_offset)

    # rows
    def _check_codes(self, codes, shape, size, what) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.shape != tuple(shape) or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"{what} codes must be integers of shape {tuple(shape)}, got "
                             f"{codes.dtype} {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= size):
            raise ValueError(f"{what} codes must be in [0, {size}), got [{codes.min()}, "
                             f"{codes.max()}]")
        return codes.reshape(-1).astype(np.int64)

    @property
    def scale(self) -> int:
        """High code grid side / low code grid side (an integer: each low code covers scale^2)."""
        return self.high_code_shape[0] // self.low_code_shape[0]

    def aligned_low(self, low_codes) -> np.ndarray:
        """Low codes [h, w] -> ids [H*W]: each high position's own low code, raster order."""
        low = self._check_codes(low_codes, self.low_code_shape, self.low_codebook_size, "low-res")
        grid = low.reshape(self.low_code_shape)
        aligned = np.repeat(np.repeat(grid, self.scale, axis=0), self.scale, axis=1)
        return self.low_offset + aligned.reshape(-1)

    def prompt(self, low_codes, caption_ids: Optional[Sequence[int]] = None) -> np.ndarray:
        """int32 ids `[caption <break>] <boi> aligned low <eoi> <break> <boi>` (caption_ids: base
        text ids, `encode_text`; None or empty: no caption)."""
        ids = []
        if caption_ids is not None and len(caption_ids):
            caption = np.asarray(caption_ids, np.int64)
            if not np.all((caption >= self.text_offset) & (caption < self.low_offset)):
                raise ValueError("caption ids must be text ids of the base vocabulary")
            ids += [*caption.tolist(), self.break_id]
        ids += [self.boi_id, *self.aligned_low(low_codes).tolist(), self.eoi_id, self.break_id,
                self.boi_id]
        return np.asarray(ids, np.int32)

    def row(self, low_codes, high_codes, caption_ids: Optional[Sequence[int]] = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, weights) of one training row: the prompt, the high codes, `<eoi> <eos>`; weight
        1 on the high codes only."""
        prompt = self.prompt(low_codes, caption_ids)
        high = self._check_codes(high_codes, self.high_code_shape, self.high_codebook_size,
                                 "high-res")
        ids = np.concatenate([prompt, (self.high_offset + high).astype(np.int32),
                              np.asarray([self.eoi_id, self.eos_id], np.int32)])
        weights = np.zeros(len(ids), np.float32)
        weights[len(prompt):len(prompt) + len(high)] = 1.0
        return ids, weights

    def max_row_length(self, max_caption_tokens: int = 0) -> int:
        return row_length(self.high_code_shape, max_caption_tokens)

    def layout(self) -> dict:
        return {"low_offset": self.low_offset, "low_codebook_size": self.low_codebook_size,
                "low_code_shape": list(self.low_code_shape), "high_offset": self.high_offset,
                "high_codebook_size": self.high_codebook_size,
                "high_code_shape": list(self.high_code_shape), "used_size": self.used_size,
                "vocab_size": self.vocab_size}

    def __repr__(self) -> str:
        return (f"UpsamplerVocab(low={self.low_codebook_size}x{self.low_code_shape} at "
                f"{self.low_offset}, high={self.high_codebook_size}x{self.high_code_shape} at "
                f"{self.high_offset}, vocab_size={self.vocab_size})")


# --------------------------------------------------------------------------------------------------
# The saved upsampler
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class UpsamplerMeta:
    low_tokenizer_fingerprint: str
    high_tokenizer_fingerprint: str
    text_fingerprint: str
    low_image_size: int
    high_image_size: int
    use_caption: bool
    max_caption_tokens: int
    layout: dict
    format_version: int = FORMAT_VERSION


def export(directory, base_vocab, low_tokenizer_path, high_tokenizer_path, *,
           use_caption: bool, max_caption_tokens: int) -> tuple[UpsamplerVocab, UpsamplerMeta]:
    """Writes the upsampler directory (see the module docstring); returns its vocab and meta."""
    from cm3leon_jax.tokenizers import image_tokenizer  # noqa: PLC0415

    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in ((LOW_TOKENIZER, low_tokenizer_path), (HIGH_TOKENIZER,
                                                                high_tokenizer_path)):
        source = image_tokenizer.resolve(source)
        target = directory / name
        target.mkdir(parents=True, exist_ok=True)
        for file in (image_tokenizer.CONFIG_FILE, image_tokenizer.VARIABLES_FILE):
            if epath.Path(source / file).resolve() != epath.Path(target / file).resolve():
                shutil.copyfile(source / file, target / file)
    low_cfg = image_tokenizer.read_config(directory / LOW_TOKENIZER)
    high_cfg = image_tokenizer.read_config(directory / HIGH_TOKENIZER)
    base = vocab_lib.Vocabulary(base_vocab.text_tokenizer, base_vocab.codebook_size,
                                base_vocab.code_shape, str(directory / LOW_TOKENIZER),
                                base_vocab.config)
    if (low_cfg.codebook_size, (low_cfg.code_grid_size,) * 2) != (base.codebook_size,
                                                                  base.code_shape):
        raise UpsamplerMismatch(f"the low-res tokenizer {low_tokenizer_path} has codebook "
                                f"{low_cfg.codebook_size} and {low_cfg.code_grid_size}^2 codes; "
                                f"the base vocabulary expects {base.codebook_size} and "
                                f"{base.code_shape}")
    base.save(directory)
    vocab = UpsamplerVocab(base, high_cfg.codebook_size, (high_cfg.code_grid_size,) * 2)
    meta = UpsamplerMeta(
        low_tokenizer_fingerprint=tokenizer_fingerprint(directory / LOW_TOKENIZER),
        high_tokenizer_fingerprint=tokenizer_fingerprint(directory / HIGH_TOKENIZER),
        text_fingerprint=text_fingerprint(base), low_image_size=low_cfg.image_size,
        high_image_size=high_cfg.image_size, use_caption=use_caption,
        max_caption_tokens=max_caption_tokens, layout=vocab.layout())
    (directory / META_FILE).write_text(json.dumps(dataclasses.asdict(meta), indent=2) + "\n")
    return vocab, meta


def format_message(where, found: int) -> str:
    """Why an upsampler of another row format cannot be read, and what to do."""
    return (f"{where} holds an upsampler of row format {found}; this code writes and reads format "
            f"{FORMAT_VERSION} (format 1 put the compact low-res grid before the high codes, "
            "format 2 puts the caption first and the low codes aligned to the high grid). Its "
            "weights were trained on the other rows: retrain with `python -m cm3leon_jax.superres` "
            "in a new --workdir (or move the old superres directory away)")


def load_export(directory) -> tuple[UpsamplerVocab, UpsamplerMeta]:

    directory = epath.Path(directory)
    if not (directory / META_FILE).exists():
        raise FileNotFoundError(f"{directory} holds no upsampler ({META_FILE} missing): train one "
                                "with `python -m cm3leon_jax.superres --config "
                                "experiments/superres_shapes.py --workdir W`")
    meta = UpsamplerMeta(**json.loads((directory / META_FILE).read_text()))
    if meta.format_version != FORMAT_VERSION:
        raise UpsamplerMismatch(format_message(directory, meta.format_version))
    base = vocab_lib.Vocabulary.load(directory)
    vocab = UpsamplerVocab(base, meta.layout["high_codebook_size"],
                           tuple(meta.layout["high_code_shape"]))
    if vocab.layout() != meta.layout:
        raise ValueError(f"{directory}: the saved layout {meta.layout} differs from the one its "
                         f"files give {vocab.layout()}")
    return vocab, meta


class Upsampler:
    """A trained upsampler: its decoder params and config, vocabulary and both VQ-GANs."""

    def __init__(self, params, model_cfg, vocab: UpsamplerVocab, meta: UpsamplerMeta,
                 directory, batch_size: int = 16, step: Optional[int] = None):
        self.vocab, self.meta = vocab, meta
        # Per-layer weights once, not sliced out of the scanned stack at every decode call.
        self.params, self.model_cfg = kv_cache.unstack_layers(params, model_cfg)
        self.directory = epath.Path(directory)
        self.batch_size, self.step = batch_size, step
        self._tokenizers: dict = {}
        if model_cfg.vocab_size < vocab.vocab_size:
            raise ValueError(f"upsampler model vocab_size {model_cfg.vocab_size} < its "
                             f"vocabulary's {vocab.vocab_size} ids")

    @classmethod
    def from_workdir(cls, workdir, batch_size: int = 16) -> "Upsampler":
        """Loads `<workdir>/superres` (or a superres run directory given directly)."""
        import jax  # noqa: PLC0415
        import jax.numpy as jnp  # noqa: PLC0415
        import ml_collections  # noqa: PLC0415

        from cm3leon_jax import config as config_lib  # noqa: PLC0415
        from cm3leon_jax.generation.generator import read_meta  # noqa: PLC0415
        from cm3leon_jax.train.checkpoint import restore_params  # noqa: PLC0415

        run = epath.Path(workdir)
        if not (run / EXPORT_DIR).exists() and paths.Workdir(run).upsampler.exists():
            run = paths.Workdir(run).run(paths.SUPERRES_RUN)
        vocab, meta = load_export(run / EXPORT_DIR)
        if not paths.Workdir(run.parent).has_checkpoint(run.name):
            raise FileNotFoundError(f"{run} has no checkpoint: run `python -m cm3leon_jax.superres "
                                    f"--config experiments/superres_shapes.py --workdir "
                                    f"{run.parent}` first")
        saved, _ = read_meta(run)
        model_cfg = config_lib.model_config(ml_collections.ConfigDict(saved["config"]))
        recorded = saved["config"].get("superres_recorded", {})
        if recorded and recorded.get("format_version", 1) != meta.format_version:
            raise UpsamplerMismatch(format_message(f"{run}'s checkpoint",
                                                   recorded.get("format_version", 1)))
        if recorded and recorded.get("low_tokenizer_fingerprint") != \
                meta.low_tokenizer_fingerprint:
            raise UpsamplerMismatch(f"{run}: the checkpoint was trained with low-res tokenizer "
                                    f"{recorded.get('low_tokenizer_fingerprint', '')[:12]} but "
                                    f"{run / EXPORT_DIR} holds "
                                    f"{meta.low_tokenizer_fingerprint[:12]}")
        params, step = restore_params(str(run))
        return cls(jax.tree.map(jnp.asarray, params), model_cfg, vocab, meta, run / EXPORT_DIR,
                   batch_size=batch_size, step=step)

    # ------------------------------------------------------------------------- tokenizers
    def _tokenizer(self, name: str):
        if name not in self._tokenizers:
            from cm3leon_jax.tokenizers.image_tokenizer import ImageTokenizer  # noqa: PLC0415

            self._tokenizers[name] = ImageTokenizer.load(self.directory / name,
                                                         batch_size=self.batch_size)
        return self._tokenizers[name]

    @property
    def low_tokenizer(self):
        return self._tokenizer(LOW_TOKENIZER)

    @property
    def high_tokenizer(self):
        return self._tokenizer(HIGH_TOKENIZER)

    def check_base(self, base_vocab) -> None:
        """Raises UpsamplerMismatch unless `base_vocab` (a base model's vocabulary) uses the
        low-res VQ-GAN (and, when captions condition the upsampler, the text tokenizer) this
        upsampler was trained on."""
        if not base_vocab.image_tokenizer_path:
            raise UpsamplerMismatch("the base vocabulary names no image tokenizer to compare")
        found = tokenizer_fingerprint(base_vocab.image_tokenizer_path)
        if found != self.meta.low_tokenizer_fingerprint:
            raise UpsamplerMismatch(
                f"the base model's image tokenizer ({base_vocab.image_tokenizer_path}, "
                f"fingerprint {found[:12]}) is not the low-res tokenizer this upsampler was "
                f"trained on ({self.meta.low_tokenizer_fingerprint[:12]}, copied in "
                f"{self.directory / LOW_TOKENIZER}): its codes would mean other pictures. Train "
                "the upsampler with `--config.superres.low_tokenizer=<the base model's VQ-GAN>`")
        if tuple(base_vocab.code_shape) != self.vocab.low_code_shape or \
                base_vocab.image_offset != self.vocab.low_offset:
            raise UpsamplerMismatch(f"base vocabulary layout {base_vocab!r} differs from the "
                                    f"upsampler's {self.vocab!r}")
        if self.meta.use_caption and text_fingerprint(base_vocab) != self.meta.text_fingerprint:
            raise UpsamplerMismatch("the base model's text tokenizer differs from the one the "
                                    "caption-conditioned upsampler was trained with")

    # ------------------------------------------------------------------------- upsampling
    def prompts(self, low_codes: np.ndarray, captions: Optional[Sequence[str]] = None
                ) -> list[np.ndarray]:
        low_codes = np.asarray(low_codes)
        if captions is not None and len(captions) != len(low_codes):
            raise ValueError(f"{len(captions)} captions for {len(low_codes)} images")
        prompts = []
        for index, codes in enumerate(low_codes):
            caption = None
            if self.meta.use_caption and captions is not None and captions[index]:
                caption = self.vocab.base.encode_text(captions[index])[
                    :self.meta.max_caption_tokens]
            prompts.append(self.vocab.prompt(codes, caption))
        return prompts

    def upsample_codes(self, low_codes, captions: Optional[Sequence[str]] = None, *,
                       sampling: SamplingConfig = GREEDY, seed: int = 0) -> np.ndarray:
        """int32 [n, H, W] high-res codes for int [n, h, w] low-res codes (greedy by default).

        Exactly H*W high codes are sampled per image (the decoding library's constraints)."""
        from cm3leon_jax.generation.generator import generate_images  # noqa: PLC0415

        if sampling.uses_unconditional:
            raise ValueError("the upsampler has no unconditional stream: use cfg_scale 1, cd_k 0")
        low_codes = np.asarray(low_codes)
        if low_codes.ndim != 3:
            raise ValueError(f"low-res codes must be [n, h, w], got shape {low_codes.shape}")
        codes, _ = generate_images(self.params, self.model_cfg, self.vocab,
                                   self.prompts(low_codes, captions), num_samples=1,
                                   sampling=sampling, seed=seed, batch_size=self.batch_size)
        return codes[:, 0]

    def decode(self, high_codes) -> np.ndarray:
        return self.high_tokenizer.decode(high_codes)

    def to_low_resolution(self, images) -> np.ndarray:
        """uint8 images of any square size, resized (bicubic) to the base resolution."""
        from cm3leon_jax import image_metrics  # noqa: PLC0415

        images = np.asarray(images, np.uint8)
        if images.ndim == 3:
            images = images[None]
        size = self.meta.low_image_size
        if images.shape[1:3] == (size, size):
            return images
        return image_metrics.bicubic(images, size)

    def upsample_images(self, images, captions: Optional[Sequence[str]] = None, *,
                        sampling: SamplingConfig = GREEDY, seed: int = 0) -> np.ndarray:
        """uint8 [n, S, S, 3] (S = the high-res VQ-GAN's size) for uint8 [n, s, s, 3] of any s:
        resized to base resolution, encoded with the low-res VQ-GAN, upsampled, decoded."""
        low = self.low_tokenizer.encode(self.to_low_resolution(images))
        return self.decode(self.upsample_codes(low, captions, sampling=sampling, seed=seed))


# --------------------------------------------------------------------------------------------------
# For the demo: base text-to-image next to its upscaled version
# --------------------------------------------------------------------------------------------------

def upscaled_text_to_image(generator, upsampler: Upsampler, captions: Sequence[str], *,
                           num_samples: int = 1, sampling: Optional[SamplingConfig] = None,
                           upsample_sampling: SamplingConfig = GREEDY, seed: int = 0,
                           out: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """Text-to-image with `generator` (a `generation.Generator`), then each image upsampled.

    Returns (base uint8 [n, N, s, s, 3], upscaled uint8 [n, N, S, S, 3]), best sample first. The
    base model's codes go to the upsampler as they are (no decode / re-encode), after checking
    that both use the same low-res VQ-GAN. With `out`, writes one PNG grid: per sample the base
    image and the upscaled one side by side (both shown at the same cell size).
    """
    upsampler.check_base(generator.vocab)
    results = generator.text_to_image(list(captions), num_samples=num_samples,
                                      sampling=sampling or IMAGE_SAMPLING,
                                      seed=seed)
    low = np.stack([r.codes for r in results])  # [n, N, h, w]
    flat_captions = [c for c in captions for _ in range(low.shape[1])]
    high = upsampler.upsample_codes(low.reshape(-1, *low.shape[2:]), flat_captions,
                                    sampling=upsample_sampling, seed=seed)
    upscaled = upsampler.decode(high)
    upscaled = upscaled.reshape(*low.shape[:2], *upscaled.shape[1:])
    base = np.stack([r.images for r in results])
    if out:
        from cm3leon_jax import visualize  # noqa: PLC0415

        tiles, texts = [], []
        for i, caption in enumerate(captions):
            for j in range(base.shape[1]):
                tiles += [base[i, j], upscaled[i, j]]
                texts += [f"{caption} #{j + 1} base {base.shape[2]}px",
                          f"{caption} #{j + 1} upscaled {upscaled.shape[2]}px"]
        visualize.save_grid(out, tiles, texts, columns=min(len(tiles), 4))
    return base, upscaled
