"""The model card (`README.md`) of an export: Hugging Face's YAML header plus what a user needs.

Built from what the project already records, never typed by hand:
* `<workdir>/data_card.json` (`data/offline/provenance.py`): the data set name for `datasets:`,
  documents, tokens and licences per split, the licence policy and removals;
* `<workdir>/metrics.json` (`results.py`): every stage's final figures; numeric ones become
  `model-index` results (validation losses, perplexities, accuracies, FID, CIDEr, ...);
* the export itself: architecture, sizes, dtype, files, the source checkpoint and step, and how
  our ids map onto the target's conventions.

The header's `license` is the one given to the export (default `other`): a model's licence is
its owner's decision, which the licences of its training documents constrain but do not decide,
so the card lists those licences next to it instead of guessing.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import yaml

from cm3leon_jax import paths
from cm3leon_jax.config import ModelConfig

MAX_CARD_METRICS = 40


def _read_json(path: str) -> Optional[dict]:
    if path and os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    return None


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def card_metrics(metrics: dict) -> list[dict]:
    """`model-index` metric entries from metrics.json: numeric figures of each stage's eval sets
    and final evaluation, plus the final training loss."""
    entries = []

    def add(name: str, kind: str, value: Any) -> None:
        if _numeric(value) and len(entries) < MAX_CARD_METRICS:
            entries.append({"name": name, "type": kind, "value": float(value)})

    for stage, figures in sorted(metrics.items()):
        if not isinstance(figures, dict):
            continue
        add(f"{stage} train loss", "loss", figures.get("train_loss"))
        for eval_set, values in sorted((figures.get("eval") or {}).items()):
            if isinstance(values, dict):
                for key, value in sorted(values.items()):
                    add(f"{stage} {eval_set} {key}", key, value)
        for key, value in sorted(figures.items()):
            if key not in ("train_loss", "eval", "steps", "steps_this_run", "wall_seconds",
                           "skipped_updates", "tokens_per_s", "mfu", "best_eval_loss"):
                add(f"{stage} {key}", key, value)
    return entries


def _licences(card: dict) -> dict[str, int]:
    totals: dict[str, int] = {}
    for split in card.get("splits", {}).values():
        for licence, count in split.get("by_license", {}).items():
            totals[licence] = totals.get(licence, 0) + count
    return totals


def header(model: ModelConfig, name: str, license_id: str, data_card: Optional[dict],
           metrics: Optional[dict]) -> dict:
    meta: dict = {"license": license_id, "library_name": "transformers",
                  "pipeline_tag": "text-generation",
                  "tags": ["cm3leon_jax", model.preset, "mixed-modal", "text-to-image",
                           "image-to-text", "vq-gan"]}
    data_set = (data_card or {}).get("data_set")
    if data_set:
        meta["datasets"] = [data_set]
    entries = card_metrics(metrics or {})
    if entries:
        meta["metrics"] = sorted({entry["type"] for entry in entries})
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "text-generation", "name": "mixed-modal next-token prediction"},
            "dataset": {"name": data_set or "unknown", "type": data_set or "unknown"},
            "metrics": entries}]}]
    return meta


def _usage(model: ModelConfig) -> str:
    if model.preset == "cm3leon":
        return ("```python\nimport torch, transformers\n"
                "model = transformers.OPTForCausalLM.from_pretrained(EXPORT_DIR)\n"
                "tokenizer = transformers.AutoTokenizer.from_pretrained(EXPORT_DIR)\n"
                "ids = torch.tensor([tokenizer.encode(\"a red circle\", "
                "add_special_tokens=False)])\n"
                "out = model.generate(ids, max_new_tokens=32, do_sample=False)\n```\n")
    return ("```python\nimport torch, transformers\n"
            "model = transformers.ChameleonForConditionalGeneration.from_pretrained(EXPORT_DIR)\n"
            "tokenizer = transformers.AutoTokenizer.from_pretrained(EXPORT_DIR)\n"
            "ids = torch.tensor([tokenizer.encode(\"Describe the picture.\", "
            "add_special_tokens=False)])\n"
            "out = model.generate(ids, max_new_tokens=32, do_sample=False)  # text only\n"
            "# all logits, image codes included (HF's forward masks image logits):\n"
            "logits = model.lm_head(model.model(ids).last_hidden_state)\n```\n")


def architecture(model: ModelConfig) -> dict[str, Any]:
    """The model's shape, as the card's architecture table shows it."""
    return {"preset": model.preset, "layers": model.num_layers, "d_model": model.d_model,
            "heads": model.num_heads, "key/value heads": model.kv_heads,
            "MLP width": model.hidden_dim, "vocabulary": model.vocab_size,
            "max sequence": model.max_seq_len, "tied embeddings": model.tie_embeddings,
            "QK-norm": model.qk_norm, "swin-norm": model.swin_norm}


def training_data(data_card: Optional[dict]) -> list[str]:
    """The card's training-data section (markdown lines) from data_card.json."""
    lines = ["", "## Training data", ""]
    if data_card:
        lines.append(f"Data set `{data_card.get('data_set')}`, shards fingerprint "
                     f"`{data_card.get('shards_fingerprint', '')[:16]}`.")
        lines += ["", "| split | documents | tokens |", "|---|---|---|"]
        for split, counts in data_card.get("splits", {}).items():
            lines.append(f"| {split} | {counts.get('documents', 0):,} | "
                         f"{counts.get('tokens', 0):,} |")
        licences = _licences(data_card)
        lines += ["", "Document licences: " + (", ".join(f"{k} ({v:,})" for k, v in
                                                       sorted(licences.items())) or "none")]
        policy = data_card.get("policy", {})
        lines.append(f"Licence policy: allowed {policy.get('allowed_licenses')}, known licence "
                     f"required: {policy.get('require_license')}, documents removed on request: "
                     f"{policy.get('removed_count', 0)}.")
    else:
        lines.append("No data card was found (`data_card.json` is written by "
                     "`python -m cm3leon_jax.data.prepare`).")
    return lines


