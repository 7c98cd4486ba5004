"""End-to-end demo: `python -m cm3leon_jax.demo --workdir W [--config experiments/demo.py]`.

Runs every stage at its tiny setting on the embedded `shapes` data set, each through the same
library calls as its own entry point, and leaves something to look at after each (`W/demo/*.png`,
`W/DATA_CARD.md`) plus `W/metrics.json`:

1. data: build `shapes`, grid of examples with captions, verifier agreement on them;
2. tokenizers: VQ-GAN + sentencepiece + the unified vocabulary; original-vs-reconstruction grid;
3. retrieval: bi-encoder (zero-shot recall), index over the train split, neighbour tables;
4. prepare: Beam pipeline to token shards with the data card (printed);
5. pretrain: CM3 objective on retrieval-augmented rows;
6. sft: instruction tuning from the pretrained weights;
7. evaluate: the tuned model on the first `demo.eval_examples` test examples (text-to-image
   judged by the verifier and FID, sampled with nucleus mass `demo.top_p` and CFG 3; captioning
   CIDEr-D, VQA, editing; `cm3leon_jax/evaluate.py`), with the grids `W/demo/text2image.png`
   (real next to generated), `captions.png` and `edits.png`, and captions and answers printed;
8. superres: a VQ-GAN at twice the image size, fine-tuned from the base one on base-size crops,
   the upsampler trained on it (`cm3leon_jax/superres/stage.py`), and the tuned model's
   text-to-image at base resolution next to its upscaled version, `W/demo/upscaled.png`.

`--config.demo.stages` runs a prefix of them (every stage needs the ones before it).
"""

from __future__ import annotations

import time

from absl import logging
from etils import epath
import ml_collections

from cm3leon_jax import cli, config, console, paths, results, visualize
from cm3leon_jax.data.sources import catalog
from cm3leon_jax.data.sources.shapes import builder as shapes_builder
from cm3leon_jax.data.sources.shapes import verifier


