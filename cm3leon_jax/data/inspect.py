"""Show what the model eats: a few training rows of the pipeline, decoded.

    python -m cm3leon_jax.data.inspect --workdir W [--split train] [--rows 3] [--sft] \\
        [--save_images] [--no_retrieval] [--seed 0] [--seq_len 1024] \\
        [--config experiments/<name>.py]
    python -m cm3leon_jax.data.inspect --workdir W --composition 50 --config ...

Reads `<workdir>/prepared` through the same pipeline training uses (`data/input/pipeline.py`, with
the config's `cm3` section, and `sft` with `--sft`) and prints each row segment by segment (one
packed document per segment): text as text, a whole image as `[image 8×8]` (with `--save_images`
also decoded by the VQ-GAN into `<workdir>/inspect/row<r>_seg<s>_img<k>.png`), a run of image codes
that is not a whole image (a CM3 span, a truncated image) as `[N image codes]`, special tokens by
name (`<break>`, `<mask:0>`, `<eos>`).

Parts that carry no loss are printed inside `{ }`: the prompt of an SFT example, CM3 placeholders
when `cm3.placeholder_loss_weight` is 0. (A segment's first token is never a target, as nothing
precedes it in its segment; it is shown like the tokens after it.)

`--composition N` prints, instead, what the rows of N training batches are made of: the share of
the row slots that is padding, image codes, text, structural tokens, appended CM3 spans and
tokens with loss, for pretraining (with and without retrieval; the share the retrieved documents
add) and SFT, and writes them to `<workdir>/inspect/composition.json`.

The vocabulary is `--vocab`, else the one the manifest names (`prepare` records it), else the
workdir's trained or imported one.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Optional

from absl import flags
from etils import epath
import ml_collections
import numpy as np

from cm3leon_jax import cli, paths
from cm3leon_jax.config import CM3Config, cm3_config, sft_config
from cm3leon_jax.data.input import pipeline, sft_tasks

_SPLIT = flags.DEFINE_string("split", "train", "Prepared split to read.")
_ROWS = flags.DEFINE_integer("rows", 3, "Rows to print.")
_SFT = flags.DEFINE_bool("sft", False, "Show instruction-tuning rows instead of pretraining rows.")
_SAVE_IMAGES = flags.DEFINE_bool("save_images", False, "Decode whole images with the VQ-GAN and "
                                 "save them as PNG under <workdir>/inspect.")
_NO_RETRIEVAL = flags.DEFINE_bool("no_retrieval", False, "Pretraining rows without the retrieved "
                                  "documents (the eval 'without retrieval' setting).")
_SEED = flags.DEFINE_integer("seed", 0, "Pipeline seed (the training run's train.seed shows its "
                             "rows).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 0, "Row length; 0 = config.cm3.seq_len (configs "
                                "without a `cm3` section, such as the default demo.py, use the "
                                "CM3Config defaults).")
_VOCAB = flags.DEFINE_string("vocab", "", "Vocabulary directory (default: the manifest's, else "
                             "the workdir's trained or imported one).")
_COMPOSITION = flags.DEFINE_integer(
    "composition", 0, "Instead of printing rows: what share of the row slots of this many "
    "training batches is padding, retrieved documents, CM3 spans, image codes, text, and carries "
    "loss (pretraining and SFT); writes <workdir>/inspect/composition.json.")


def find_vocab(workdir: str, prepared: epath.Path, override: str = ""):
    """The vocabulary: `override`, else the one the manifest records, else the trained one."""
    from cm3leon_jax.vocab import VOCAB_FILE, Vocabulary  # noqa: PLC0415 - only when run

    candidates = [override] if override else []
    recorded = pipeline.read_manifest(prepared).get("vocab", "")
    candidates += [c for c in (recorded, *map(str, paths.Workdir(workdir).vocab_candidates())) if c]
    found = paths.first_existing(candidates, VOCAB_FILE)
    if found is not None:
        return Vocabulary.load(str(found))
    raise FileNotFoundError(f"no vocabulary found (looked in {', '.join(candidates)}); pass "
                            "--vocab DIR")


def _special_name(vocab, token: int) -> str:
    return vocab.special_tokens[token] if 0 <= token < vocab.text_offset else f"<id {token}>"


def render_tokens(vocab, ids: np.ndarray,
                  on_image: Optional[Callable[[np.ndarray], str]] = None) -> str:
    """One run of tokens as readable text (see the module docstring). `on_image(codes [h, w])`
    may return a suffix for a whole image (e.g. where it was saved)."""
    pieces: list[str] = []
    position, count = 0, vocab.code_shape[0] * vocab.code_shape[1]
    ids = [int(t) for t in ids]
    while position < len(ids):
        token = ids[position]
        if vocab.text_offset <= token < vocab.image_offset:
            end = position
            while end < len(ids) and vocab.text_offset <= ids[end] < vocab.image_offset:
                end += 1
            pieces.append(repr(vocab.decode_text(ids[position:end])))
            position = end
        elif token == vocab.boi_id and position + count + 1 < len(ids) and \
                ids[position + count + 1] == vocab.eoi_id and \
                all(vocab.image_offset <= t < vocab.used_size
                    for t in ids[position + 1:position + 1 + count]):
            codes = np.asarray(ids[position + 1:position + 1 + count]) - vocab.image_offset
            shape = "×".join(map(str, vocab.code_shape))
            suffix = on_image(codes.reshape(vocab.code_shape)) if on_image else ""
            pieces.append(f"[image {shape}{suffix}]")
            position += count + 2
        elif vocab.image_offset <= token < vocab.used_size:
            end = position
            while end < len(ids) and vocab.image_offset <= ids[end] < vocab.used_size:
                end += 1
            pieces.append(f"[{end - position} image codes]")
            position = end
        else:
            pieces.append(_special_name(vocab, token))
            position += 1
    return " ".join(pieces)


def render_segment(vocab, ids: np.ndarray, weights: np.ndarray,
                   on_image: Optional[Callable[[np.ndarray], str]] = None) -> str:
    """A packed document with its no-loss parts in `{ }`."""
    weighted = np.asarray(weights) > 0
    if len(weighted) > 1:
        weighted[0] = weighted[1]  # The first token is never a target; don't bracket it alone.
    out, start = [], 0
    for end in list(np.flatnonzero(weighted[1:] != weighted[:-1]) + 1) + [len(ids)]:
        text = render_tokens(vocab, ids[start:end], on_image)
        out.append(text if weighted[start] else "{" + text + "}")
        start = end
    return " ".join(out)


def describe_batch(vocab, batch: dict, first_row: int = 0, rows: Optional[int] = None,
                   on_image: Optional[Callable[[int, int], Callable[[np.ndarray], str]]] = None
                   ) -> list[str]:
    """Lines describing the rows of a batch (numpy dict of the pipeline's features)."""
    lines = []
    count = len(batch["ids"]) if rows is None else min(rows, len(batch["ids"]))
    for row in range(count):
        ids, segment_ids = batch["ids"][row], batch["segment_ids"][row]
        weights = batch["weights"][row]
        number = first_row + row
        tokens = int((segment_ids > 0).sum())
        lines.append(f"row {number}: {segment_ids.max()} segment(s), {tokens:,} tokens, "
                     f"{len(ids) - tokens:,} padding, {int((weights > 0).sum()):,} with loss")
        for segment in range(1, int(segment_ids.max()) + 1):
            where = segment_ids == segment
            task = ""
            if "task_ids" in batch:
                task_id = int(batch["task_ids"][row][where][0])
                task = f" [{sft_tasks.TASKS[task_id]}]"
            hook = on_image(number, segment) if on_image else None
            lines.append(f"  segment {segment}{task} ({int(where.sum()):,} tokens): "
                         + render_segment(vocab, ids[where], weights[where], hook))
    return lines


def _token_counts(vocab, batches) -> dict[str, float]:
    """Counts over row slots: all, padding, image codes, text, structural, CM3 appended spans
    (from the second `<mask:0>` of a document to its end), and tokens with loss."""
    counts = dict.fromkeys(("slots", "padding", "image_codes", "text", "structural",
                            "cm3_appended_spans", "with_loss", "examples"), 0.0)
    first_sentinel = int(vocab.sentinel_ids[0])
    for batch in batches:
        ids, segments = batch["ids"], batch["segment_ids"]
        counts["slots"] += ids.size
        counts["padding"] += float(np.sum(segments == 0))
        real = segments != 0
        image = (ids >= vocab.image_offset) & (ids < vocab.used_size) & real
        text = (ids >= vocab.text_offset) & (ids < vocab.image_offset) & real
        counts["image_codes"] += float(image.sum())
        counts["text"] += float(text.sum())
        counts["structural"] += float((real & ~image & ~text).sum())
        counts["with_loss"] += float(np.sum(batch["weights"] > 0))
        for row in range(ids.shape[0]):
            counts["examples"] += float(len(np.unique(segments[row][segments[row] > 0])))
            for segment in range(1, int(segments[row].max()) + 1):
                where = np.flatnonzero(segments[row] == segment)
                marks = np.flatnonzero(ids[row, where] == first_sentinel)
                if len(marks) >= 2:  # placeholder in the body, then the appended spans
                    counts["cm3_appended_spans"] += float(len(where) - marks[1])
    return counts


def composition(vocab, prepared, cm3: CM3Config, sft, batches: int, batch_size: int = 8,
                seed: int = 0) -> dict[str, dict[str, float]]:
    """Shares of the row slots of `batches` training batches (pretraining with and without the
    retrieved documents, SFT): padding, image codes, text, structural tokens, CM3 spans and
    tokens with loss. `retrieved_documents` is the share of the pretraining rows' tokens that
    the retrieved documents add: 1 - tokens per example without them / tokens per example with
    them (rows are packed, so the same number of rows holds more examples without them;
    `examples` counts the packed examples, one segment each)."""
    host = dict(process_index=0, process_count=1, seed=seed, batch_size=batch_size)
    special = pipeline.special_ids(vocab)

    streams = {
        "pretrain": pipeline.pretrain_dataset(prepared, "train", special, cm3, repeat=False,
                                              **host),
        "pretrain_without_retrieval": pipeline.pretrain_dataset(
            prepared, "train", special, cm3, repeat=False, with_retrieval=False, **host),
        "sft": pipeline.sft_dataset(prepared, "train", vocab, cm3, sft, repeat=False, **host),
    }
    out = {}
    for name, dataset in streams.items():
        counts = _token_counts(vocab, itertools.islice(dataset.as_numpy_iterator(), batches))
        slots = max(counts.pop("slots"), 1.0)
        examples = max(counts.pop("examples"), 1.0)
        tokens = max(slots - counts["padding"], 1.0)
        out[name] = {"rows_slots": slots, "documents_tokens": tokens,
                     "tokens_per_example": tokens / examples,
                     "padding": counts["padding"] / slots,
                     **{key: value / slots for key, value in counts.items() if key != "padding"}}
    with_retrieval = out["pretrain"]["tokens_per_example"]
    without = out["pretrain_without_retrieval"]["tokens_per_example"]
    out["pretrain"]["retrieved_documents"] = 1.0 - without / with_retrieval
    return out


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    prepared = paths.Workdir(workdir).prepared
    manifest = pipeline.read_manifest(prepared)
    vocab = find_vocab(workdir, prepared, _VOCAB.value)
    cm3 = cm3_config(cfg) if "cm3" in cfg else CM3Config()
    if _SEQ_LEN.value:
        cm3 = dataclasses.replace(cm3, seq_len=_SEQ_LEN.value)
        cm3.check("cm3")
    if _COMPOSITION.value:
        import json  # noqa: PLC0415

        shares = composition(vocab, prepared, cm3, sft_config(cfg), _COMPOSITION.value,
                             seed=_SEED.value)
        for stream, figures in shares.items():
            print(f"{stream}: " + ", ".join(
                f"{k} {v:.1%}" if k not in ("rows_slots", "documents_tokens", "tokens_per_example")
                else f"{k} {v:,.0f}"
                for k, v in figures.items()))
        out = paths.Workdir(workdir).inspect / "composition.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(shares, indent=1))
        print(f"figures in {out}")
        return
    batch_size = max(1, _ROWS.value)
    if _SFT.value:
        ds = pipeline.sft_dataset(prepared, _SPLIT.value, vocab, cm3, sft_config(cfg),
                                  batch_size=batch_size, seed=_SEED.value, process_index=0,
                                  process_count=1)
        kind = "instruction tuning"
    else:
        ds = pipeline.pretrain_dataset(prepared, _SPLIT.value, pipeline.special_ids(vocab), cm3,
                                       batch_size=batch_size, seed=_SEED.value,
                                       with_retrieval=not _NO_RETRIEVAL.value, process_index=0,
                                       process_count=1)
        kind = "pretraining" + (" without retrieval" if _NO_RETRIEVAL.value else "")
    batch = next(ds.as_numpy_iterator())

    on_image = None
    if _SAVE_IMAGES.value:
        from cm3leon_jax.tokenizers import grids  # noqa: PLC0415 - only when saving

        tokenizer = vocab.image_tokenizer()
        out_dir = paths.Workdir(workdir).inspect
        out_dir.mkdir(parents=True, exist_ok=True)

        def on_image(row: int, segment: int):
            counter = iter(range(1_000_000))

            def save(codes: np.ndarray) -> str:
                path = out_dir / f"row{row}_seg{segment}_img{next(counter)}.png"
                grids.save_png(path, tokenizer.decode(codes[None])[0])
                return f" → {path}"
            return save

    print(f"{kind} rows of {prepared} (split {_SPLIT.value}, seq_len {cm3.seq_len}, data "
          f"fingerprint {manifest['fingerprint'][:12]}, vocabulary {vocab}).")
    print("Parts in { } carry no loss (SFT prompts, zero-weight CM3 placeholders).")
    for line in describe_batch(vocab, batch, rows=_ROWS.value, on_image=on_image):
        print(line)


if __name__ == "__main__":
    cli.run(main, default_config="demo.py")
