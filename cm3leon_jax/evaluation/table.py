"""The small-scale version of the paper's ablation table, from one command.

    python -m cm3leon_jax.evaluate --workdir W --table --results_md docs/RESULTS.md

The grid (`Grid`, each axis a flag of the command): stage {pretrain, sft} x retrieval {off, on}
x decoding {top-p, CD-K} x CFG alpha {1, 3, 5}. Only what a factor can change is re-run:

* text-to-image: every cell of the grid (24 evaluations at the defaults);
* captioning: per (stage, retrieval): decoding is greedy and CFG / CD-K guide image tokens only;
* VQA: once, SFT model (its prompts take no retrieved documents, its answers are greedy text);
* editing: per (decoding, CFG), SFT model (no retrieval in editing prompts).

Retrieval-on rows need W's retrieval index; without one they are left out and the table says so.
A stage without a checkpoint is left out the same way. Every evaluation uses the same test
examples, seed and sample count (`EvalSettings`), so rows differ only by the factor named.
Figures go to `W/metrics.json` under "evaluate_table" and the markdown to `--results_md`, between
two marker comments (`write_markdown`): text written by hand around them survives a re-run.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Callable, Optional, Sequence

import ml_collections

from cm3leon_jax import config, paths
from cm3leon_jax.evaluation import tasks


@dataclasses.dataclass(frozen=True)
class Grid:
    stages: tuple[str, ...] = ("pretrain", "sft")
    retrieval: tuple[bool, ...] = (False, True)
    decodings: tuple[str, ...] = config.EVAL_DECODINGS
    cfg_scales: tuple[float, ...] = (1.0, 3.0, 5.0)


def _pick(figures: dict, keys: Sequence[str]) -> dict:
    return {k: figures.get(k) for k in keys}


T2I_KEYS = ("fid", "fid_real_vs_real_half", "exact_match", "attribute_accuracy", "clip_score",
            "vqgan_ceiling_exact_match", "vqgan_ceiling_attribute_accuracy",
            "retrieved_documents", "seconds")
CAPTION_KEYS = ("cider_d", "attribute_accuracy", "exact_match", "retrieved_documents", "seconds")
VQA_KEYS = ("accuracy", "questions", "count_accuracy", "colour_accuracy", "position_accuracy",
            "shape_accuracy", "yes_no_accuracy", "seconds")
EDIT_KEYS = ("exact_match", "attribute_accuracy", "copy_attribute_accuracy", "seconds")


def run_table(workdir: str, base: tasks.EvalSettings, grid: Grid = Grid(),
              cfg: Optional[ml_collections.ConfigDict] = None,
              log: Callable[[str], None] = print, fid_weights: str = "") -> dict:
    """Runs the grid (module docstring); returns {"rows": {task: [row, ...]}, "notes": [...]}."""
    base = dataclasses.replace(base, grid_examples=0).check()
    began = time.perf_counter()
    rows: dict[str, list] = {"text2image": [], "caption": [], "vqa": [], "edit": []}
    notes: list[str] = []
    meta: dict = {}
    for stage in grid.stages:
        if not paths.Workdir(workdir).has_checkpoint(stage):
            notes.append(f"{stage}: no checkpoint in {workdir}/{stage}, rows left out")
            continue
        try:
            evaluator = tasks.Evaluator(workdir, cfg, stage, base.num_examples, base.batch_size,
                                        retrieval_index=any(grid.retrieval),
                                        fid_weights=fid_weights)
            evaluator.index_error = None
        except (ValueError, FileNotFoundError) as error:
            if not any(grid.retrieval) or "index" not in str(error):
                raise
            notes.append(f"{stage}: the retrieval index could not be used, retrieval-on rows "
                         f"left out ({error})")
            evaluator = tasks.Evaluator(workdir, cfg, stage, base.num_examples,
                                        base.batch_size, retrieval_index=False,
                                        fid_weights=fid_weights)
            evaluator.index_error = str(error)
        meta[stage] = {"step": evaluator.generator.step}
        meta["fid_features"] = evaluator.features.describe
        retrievals = [r for r in grid.retrieval if not r or evaluator.has_retrieval]
        if len(retrievals) < len(grid.retrieval) and not evaluator.index_error:
            notes.append(f"{stage}: {workdir} has no retrieval index, retrieval-on rows left out")
        for retrieval in retrievals:
            for decoding in grid.decodings:
                for cfg_scale in grid.cfg_scales:
                    settings = dataclasses.replace(base, stage=stage, retrieval=retrieval,
                                                   decoding=decoding, cfg_scale=cfg_scale)
                    figures = evaluator.text_to_image(settings, grid=None)
                    row = {"stage": stage, "retrieval": retrieval, "decoding": decoding,
                           "cfg_scale": cfg_scale, **_pick(figures, T2I_KEYS)}
                    rows["text2image"].append(row)
                    log(f"[table] text2image {settings.label()}: "
                        f"{tasks.summary('text2image', figures)}")
            settings = dataclasses.replace(base, stage=stage, retrieval=retrieval)
            figures = evaluator.caption(settings)
            rows["caption"].append({"stage": stage, "retrieval": retrieval,
                                    **_pick(figures, CAPTION_KEYS)})
            log(f"[table] caption {stage} retrieval {retrieval}: "
                f"{tasks.summary('caption', figures)}")
        if stage != "sft":
            continue
        settings = dataclasses.replace(base, stage=stage, retrieval=False)
        figures = evaluator.vqa(settings)
        rows["vqa"].append({"stage": stage, **_pick(figures, VQA_KEYS)})
        log(f"[table] vqa: {tasks.summary('vqa', figures)}")
        for decoding in grid.decodings:
            for cfg_scale in grid.cfg_scales:
                settings = dataclasses.replace(base, stage=stage, decoding=decoding,
                                               cfg_scale=cfg_scale)
                figures = evaluator.edit(settings, grid=None)
                rows["edit"].append({"stage": stage, "decoding": decoding,
                                     "cfg_scale": cfg_scale, **_pick(figures, EDIT_KEYS)})
                log(f"[table] edit {settings.label()}: {tasks.summary('edit', figures)}")
    if not meta:
        raise FileNotFoundError(f"{workdir} has no checkpoint for any of {grid.stages}: train "
                                "a model first (python -m cm3leon_jax.demo runs the whole chain)")
    return {"rows": rows, "notes": notes, "models": meta, "grid": dataclasses.asdict(grid),
            "settings": dataclasses.asdict(base), "seconds": time.perf_counter() - began}


# -------------------------------------------------------------------------------- markdown --

def _number(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _decoding(row: dict, settings: dict) -> str:
    if row["decoding"] == "cd_k":
        return f"CD-K (k={settings['cd_k']}, α={settings['cd_alpha']:g})"
    return f"top-p {settings['top_p']:g}"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def markdown(table: dict, workdir: str, command: str) -> str:
    """docs/RESULTS.md from `run_table`'s result."""
    settings, rows = table["settings"], table["rows"]
    models = ", ".join(f"{stage} step {info['step']}" for stage, info in table["models"].items()
                       if isinstance(info, dict))
    out = [
        "## The paper's ablations at small scale (`shapes`)",
        "",
        f"Produced by one command on {datetime.date.today().isoformat()}:",
        "",
        "```",
        command,
        "```",
        "",
        f"Workdir `{workdir}` ({models}); the first {settings['num_examples']} examples of the "
        f"`shapes` test split, seed {settings['seed']}, {settings['num_samples']} sample(s) per "
        f"prompt, image temperature {settings['temperature']:g}; the whole grid took "
        f"{table['seconds'] / 60:.1f} min. Metric definitions: `cm3leon_jax/evaluation/` "
        "(module docstrings). FID features: " + table["models"].get("fid_features", "–") + ".",
        "",
        "The paper's directions to compare against (MS-COCO, 350M-7B models): retrieval "
        "augmentation, classifier-free guidance and CD-K each lower FID; instruction tuning "
        "(SFT) enables editing and VQA. At this scale and sample count differences of a few "
        "points are noise: the `FID real/real` column (FID between two halves of the real "
        "images, n/2 against n/2, so somewhat above the true noise level at n) shows its size.",
        "",
    ]
    for note in table["notes"]:
        out.append(f"- note: {note}")
    if table["notes"]:
        out.append("")
    if rows["text2image"]:
        first = rows["text2image"][0]
        out += ["### Text-to-image", "",
                "Verifier: `exact` = exactly the caption's objects; `attr.` = attributes (shape, "
                "colour, size, position) of the caption's objects read back from the image; "
                "CLIP = the retrieval bi-encoder's text-image cosine. Ceiling: the verifier on "
                "the VQ-GAN's reconstructions of the real test images scores exact "
                f"{_number(first.get('vqgan_ceiling_exact_match'))}, attr. "
                f"{_number(first.get('vqgan_ceiling_attribute_accuracy'))}: no generated image "
                "can do better through this tokenizer.", ""]
        out += _table(
            ["stage", "retrieval", "decoding", "CFG α", "FID ↓", "FID real/real", "exact ↑",
             "attr. ↑", "CLIP ↑"],
            [[r["stage"], _number(r["retrieval"]), _decoding(r, settings),
              f"{r['cfg_scale']:g}", _number(r["fid"], 2), _number(r["fid_real_vs_real_half"], 2),
              _number(r["exact_match"]), _number(r["attribute_accuracy"]),
              _number(r["clip_score"])] for r in rows["text2image"]])
        out.append("")
    if rows["caption"]:
        out += ["### Captioning (greedy)", "",
                "CIDEr-D against the scene's four template captions; `attr.` = colour, shape and "
                "position words of the ground-truth objects found in the caption; `exact` = the "
                "caption parses to exactly the scene's objects.", ""]
        out += _table(["stage", "retrieval", "CIDEr-D ↑", "attr. ↑", "exact ↑"],
                      [[r["stage"], _number(r["retrieval"]), _number(r["cider_d"]),
                        _number(r["attribute_accuracy"]), _number(r["exact_match"])]
                       for r in rows["caption"]])
        out.append("")
    if rows["vqa"]:
        out += ["### VQA (SFT, greedy)", "",
                "Exact match after normalisation; "
                + (f"the first {settings['questions_per_example']} questions of each image "
                   "(count and colour come first)" if settings['questions_per_example']
                   else "every question of each image")
                + ". The pretrained model is not asked (never trained on it).",
                ""]
        kinds = ("count", "colour", "position", "shape", "yes_no")
        out += _table(["stage", "questions", "accuracy ↑", *kinds],
                      [[r["stage"], _number(r["questions"]), _number(r["accuracy"]),
                        *[_number(r.get(f"{k}_accuracy")) for k in kinds]] for r in rows["vqa"]])
        out.append("")
    if rows["edit"]:
        out += ["### Text-guided editing (SFT)", "",
                "Verifier on the edited image against the target scene; `copy` = the score of "
                "returning the source image unchanged (each edit changes one object).", ""]
        out += _table(["decoding", "CFG α", "exact ↑", "attr. ↑", "copy attr."],
                      [[_decoding(r, settings), f"{r['cfg_scale']:g}", _number(r["exact_match"]),
                        _number(r["attribute_accuracy"]), _number(r["copy_attribute_accuracy"])]
                       for r in rows["edit"]])
        out.append("")
    return "\n".join(out)


BEGIN, END = "<!-- evaluate --table: begin -->", "<!-- evaluate --table: end -->"


def write_markdown(path, text: str) -> None:
    """Writes the generated tables to `path`: between the BEGIN / END markers when the file
    already has them (hand-written text around them survives a re-run), else a new file."""
    from etils import epath  # noqa: PLC0415

    path = epath.Path(path)
    block = f"{BEGIN}\n{text.rstrip()}\n{END}\n"
    current = path.read_text() if path.exists() else ""
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        path.write_text(head + block + ("\n" + tail if tail else ""))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Results\n\nMetric definitions: `cm3leon_jax/evaluation/` (module "
                    "docstrings); the command below rewrites only the part between the "
                    "markers.\n\n" + block)