def results(metrics: Optional[dict]) -> list[str]:
    """The card's results section (markdown lines) from metrics.json."""
    lines: list[str] = []
    entries = card_metrics(metrics or {})
    if entries:
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {e['name']} | {e['value']:.6g} |" for e in entries]
    return lines


def body(model: ModelConfig, report, vocab, data_card: Optional[dict], metrics: Optional[dict],
         provenance: dict, dtype: str) -> str:
    lines = [f"# {os.path.basename(os.path.abspath(report.out_dir))}", "",
             f"A {model.preset} mixed-modal decoder trained with "
             "[cm3leon_jax](https://arxiv.org/abs/2309.02591) (CM3leon recipe: one token stream "
             "of text and VQ-GAN image codes), exported as transformers "
             f"`{report.architecture}` ({dtype}).", "", "## Architecture", "",
             "| field | value |", "|---|---|"]
    rows = {**architecture(model), "tensors": report.num_tensors,
            "bytes": f"{report.tensor_bytes:,}", "files": ", ".join(report.files)}
    lines += [f"| {key} | {value} |" for key, value in rows.items()]
    lines += ["", "## Use", "", _usage(model)]
    lines += ["## Ids and tokenizers", ""]
    if vocab is not None:
        named = ", ".join(f"`{name}`={vocab.special_id(name)}" for name in vocab.special_tokens
                          if not name.startswith("<mask:"))
        lines += [f"One id space: {vocab.text_offset} special tokens ({named}, CM3 sentinels "
                  f"`<mask:i>` from {len(vocab.special_tokens) - vocab.config.num_mask_sentinels})"
                  f", {vocab.text_size} sentencepiece pieces from id {vocab.text_offset}, "
                  f"{vocab.codebook_size} image codes from id {vocab.image_offset} "
                  f"({vocab.code_shape[0]}x{vocab.code_shape[1]} per image, written "
                  "`<boi>` codes `<eoi>`); ids from "
                  f"{vocab.used_size} to {model.vocab_size - 1} are padding.",
                  "`tokenizer.json` encodes text to these ids; `load_tokenizers.py` loads the "
                  "sentencepiece model, the id layout and the VQ-GAN (`cm3leon_vocab/`)."]
    else:
        lines.append("No vocabulary was exported; ids are the model's own.")
    if model.preset == "chameleon":
        lines += ["", "`config.vocabulary_map` names image code c `IMGIMG<c in letters A-J>Z`. "
                  "HF's `ChameleonForConditionalGeneration.forward` sets those logits to the "
                  "float minimum (it generates text only); for image generation read the logits "
                  "as above or use cm3leon_jax."]
    if report.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in report.notes]
    lines += training_data(data_card) + results(metrics)
    if provenance:
        lines += ["", "## Provenance", ""] + [f"- {key}: {value}" for key, value in
                                              provenance.items()]
    return "\n".join(lines) + "\n"


def write_model_card(out_dir: str, model: ModelConfig, report, *, vocab=None,
                     workdir: Optional[str] = None, provenance: Optional[dict] = None,
                     dtype: str = "float32", license_id: str = "other") -> str:
    work = paths.Workdir(workdir) if workdir else None
    data_card = _read_json(str(work.data_card)) if work else None
    metrics = _read_json(str(work.metrics)) if work else None
    name = os.path.basename(os.path.abspath(out_dir))
    text = ("---\n" + yaml.safe_dump(header(model, name, license_id, data_card, metrics),
                                     sort_keys=False) + "---\n\n"
            + body(model, report, vocab, data_card, metrics, provenance or {}, dtype))
    path = os.path.join(out_dir, "README.md")
    with open(path, "w") as handle:
        handle.write(text)
    return path


def run_card(model: ModelConfig, stage: str, step: Optional[int], workdir: str) -> str:
    """The card of a trained, not exported, model (markdown, no YAML header): what the page of
    `python -m cm3leon_jax.serve` shows beside the model."""
    work = paths.Workdir(workdir)
    lines = [f"# {stage} model of {os.path.abspath(workdir)}", "",
             f"A {model.preset} mixed-modal decoder trained with cm3leon_jax (CM3leon recipe: one "
             f"token stream of text and VQ-GAN image codes), checkpoint step {step}.", "",
             "## Architecture", "", "| field | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in architecture(model).items()]
    lines += training_data(_read_json(str(work.data_card)))
    lines += results(_read_json(str(work.metrics)))
    return "\n".join(lines) + "\n"
