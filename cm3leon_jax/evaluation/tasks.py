"""One evaluation of a trained model on its data's test split: four tasks, fixed seed and size.

    evaluator = Evaluator(workdir)                       # W/sft if trained, else W/pretrain
    figures = evaluator.run(EvalSettings(num_examples=64, seed=0, cfg_scale=3.0))

The first `num_examples` examples of the test split (in split order, so every run sees the same
ones), each task decoded with `seed`:

* text2image: each example's stored caption -> one image (or `num_samples`, best by the
  generator's rerank), judged by the verifier against the example's objects (`exact_match`,
  `attribute_accuracy` and per attribute, `attributes.object_scores`; `vqgan_ceiling_*`: the
  same on VQ-GAN reconstructions of the real images, the most a generator can reach through
  this image tokenizer), FID against the same
  examples' real images (`fid.py`; features named in `fid_features`) and the bi-encoder's
  text-image cosine (`clip_score`) when the workdir has one;
* caption: greedy captions of the real images: CIDEr-D against the four template captions of the
  scene (`attributes.references`), attribute-word accuracy (`attributes.caption_scores`), and
  exact match of the parsed caption with the scene;
* vqa (instruction-tuned model only): up to `questions_per_example` of each example's questions,
  greedy answers, exact match after normalisation (`vqa.py`), overall and per question type;
* edit (instruction-tuned model only): the stored instruction applied to the real image, the
  verifier on the result against the edited scene's objects; `copy_attribute_accuracy` is the
  score of returning the source image unchanged (every edit changes exactly one object), the
  floor a useful editor must beat.

Any data (a user folder, tfds, WebDataset): what needs the `shapes` verifier or scene metadata
(exact match, attribute accuracy, the verifier ceiling) is reported as skipped with the reason
("no verifier for this data"), as are VQA and editing when the test split holds no
question/answer pairs or edit pairs; the rest applies to any data: the tokenizer's reconstruction
PSNR / SSIM (`tokenizer`), FID with its real-vs-real noise level and the CLIP score, CIDEr-D
against the data's own captions and the share of distinct captions, and the bi-encoder's
text-image retrieval recall on the test examples (`retrieval`; examples that share a caption
count as right answers for each other).

A pretrained model gets VQA and editing reported as skipped (pretraining never shows them; the
paper's "SFT enables editing and QA"). Sampling for image tasks: temperature 1 with top-p
(`decoding="top_p"`) or CD-K (`decoding="cd_k"`), both under CFG scale `cfg_scale` (1 = off).
Retrieval: `None` follows the generator (on for the pretrained model when the workdir has an
index, off for SFT), `True` / `False` force it (text2image and captioning prompts only).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

from absl import logging
import ml_collections
import numpy as np

from cm3leon_jax import config as config_lib
from cm3leon_jax import console, image_metrics, paths, visualize
from cm3leon_jax.evaluation import attributes, cider, fid, vqa
from cm3leon_jax.generation import generator as generator_lib
from cm3leon_jax.config import EVAL_TASKS as TASKS, EvalSettings

SFT_ONLY = ("vqa", "edit")


@dataclasses.dataclass
class TestSet:
    """The first n test examples with what the metrics need (uint8 images, object keys).

    Data other than `shapes` has no objects (`objects` None), and questions / edits only where
    its examples carry them (empty lists otherwise)."""

    ids: list[str]
    images: np.ndarray
    captions: list[str]
    objects: Optional[list[list[attributes.ObjectKey]]]
    questions: list[list[tuple[str, str]]]
    edit_instructions: list[str]
    edit_images: Optional[np.ndarray]
    edit_objects: Optional[list[list[attributes.ObjectKey]]]
    source: str = "shapes"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_scenes(self) -> bool:
        return self.objects is not None

    @property
    def has_edits(self) -> bool:
        return bool(self.edit_instructions) and self.edit_images is not None

    @classmethod
    def load(cls, cfg: ml_collections.ConfigDict, workdir: str, num_examples: int) -> "TestSet":
        from cm3leon_jax.data.sources import catalog  # noqa: PLC0415 - imports TensorFlow
        from cm3leon_jax.data.sources.shapes import builder  # noqa: PLC0415

        if "data" not in cfg:
            raise ValueError("the run's config has no `data` section: pass --config with the file "
                             "the model was trained with")
        data = config_lib.data_config(cfg)
        examples = list(catalog.numpy_examples(data, workdir, "test", limit=num_examples))
        if len(examples) < num_examples:
            raise ValueError(f"the test split holds {len(examples)} examples, fewer than "
                             f"num_examples={num_examples}: lower --num_examples")
        common = dict(ids=[e["id"] for e in examples],
                      images=np.stack([e["image"] for e in examples]).astype(np.uint8),
                      captions=[e["caption"] for e in examples], source=data.source)
        if data.source != "shapes":
            questions = [list(zip(e["questions"]["question"], e["questions"]["answer"]))
                         if isinstance(e.get("questions"), dict) else [] for e in examples]
            return cls(**common, objects=None, questions=questions, edit_instructions=[],
                       edit_images=None, edit_objects=None)
        return cls(
            **common,
            objects=[builder.decode_objects(e["objects"]) for e in examples],
            questions=[list(zip(e["questions"]["question"], e["questions"]["answer"]))
                       for e in examples],
            edit_instructions=[e["edit"]["instruction"] for e in examples],
            edit_images=np.stack([e["edit"]["image"] for e in examples]).astype(np.uint8),
            edit_objects=[builder.decode_objects(e["edit"]["objects"]) for e in examples])


def run_config(workdir: str, stage: str, cfg: Optional[ml_collections.ConfigDict]
               ) -> ml_collections.ConfigDict:
    """`cfg` when given, else the config saved with `W/<stage>`'s latest checkpoint."""
    if cfg is not None:
        return cfg
    meta, _ = generator_lib.read_meta(paths.Workdir(workdir).run(stage))
    saved = meta.get("config") or {}
    if "model" not in saved:
        raise ValueError(f"the checkpoint in {paths.Workdir(workdir).run(stage)} saved no "
                         "config; pass --config with the file it was trained with")
    return ml_collections.ConfigDict(saved)