def data_stage(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    data = config.data_config(cfg)
    ready = catalog.prepared_builder(data, workdir)
    sizes = {split: catalog.split_size(data, workdir, split) for split in catalog.SPLITS}
    logging.info("data set %s: %s", ready.info.full_name, sizes)
    examples = list(catalog.numpy_examples(data, workdir, "train", limit=cfg.demo.grid_examples))
    grid = paths.Workdir(workdir).demo / "examples.png"
    visualize.save_grid(grid, [e["image"] for e in examples], [e["caption"] for e in examples])
    figures = {f"{split}_examples": n for split, n in sizes.items()}
    if data.source == "shapes":
        agree = sum(verifier.matches(e["image"], shapes_builder.decode_objects(e["objects"]))
                    for e in examples)
        figures["verifier_agreement"] = agree / len(examples)
        logging.info("verifier agrees with the ground truth on %d/%d shown examples", agree,
                     len(examples))
    console.say(f"[demo] data: {sizes}; examples with captions -> {grid}")
    return figures


def tokenizer_stage(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    from cm3leon_jax.tokenizers import train_all  # noqa: PLC0415 - stage imports stay lazy

    artefacts = train_all.train_tokenizers(cfg, workdir)
    target = paths.Workdir(workdir).demo / "reconstructions.png"
    target.write_bytes(epath.Path(artefacts.reconstructions_png).read_bytes())
    vq = artefacts.figures["vqgan"]
    verdict = (f"verifier exact-match on reconstructions {vq['verifier_exact_match']:.2f}"
               if "verifier_exact_match" in vq else vq.get("verifier", "no verifier figure"))
    console.say(f"[demo] tokenizers: VQ-GAN PSNR {vq['psnr_db']:.1f} dB, SSIM {vq['ssim']:.3f}, "
                f"{verdict}; originals over reconstructions -> {target}")
    return {k: v for k, v in vq.items() if isinstance(v, (int, float))}


def retrieval_stage(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    from cm3leon_jax.retrieval import build_index, neighbours, train_encoder  # noqa: PLC0415

    figures = dict(train_encoder.train(cfg, workdir))
    build_index.build(cfg, workdir)
    neighbours.main(cfg, workdir)  # tables for every split in retrieval.neighbour_splits
    console.say(f"[demo] retrieval: {', '.join(f'{k} {v:.2f}' for k, v in figures.items() if 'recall' in k)}")
    return {k: v for k, v in figures.items() if isinstance(v, (int, float))}


def prepare_stage(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    from cm3leon_jax.data import prepare  # noqa: PLC0415

    figures = prepare.prepare(cfg, workdir)
    card = paths.Workdir(workdir).data_card_markdown
    console.say(f"[demo] data card ({card}):\n" + card.read_text())
    return {"kept_train": figures["kept"].get("train", 0),
            "shards_rebuilt": figures["shards_rebuilt"]}


def _with_train(cfg: ml_collections.ConfigDict, train: ml_collections.ConfigDict):
    staged = ml_collections.ConfigDict(cfg.to_dict())
    staged.train = ml_collections.ConfigDict(train.to_dict())
    return staged


def pretrain_stage(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    from cm3leon_jax import pretrain  # noqa: PLC0415

    out = pretrain.run(_with_train(cfg, cfg.demo.pretrain_train), workdir)
    return {"train_loss": out["train_loss"], "steps": out["steps"]}


def sft_stage(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    from cm3leon_jax import sft  # noqa: PLC0415

    out = sft.run(_with_train(cfg, cfg.demo.sft_train), workdir)
    return {"train_loss": out["train_loss"], "steps": out["steps"]}


def evaluate_stage(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    from cm3leon_jax.evaluation import tasks  # noqa: PLC0415

    demo = config.demo_config(cfg)
    settings = config.EvalSettings(num_examples=demo.eval_examples, seed=0, retrieval=False,
                                   grid_examples=demo.grid_examples, top_p=demo.top_p)
    figures = tasks.evaluate(workdir, settings, cfg=cfg)  # SFT prompts take no retrieval
    out = paths.Workdir(workdir).demo
    pictures = []
    for task, name in (("text2image", "text2image.png"), ("caption", "captions.png"),
                       ("edit", "edits.png")):
        if "grid" in figures.get(task, {}):
            (out / name).write_bytes(epath.Path(figures[task]["grid"]).read_bytes())
            pictures.append(str(out / name))
    console.say(f"[demo] evaluate ({figures['stage']}, {settings.num_examples} test examples): "
                + "; ".join(f"{task} {tasks.summary(task, figures[task])}" for task in settings.tasks))
    for sample in figures.get("caption", {}).get("samples", []):
        console.say(f"[demo]   caption: {sample['generated']!r} (the scene: {sample['reference']!r})")
    for sample in figures.get("vqa", {}).get("samples", []):
        console.say(f"[demo]   VQA: {sample['question']} -> {sample['generated']!r} "
                    f"(answer: {sample['answer']!r})")
    console.say(f"[demo] pictures: {', '.join(pictures)}")
    return {k: v for k, v in tasks.scalars(figures).items() if not k.endswith("/seconds")}


def superres_configs(cfg: ml_collections.ConfigDict
                     ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(high-res VQ-GAN config, upsampler config): the demo's data and VQ-GAN architecture at
    twice the image size, so the high-res VQ-GAN can start from the base one's weights (and a
    sweep over `data.*` moves this stage too)."""
    size = 2 * cfg.data.image_size
    high = ml_collections.ConfigDict(dict(
        data={**cfg.data.to_dict(), "image_size": size},
        vqgan={**cfg.vqgan.to_dict(), "image_size": size, "discriminator_weight": 0.0},
        vqgan_train={**cfg.demo.superres.high_tokenizer_train.to_dict(),
                     "crop_size": cfg.data.image_size}))  # a step costs a base-size step
    upsampler = ml_collections.ConfigDict(cfg.demo.superres.upsampler.to_dict())
    upsampler.data = ml_collections.ConfigDict(cfg.data.to_dict())
    # Rows and vocabulary follow the sizes too: specials + text pieces + two codebooks of the
    # same size (the base vocabulary's layout, then the high codebook).
    from cm3leon_jax.superres import upsampler as upsampler_lib  # noqa: PLC0415
    from cm3leon_jax import vocab as vocab_lib  # noqa: PLC0415

    vqgan = config.section(high, "vqgan", config.VQGANConfig)
    vocab_cfg = (config.section(cfg, "vocab", config.VocabConfig) if "vocab" in cfg
                 else config.VocabConfig())
    sr = upsampler.superres
    side = size // vqgan.downsample_factor
    row = upsampler_lib.row_length((side, side), sr.max_caption_tokens if sr.use_caption else 0)
    used = (len(vocab_lib.STRUCTURAL) + vocab_cfg.num_mask_sentinels
            + cfg.text_tokenizer.vocab_size + 2 * vqgan.codebook_size)
    upsampler.model.max_seq_len = max(upsampler.model.max_seq_len, vocab_lib.padded_size(row, 8))
    upsampler.model.vocab_size = max(upsampler.model.vocab_size,
                                     vocab_lib.padded_size(used, vocab_cfg.pad_to_multiple))
    return high, upsampler


def superres_stage(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    from cm3leon_jax.superres import stage as superres, upsampler  # noqa: PLC0415
    from cm3leon_jax.generation.generator import Generator  # noqa: PLC0415
    from cm3leon_jax.tokenizers import train_vqgan  # noqa: PLC0415

    high_cfg, upsampler_cfg = superres_configs(cfg)
    high_cfg.vqgan_train.init_from = str(paths.Workdir(workdir).vqgan_run)
    high, *_ = train_vqgan.train_and_evaluate(
        high_cfg, str(paths.Workdir(workdir).high_tokenizer()), data_workdir=workdir)
    trained = superres.run(upsampler_cfg, workdir)
    test = trained[config.superres_config(upsampler_cfg).eval_split]
    generator = Generator.from_workdir(workdir, retrieval=False)
    up = upsampler.Upsampler.from_workdir(workdir)
    captions = [e["caption"] for e in catalog.numpy_examples(
        config.data_config(cfg), workdir, "test", limit=cfg.demo.superres.grid_captions)]
    target = paths.Workdir(workdir).demo / "upscaled.png"
    upsampler.upscaled_text_to_image(generator, up, captions, num_samples=1,
                                     sampling=config.IMAGE_SAMPLING,
                                     out=str(target))
    console.say(f"[demo] superres: high-res VQ-GAN {high['psnr_db']:.1f} dB; upsampler "
                f"{test['upsampler']['psnr_db']:.1f} dB vs bicubic {test['bicubic']['psnr_db']:.1f} dB "
                f"on {test['num_images']} test images; base next to upscaled -> {target}")
    return {"high_vqgan_psnr_db": high["psnr_db"], "upsampler_steps": trained["steps"],
            "upsampler_psnr_db": test["upsampler"]["psnr_db"],
            "bicubic_psnr_db": test["bicubic"]["psnr_db"],
            "upsampler_ssim": test["upsampler"]["ssim"], "bicubic_ssim": test["bicubic"]["ssim"]}


STAGES = {"data": data_stage, "tokenizers": tokenizer_stage, "retrieval": retrieval_stage,
          "prepare": prepare_stage, "pretrain": pretrain_stage, "sft": sft_stage,
          "evaluate": evaluate_stage, "superres": superres_stage}


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Every section every stage will read, checked before the first stage starts."""
    config.data_config(cfg)
    config.prepare_config(cfg)
    config.cm3_config(cfg)
    config.model_config(cfg)
    config.mesh_config(cfg)
    config.retrieval_config(cfg)
    config.sft_config(cfg)
    from cm3leon_jax.tokenizers import train_vqgan  # noqa: PLC0415

    train_vqgan.read_config(cfg)  # the VQ-GAN sections, and their image size against the data
    config.section(cfg, "text_tokenizer", config.TextTokenizerConfig)
    demo = config.demo_config(cfg)
    if "superres" in demo.stages:
        high_cfg, upsampler_cfg = superres_configs(cfg)
        train_vqgan.read_config(high_cfg)
        config.superres_config(upsampler_cfg)
        config.model_config(upsampler_cfg)
        config.train_config(upsampler_cfg)


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    validate(cfg)
    start = time.perf_counter()
    done, seconds = {}, {}
    for name in cfg.demo.stages:
        began = time.perf_counter()
        console.say(f"[demo] === {name} ===")
        done[name] = STAGES[name](cfg, workdir)
        seconds[name] = round(time.perf_counter() - began, 1)
    total = time.perf_counter() - start
    results.write_metrics(workdir, "demo", {
        "stages": list(done), "wall_seconds": total, "stage_seconds": seconds,
        **{f"{k}/{m}": v for k, f in done.items() for m, v in f.items()}})
    skipped = [s for s in STAGES if s not in done]
    console.say(f"[demo] finished {len(done)} stage(s) in {total:.0f} s ({seconds}); skipped: "
                f"{', '.join(skipped) or 'none'}; pictures in {paths.Workdir(workdir).demo}, figures in "
                f"{paths.Workdir(workdir).metrics}")
    if "sft" in done or "pretrain" in done:
        console.say(f"[demo] try the model in a browser: pip install -e \".[serve]\" && "
                    f"python -m cm3leon_jax.serve --workdir {workdir}")


if __name__ == "__main__":
    cli.run(main, default_config="demo.py")
