"""The super-resolution stage: trains the token-space upsampler, then evaluates it on the test split.

    python -m cm3leon_jax.tokenizers.train_vqgan --config experiments/vqgan_shapes_64.py \
        --workdir W/tokenizers_hr --config.vqgan_train.init_from=<base VQ-GAN>  # high-res VQ-GAN
    python -m cm3leon_jax.superres --config experiments/superres_shapes.py --workdir W

CM3leon generates at base resolution and relies on a separately trained super-resolution stage.
Here it is the project's decoder (`models/decoder.py`, its own smaller `config.model`) reading the
base VQ-GAN's codes of an image (and, with `superres.use_caption`, its caption) and writing the
codes of a second, high-resolution VQ-GAN; the row layout and the two-codebook vocabulary are
described in `superres/upsampler.py`. Training pairs are one scene rendered at both resolutions
by the `shapes` builder (or, for user data, the image and its downsampled copy: `superres/pairs.py`). The loss is on the high-res codes only.

Training is the shared loop (`train/loop.py` through `train/decoder_task.make_task`, as
pretraining and SFT use it): checkpoints, resume, CLU metrics and `train_log.jsonl` in W/superres,
validation loss every `train.eval_every` steps. The data fingerprint covers both tokenizers, so
resuming with another VQ-GAN is refused. The upsampler is exported to W/superres/upsampler
(vocabulary, tokenizer copies, fingerprints) for `python -m cm3leon_jax.generate --task upscale`
and `--task text2image --upscale`.

Evaluation (`superres.eval_split`, default test): the low-res rendering is encoded with the base
VQ-GAN, the upsampler generates the high-res codes (greedy by default), the high-res VQ-GAN decodes
them; PSNR / SSIM against the true high-res rendering, next to bicubic upsampling of the same
low-res input, the high-res VQ-GAN's own reconstruction (the ceiling of any token-space upsampler)
and bicubic upsampling of the base VQ-GAN's reconstruction (what the base pipeline shows, enlarged);
verifier exact-match at high resolution next to base resolution. Figures go to W/metrics.json
("superres": training figures plus "test"); W/superres/samples.png shows, per test image, the
low-res input, bicubic, the upsampler's output and the truth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Optional

from etils import epath
import ml_collections
import numpy as np

from cm3leon_jax import console, image_metrics, paths, results
from cm3leon_jax.superres import upsampler
from cm3leon_jax import config as config_lib
from cm3leon_jax.config import ConfigError, SuperresConfig, superres_config
from cm3leon_jax.superres import pairs as superres_pairs

STAGE = "superres"


def run_dir(workdir: str) -> epath.Path:
    return paths.Workdir(workdir).run(paths.SUPERRES_RUN)


def _base_vocab(sr: SuperresConfig, workdir: str):
    from cm3leon_jax.generation.generator import load_vocab  # noqa: PLC0415
    from cm3leon_jax.vocab import Vocabulary  # noqa: PLC0415

    return Vocabulary.load(sr.vocab_dir) if sr.vocab_dir else load_vocab(workdir)


def _check_resume(directory: epath.Path, low_fp: str, high_fp: str, sr: SuperresConfig) -> None:
    """A run directory with checkpoints keeps its tokenizers and its prompt format: say so before
    the export is overwritten (the checkpoint would then be read with prompts it never saw)."""
    meta_file = directory / upsampler.EXPORT_DIR / upsampler.META_FILE
    if not meta_file.exists() or not paths.checkpoints_of(directory).exists():
        return
    saved = json.loads(meta_file.read_text())
    if saved.get("format_version", 1) != upsampler.FORMAT_VERSION:
        raise upsampler.UpsamplerMismatch(upsampler.format_message(
            directory, saved.get("format_version", 1)))
    for name, now in (("low", low_fp), ("high", high_fp)):
        before = saved[f"{name}_tokenizer_fingerprint"]
        if before != now:
            raise upsampler.UpsamplerMismatch(
                f"{directory} was trained with another {name}-res tokenizer (fingerprint "
                f"{before[:12]}, now {now[:12]}); use a new --workdir or move {directory} away")
    for field in ("use_caption", "max_caption_tokens"):
        before, now = saved.get(field), getattr(sr, field)
        if before != now:
            raise upsampler.UpsamplerMismatch(
                f"{directory} was trained with superres.{field}={before!r}, now {now!r}: its "
                f"prompts would change; use a new --workdir or move {directory} away")


def _caption_ids(vocab: upsampler.UpsamplerVocab, captions, limit: int) -> list[np.ndarray]:
    return [np.asarray(vocab.base.encode_text(c)[:limit], np.int32) for c in captions]


# ============================================================================= evaluation ==

def evaluate(up: upsampler.Upsampler, pairs: dict, *, sampling=upsampler.GREEDY,
             seed: int = 0) -> tuple[dict, dict]:
    """Figures of the upsampler on `pairs` (see the module docstring) and the images behind them."""
    from cm3leon_jax.data.sources.shapes import verifier  # noqa: PLC0415

    high_size = up.meta.high_image_size
    start = time.perf_counter()
    low_codes = up.low_tokenizer.encode(pairs["low"])
    captions = pairs["captions"] if up.meta.use_caption else None
    high_codes = up.upsample_codes(low_codes, captions, sampling=sampling, seed=seed)
    upsampled = up.decode(high_codes)
    seconds = time.perf_counter() - start
    truth = pairs["high"]
    base_recon = up.low_tokenizer.decode(low_codes)
    true_codes = up.high_tokenizer.encode(truth)
    candidates = {
        "upsampler": upsampled,
        "bicubic": image_metrics.bicubic(pairs["low"], high_size),
        "bicubic_of_base_reconstruction": image_metrics.bicubic(base_recon, high_size),
        "high_vqgan_reconstruction": up.high_tokenizer.decode(true_codes),
    }
    figures = {"num_images": int(len(truth)), "high_image_size": high_size,
               "low_image_size": up.meta.low_image_size,
               "sampling": dataclasses.asdict(sampling) if dataclasses.is_dataclass(sampling)
               else dict(vars(sampling)),
               "upsample_seconds": round(seconds, 2),
               "code_accuracy": float(np.mean(high_codes == true_codes))}
    for name, images in candidates.items():
        figures[name] = {"psnr_db": float(np.mean(image_metrics.psnr(images, truth))),
                         "ssim": float(np.mean(image_metrics.ssim(images, truth)))}
    if pairs["objects"] is not None:
        def rate(images):
            return float(np.mean([verifier.matches(image, keys)
                                  for image, keys in zip(images, pairs["objects"])]))

        figures["verifier_exact_match"] = {
            "upsampler_high_res": rate(upsampled), "base_res_reconstruction": rate(base_recon),
            "bicubic_high_res": rate(candidates["bicubic"]),
            "high_vqgan_reconstruction": rate(candidates["high_vqgan_reconstruction"]),
            "true_low_res": rate(pairs["low"]), "true_high_res": rate(truth)}
    else:
        figures["verifier"] = "no verifier for this data: PSNR and SSIM only"
    figures["beats_bicubic"] = {
        "psnr": figures["upsampler"]["psnr_db"] > figures["bicubic"]["psnr_db"],
        "ssim": figures["upsampler"]["ssim"] > figures["bicubic"]["ssim"]}
    return figures, {"upsampled": upsampled, **candidates}


def save_samples(path: epath.Path, pairs: dict, images: dict, count: int) -> None:
    from cm3leon_jax import visualize  # noqa: PLC0415

    tiles, texts = [], []
    for index in range(min(count, len(pairs["high"]))):
        for name, image in (("low-res input", pairs["low"][index]),
                            ("bicubic", images["bicubic"][index]),
                            ("upsampler", images["upsampled"][index]),
                            ("true high-res", pairs["high"][index])):
            tiles.append(image)
            texts.append(f"{pairs['ids'][index].split('/')[-1]} {name}")
    visualize.save_grid(path, tiles, texts, columns=4, text_lines=2)


# ================================================================================== train ==

def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    from cm3leon_jax.parallel import mesh as mesh_lib, sharding  # noqa: PLC0415
    from cm3leon_jax.tokenizers.image_tokenizer import ImageTokenizer  # noqa: PLC0415
    from cm3leon_jax.train import decoder_task, loop  # noqa: PLC0415

    sr = superres_config(cfg)
    data = config_lib.data_config(cfg)
    model_cfg = config_lib.model_config(cfg)
    train = config_lib.train_config(cfg)
    mesh_cfg = config_lib.mesh_config(cfg)
    directory = run_dir(workdir)
    base_vocab = _base_vocab(sr, workdir)
    low_path = sr.low_tokenizer or base_vocab.image_tokenizer_path
    high_path = str(paths.Workdir(workdir).high_tokenizer(sr.high_tokenizer))
    if not low_path:
        raise ConfigError("config.superres.low_tokenizer is empty and the base vocabulary names "
                          "no image tokenizer")
    low_fp = upsampler.tokenizer_fingerprint(low_path)
    high_fp = upsampler.tokenizer_fingerprint(high_path)
    _check_resume(directory, low_fp, high_fp, sr)
    if base_vocab.image_tokenizer_path and low_fp != upsampler.tokenizer_fingerprint(
            base_vocab.image_tokenizer_path):
        console.say(f"[{STAGE}] note: the low-res tokenizer {low_path} is not the base vocabulary's "
                    f"({base_vocab.image_tokenizer_path}); `generate --upscale` will refuse to upsample "
                    "that base model's images")
    vocab, meta = upsampler.export(directory / upsampler.EXPORT_DIR, base_vocab, low_path,
                                   high_path, use_caption=sr.use_caption,
                                   max_caption_tokens=sr.max_caption_tokens)
    if meta.low_image_size != data.image_size:
        raise ConfigError(f"config.data.image_size={data.image_size} is the base resolution but "
                          f"the low-res tokenizer reads {meta.low_image_size}x"
                          f"{meta.low_image_size} images")
    if model_cfg.vocab_size < vocab.vocab_size:
        config_lib.fail("model.vocab_size", model_cfg.vocab_size,
                        f"is smaller than the upsampler vocabulary ({vocab!r})")
    export_dir = directory / upsampler.EXPORT_DIR
    low_tok = ImageTokenizer.load(export_dir / upsampler.LOW_TOKENIZER, sr.encode_batch_size)
    high_tok = ImageTokenizer.load(export_dir / upsampler.HIGH_TOKENIZER, sr.encode_batch_size)

    def codes(split: str, limit: Optional[int] = None):
        pairs = superres_pairs.load_pairs(data, workdir, split, meta.high_image_size, limit)
        key = superres_pairs.codes_fingerprint(data, split, meta.high_image_size, limit, low_fp,
                                               high_fp)
        low, high = superres_pairs.encode_pairs(pairs, low_tok, high_tok,
                                                directory / "codes" / f"{split}-{key[:16]}.npz")
        captions = (_caption_ids(vocab, pairs["captions"], sr.max_caption_tokens)
                    if sr.use_caption else None)
        return pairs, low, high, captions, key

    start = time.perf_counter()
    _, train_low, train_high, train_captions, train_key = codes("train")
    _, val_low, val_high, val_captions, _ = codes("validation")
    console.say(f"[{STAGE}] {len(train_low)} training pairs encoded ({vocab!r}) in "
                f"{time.perf_counter() - start:.0f} s")
    longest = max([0] + [len(c) for c in (train_captions or []) + (val_captions or [])])
    seq_len = sr.seq_len or -(-vocab.max_row_length(longest) // 8) * 8
    if seq_len > model_cfg.max_seq_len:
        config_lib.fail("model.max_seq_len", model_cfg.max_seq_len,
                        f"is shorter than the upsampler's rows ({seq_len} tokens)")
    mesh = mesh_lib.make_mesh(mesh_cfg)
    batch_sharding = sharding.batch_sharding(mesh, mesh_cfg.logical_axis_rules())
    fingerprint = hashlib.sha256(json.dumps(
        [low_fp, high_fp, meta.text_fingerprint, train_key, sr.use_caption,
         upsampler.FORMAT_VERSION]).encode()).hexdigest()

    def batches(low, high, captions, repeat, **kwargs):
        return superres_pairs.PairBatches(
            vocab, low, high, captions, seq_len=seq_len, global_batch_size=train.batch_size,
            sharding=batch_sharding, seed=train.seed, repeat=repeat,
            caption_dropout=sr.caption_dropout if repeat else 0.0, **kwargs)

    eval_data = {"validation": lambda: batches(val_low, val_high, val_captions, False,
                                               num_batches=train.eval_batches)}
    task = decoder_task.make_task(STAGE, cfg, mesh, batches(train_low, train_high,
                                                            train_captions, True),
                                  eval_data, (vocab.high_offset, vocab.used_size), fingerprint,
                                  seq_len)
    full_config = cfg.to_dict()
    full_config["superres_recorded"] = {**dataclasses.asdict(meta), "seq_len": seq_len}
    trained = loop.train(train, str(directory), task, full_config, metrics_workdir=workdir)
    state = trained.pop("state")

    up = upsampler.Upsampler(state.params, model_cfg, vocab, meta, export_dir,
                             batch_size=sr.eval_batch_size, step=trained["steps"])
    pairs = superres_pairs.load_pairs(data, workdir, sr.eval_split, meta.high_image_size,
                                      sr.eval_images or None)
    from cm3leon_jax.generation.sampling import SamplingConfig  # noqa: PLC0415

    figures, images = evaluate(up, pairs, sampling=SamplingConfig(
        temperature=sr.eval_temperature), seed=train.seed)
    import jax  # noqa: PLC0415

    if jax.process_index() == 0:
        save_samples(directory / "samples.png", pairs, images, sr.grid_images)
    merged = {**trained, sr.eval_split: figures}
    results.write_metrics(workdir, STAGE, merged)
    console.say(f"[{STAGE}] {sr.eval_split}: upsampler PSNR {figures['upsampler']['psnr_db']:.2f} dB "
                f"SSIM {figures['upsampler']['ssim']:.3f}; bicubic {figures['bicubic']['psnr_db']:.2f} "
                f"dB {figures['bicubic']['ssim']:.3f}; high-res VQ-GAN ceiling "
                f"{figures['high_vqgan_reconstruction']['psnr_db']:.2f} dB; verifier "
                f"{figures.get('verifier_exact_match', figures.get('verifier'))}")
    return {"state": state, **merged}