def _verdict(ok: Optional[bool]) -> str:
    return "" if ok is None else (" (MATCH)" if ok else " (no match)")


class Evaluator:
    """A loaded model (one stage), the test examples and the FID feature extractor."""

    def __init__(self, workdir: str, cfg: Optional[ml_collections.ConfigDict] = None,
                 stage: Optional[str] = None, num_examples: int = 64, batch_size: int = 16,
                 retrieval_index: bool = True, fid_weights: str = ""):
        """retrieval_index: load W's retrieval index (when it has one); False never does.
        fid_weights: FID's Inception-v3 weights file (standard FID); empty: the project's own
        feature extractor (`fid.feature_extractor`)."""
        workdir = str(workdir)
        stage = stage or generator_lib.default_stage(workdir)  # clear error when untrained
        self.workdir = workdir
        self.generator = generator_lib.Generator.from_workdir(
            workdir, stage=stage, cfg=cfg, retrieval=retrieval_index, batch_size=batch_size)
        self.cfg = run_config(workdir, stage, cfg)
        self.test = TestSet.load(self.cfg, workdir, num_examples)
        self.features = fid.feature_extractor(self.generator.biencoder,
                                              self.generator.image_tokenizer, batch_size=32,
                                              inception_weights=fid_weights)
        self._real_features: Optional[np.ndarray] = None
        self._reconstructions: Optional[np.ndarray] = None
        self._ceiling: dict[int, dict] = {}
        self.out_dir = paths.Workdir(workdir).evaluation

    @property
    def stage(self) -> str:
        return self.generator.stage

    @property
    def has_retrieval(self) -> bool:
        return self.generator.retriever is not None

    def _subset(self, settings: EvalSettings) -> int:
        if settings.num_examples > len(self.test):
            raise ValueError(f"num_examples={settings.num_examples} but this evaluator loaded "
                             f"{len(self.test)} test examples")
        return settings.num_examples

    def reconstructions(self) -> np.ndarray:
        """decode(encode(image)) of every loaded test image (once)."""
        if self._reconstructions is None:
            self._reconstructions = self.generator.image_tokenizer.reconstruct(self.test.images)
        return self._reconstructions

    def tokenizer(self) -> dict:
        """decode(encode(image)) against the test images: PSNR and SSIM (any data)."""
        rebuilt = self.reconstructions()
        return {"psnr_db": float(np.mean(image_metrics.psnr(rebuilt, self.test.images))),
                "ssim": float(np.mean(image_metrics.ssim(rebuilt, self.test.images))),
                "images": len(self.test)}

    def retrieval_recall(self) -> dict:
        """Text -> image and image -> text recall@1/5 of the bi-encoder on the test examples;
        examples sharing a caption are right answers for each other (`recall_at` groups)."""
        from cm3leon_jax.retrieval import recall, retriever  # noqa: PLC0415

        biencoder = self.generator.biencoder
        if biencoder is None:
            return {"skipped": "the workdir has no retrieval encoder"}
        similarity = retriever.text_image_similarity(biencoder, self.test.captions,
                                                     self.test.images)
        return {**recall.recall_figures(similarity, self.test.captions),
                "examples": len(self.test)}

    def ceiling(self, n: int) -> dict:
        """The verifier on VQ-GAN reconstructions of the real images: no generated image can
        score above what the image tokenizer can render (cached per sample count)."""
        if n not in self._ceiling:
            figures, _ = attributes.judge_images(self.reconstructions()[:n],
                                                 self.test.objects[:n])
            self._ceiling[n] = {"vqgan_ceiling_exact_match": figures["exact_match"],
                                "vqgan_ceiling_attribute_accuracy": figures["attribute_accuracy"]}
        return self._ceiling[n]

    def real_features(self, n: int) -> np.ndarray:
        if self._real_features is None:
            self._real_features = self.features(self.test.images)
        return self._real_features[:n]

    # ----------------------------------------------------------------------------- tasks --
    def text_to_image(self, settings: EvalSettings, grid: Optional[str] = "text2image") -> dict:
        n = self._subset(settings)
        began = time.perf_counter()
        captions = self.test.captions[:n]
        results = self.generator.text_to_image(
            captions, num_samples=settings.num_samples, sampling=settings.image_sampling(),
            seed=settings.seed, retrieval=settings.retrieval)
        images = np.stack([r.images[0] for r in results])
        exact: list = [None] * n
        if self.test.has_scenes:
            figures, exact = attributes.judge_images(images, self.test.objects[:n])
            figures.update(self.ceiling(n))
        else:
            figures = {"skipped_metrics": {
                "exact_match, attribute_accuracy": attributes.no_verifier(self.test.source)}}
        figures["fid"] = fid.fid(self.features(images), self.real_features(n))
        if n >= 4:  # a noise floor at this sample size: FID of real images against real ones
            real = self.real_features(n)
            figures["fid_real_vs_real_half"] = fid.fid(real[: n // 2], real[n // 2:])
        if self.generator.biencoder is not None:
            from cm3leon_jax.generation import rerank  # noqa: PLC0415

            figures["clip_score"] = float(np.mean(rerank.clip_scores(
                self.generator.biencoder, captions, images[:, None])))
        figures["retrieved_documents"] = float(np.mean([r.retrieved for r in results]))
        figures["seconds"] = time.perf_counter() - began
        if grid and settings.grid_examples:
            path = self.out_dir / f"{grid}.png"
            cells, texts = [], []
            for i in range(min(settings.grid_examples, n)):
                cells += [self.test.images[i], images[i]]
                texts += [f"real: {captions[i]}", f"generated{_verdict(exact[i])}"]
            visualize.save_grid(path, cells, texts, columns=4)
            figures["grid"] = str(path)
        return figures

    def caption(self, settings: EvalSettings) -> dict:
        n = self._subset(settings)
        began = time.perf_counter()
        results = self.generator.caption(self.test.images[:n], seed=settings.seed,
                                         max_new_tokens=settings.max_new_tokens,
                                         retrieval=settings.retrieval)
        texts = [r.texts[0] for r in results]
        # References: the data's caption, plus on `shapes` every template filled with the scene.
        refs = [[c] for c in self.test.captions[:n]]
        if self.test.has_scenes:
            refs = [list(dict.fromkeys(attributes.references(objects) + r))
                    for objects, r in zip(self.test.objects[:n], refs)]
        score, _ = cider.cider_d(texts, refs)
        figures = {"cider_d": score}
        if self.test.has_scenes:
            means = attributes.mean_scores([attributes.caption_scores(t, o)
                                            for t, o in zip(texts, self.test.objects[:n])])
            figures.update({"attribute_accuracy": means.pop("attributes"),
                            "exact_match": means.pop("exact"), "parse_rate": means.pop("parsed")})
            figures.update({f"{name}_accuracy": value for name, value in means.items()})
            # Different scenes should get different captions: a model that ignores the image
            # writes one sentence for all (the share of distinct captions among distinct scenes).
            distinct = {tuple(sorted(objects)) for objects in self.test.objects[:n]}
        else:
            figures["skipped_metrics"] = {
                "attribute_accuracy, exact_match": attributes.no_verifier(self.test.source)}
            distinct = set(self.test.captions[:n])  # images with distinct reference captions
        figures["retrieved_documents"] = float(np.mean([r.retrieved for r in results]))
        figures["distinct_captions"] = len(set(texts)) / max(len(distinct), 1)
        figures["samples"] = [{"reference": self.test.captions[i], "generated": texts[i]}
                              for i in range(min(4, n))]
        figures["seconds"] = time.perf_counter() - began
        if settings.grid_examples:  # each test image with the caption the model wrote for it
            path = self.out_dir / "caption.png"
            shown = range(min(settings.grid_examples, n))
            visualize.save_grid(path, [self.test.images[i] for i in shown],
                                [f"model: {texts[i]}" for i in shown], columns=4)
            figures["grid"] = str(path)
        return figures

    def vqa(self, settings: EvalSettings) -> dict:
        n = self._subset(settings)
        if not any(self.test.questions[:n]):
            return {"skipped": "the test examples carry no question/answer pairs"}
        began = time.perf_counter()
        rows = []
        for i in range(n):
            chosen = self.test.questions[i]
            if settings.questions_per_example:
                chosen = chosen[:settings.questions_per_example]
            rows += [(i, q, a) for q, a in chosen]
        images = self.test.images[[i for i, _, _ in rows]]
        results = self.generator.vqa(images, [q for _, q, _ in rows], seed=settings.seed,
                                     max_new_tokens=min(settings.max_new_tokens, 12))
        answers = [r.texts[0] for r in results]
        right = [vqa.correct(p, a) for p, (_, _, a) in zip(answers, rows)]
        figures = {"accuracy": float(np.mean(right)), "questions": len(rows)}
        for kind in vqa.QUESTION_TYPES:
            picked = [ok for ok, (_, q, _) in zip(right, rows) if vqa.question_type(q) == kind]
            if picked:
                figures[f"{kind}_accuracy"] = float(np.mean(picked))
        figures["samples"] = [{"question": q, "answer": a, "generated": p}
                              for (_, q, a), p in list(zip(rows, answers))[:4]]
        figures["seconds"] = time.perf_counter() - began
        return figures

    def edit(self, settings: EvalSettings, grid: Optional[str] = "edit") -> dict:
        n = self._subset(settings)
        if not self.test.has_edits:
            return {"skipped": "the test examples carry no edit pairs (instruction, edited image)"}
        if not self.test.has_scenes:
            return {"skipped": attributes.no_verifier(self.test.source)}
        began = time.perf_counter()
        results = self.generator.edit(self.test.images[:n], self.test.edit_instructions[:n],
                                      num_samples=settings.num_samples,
                                      sampling=settings.image_sampling(), seed=settings.seed)
        images = np.stack([r.images[0] for r in results])
        figures, exact = attributes.judge_images(images, self.test.edit_objects[:n])
        copy, _ = attributes.judge_images(self.test.images[:n], self.test.edit_objects[:n])
        figures["copy_attribute_accuracy"] = copy["attribute_accuracy"]
        figures["seconds"] = time.perf_counter() - began
        if grid and settings.grid_examples:
            path = self.out_dir / f"{grid}.png"
            cells, texts = [], []
            for i in range(min(settings.grid_examples, n)):
                cells += [self.test.images[i], images[i], self.test.edit_images[i]]
                texts += [f"source; {self.test.edit_instructions[i]}",
                          f"edited{_verdict(exact[i])}", "target"]
            visualize.save_grid(path, cells, texts, columns=3)
            figures["grid"] = str(path)
        return figures

    def run(self, settings: EvalSettings) -> dict:
        """Every task of `settings.tasks` (see the module docstring); the figures by task."""
        settings.check()
        if settings.stage not in (None, self.stage):
            raise ValueError(f"settings ask for stage {settings.stage} but this evaluator "
                             f"loaded {self.stage}")
        began = time.perf_counter()
        figures: dict = {
            "stage": self.stage, "step": self.generator.step, "workdir": self.workdir,
            "num_examples": settings.num_examples, "seed": settings.seed,
            "settings": dataclasses.asdict(settings),
            "retrieval_index_loaded": self.has_retrieval,
            "fid_features": self.features.name, "fid_features_detail": self.features.describe,
            "data_source": self.test.source, "tokenizer": self.tokenizer(),
            "retrieval": self.retrieval_recall()}
        console.say(f"[evaluate] tokenizer: {summary('tokenizer', figures['tokenizer'])}; retrieval: "
                    f"{summary('retrieval', figures['retrieval'])}")
        for task in settings.tasks:
            if task in SFT_ONLY and self.stage != "sft":
                figures[task] = {"skipped": f"{task} needs the instruction-tuned model "
                                            "(W/sft): pretraining never shows this task"}
                continue
            logging.info("evaluating %s on %d examples (%s)", task, settings.num_examples,
                         self.stage)
            figures[task] = getattr(self, {"text2image": "text_to_image"}.get(task, task))(
                settings)
            console.say(f"[evaluate] {task}: {summary(task, figures[task])}")
        figures["seconds"] = time.perf_counter() - began
        return figures


HEADLINES = {"text2image": ("fid", "exact_match", "attribute_accuracy", "clip_score"),
             "caption": ("cider_d", "attribute_accuracy", "exact_match", "distinct_captions"),
             "vqa": ("accuracy",), "edit": ("exact_match", "attribute_accuracy",
                                            "copy_attribute_accuracy"),
             "tokenizer": ("psnr_db", "ssim"),
             "retrieval": ("text_to_image_recall@1", "text_to_image_recall@5",
                           "image_to_text_recall@1")}


def summary(task: str, figures: dict) -> str:
    if "skipped" in figures:
        return f"skipped ({figures['skipped']})"
    parts = [f"{key} {figures[key]:.3f}" for key in HEADLINES[task]
             if isinstance(figures.get(key), (int, float))]
    for skipped, reason in (figures.get("skipped_metrics") or {}).items():
        parts.append(f"{skipped}: {reason.split(' (')[0]}")
    if "seconds" in figures:
        parts.append(f"({figures['seconds']:.0f} s)")
    return ", ".join(parts)


def scalars(figures: dict, prefix: str = "") -> dict[str, float]:
    """Numeric figures flattened to `task/metric` names (TensorBoard)."""
    out = {}
    for task in (*TASKS, "tokenizer", "retrieval"):
        for key, value in (figures.get(task) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{prefix}{task}/{key}"] = float(value)
    return out


def write_tensorboard(workdir: str, step: int, values: dict[str, float]) -> None:
    """Scalars to `W/evaluate/tensorboard` (CLU writer; stdout logging on other processes)."""
    import jax  # noqa: PLC0415
    from clu import metric_writers  # noqa: PLC0415

    writer = metric_writers.create_default_writer(
        str(paths.Workdir(workdir).evaluation / "tensorboard"),
        just_logging=jax.process_index() > 0)
    writer.write_scalars(int(step or 0), values)
    writer.flush()
    writer.close()


def evaluate(workdir: str, settings: EvalSettings,
             cfg: Optional[ml_collections.ConfigDict] = None, fid_weights: str = "") -> dict:
    """Loads W's model (settings.stage), runs `settings`, writes metrics.json ("evaluate") and
    TensorBoard scalars; returns the figures."""
    from cm3leon_jax import results  # noqa: PLC0415

    settings.check()
    stage = settings.stage or generator_lib.default_stage(workdir)
    # The index is loaded only when prompts will use it (`Generator.retrieval_by_default`).
    needs_index = settings.retrieval or (settings.retrieval is None and stage == "pretrain")
    evaluator = Evaluator(workdir, cfg, stage, settings.num_examples, settings.batch_size,
                          retrieval_index=bool(needs_index), fid_weights=fid_weights)
    figures = evaluator.run(settings)
    results.write_metrics(workdir, "evaluate", figures)
    write_tensorboard(workdir, evaluator.generator.step, scalars(figures))
    return figures
