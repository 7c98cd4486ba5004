"""The one map of a project workdir W: what each stage writes where.

Every stage, the generator, export and the audit find their inputs through `Workdir`, so the
layout is written once. A config field that names another place (`data.data_dir`,
`retrieval.encoder_dir`, `retrieval.index_dir`, `prepare.vocab_dir`, `superres.high_tokenizer`)
overrides the default below; the README's layout section is `describe()`'s output.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Optional

from etils import epath

# (path under W, what writes it, what it holds), in the order the chain writes them.
LAYOUT = (
    ("tfds/", "the data's tfds builder",
     "the built `shapes` or folder data set (data.data_dir)"),
    ("tokenizers/vqgan/", "tokenizers.train_all",
     "the VQ-GAN run: checkpoints/, image_tokenizer/ (the export), TensorBoard events"),
    ("tokenizers/reconstructions.png", "tokenizers.train_all",
     "test images over their VQ-GAN reconstructions"),
    ("tokenizers/vocab/", "tokenizers.train_all",
     "the unified vocabulary: vocab.json, the sentencepiece model (prepare.vocab_dir)"),
    ("tokenizers_hr/", "tokenizers.train_vqgan",
     "the super-resolution stage's high-resolution VQ-GAN (superres.high_tokenizer)"),
    ("retrieval_encoder/", "retrieval.train_encoder",
     "the bi-encoder run: checkpoints/, architecture (retrieval.encoder_dir)"),
    ("retrieval_index/", "retrieval.build_index, retrieval.neighbours",
     "the ScaNN memory bank + manifest, neighbours_<split>.npz (retrieval.index_dir)"),
    ("prepared/", "data.prepare",
     "token shards per split, manifest.json (shards, checksums, vocabulary, fingerprint)"),
    ("data_card.json, DATA_CARD.md", "data.prepare", "sources, licences, removals, counts"),
    ("pretrain/", "pretrain",
     "checkpoints/, train_log.jsonl, eval_log.jsonl, TensorBoard events, sample grids"),
    ("sft/", "sft", "the instruction-tuned run, laid out like pretrain/"),
    ("superres/", "superres", "the upsampler's run; upsampler/ is its export for generate"),
    ("evaluate/", "evaluate", "sample grids and TensorBoard events of the task metrics"),
    ("RESULTS.md", "evaluate --table", "the ablation table (unless --results_md names a file)"),
    ("generated/", "generate", "what generate writes unless --out names a file"),
    ("inspect/", "data.inspect", "decoded training rows and the row composition"),
    ("vocab/", "export import", "the vocabulary of a model imported from Hugging Face"),
    ("imported_model.json", "export import", "what was imported from Hugging Face, from where"),
    ("imported_config.py", "export import", "the config to fine-tune the imported model with"),
    ("demo/", "demo", "the pictures the demo shows: reconstructions, samples, upscaled"),
    ("metrics.json", "every stage", "each stage's final figures, one object per stage"),
)

SUPERRES_RUN = "superres"
CHECKPOINTS = "checkpoints"  # inside every run directory (decoder, VQ-GAN, bi-encoder)
TENSORBOARD = "tensorboard"  # the decoder loop's event files, inside its run directory
UPSAMPLER_EXPORT = "upsampler"  # inside the superres run


@dataclasses.dataclass(frozen=True)
class Workdir:
    """Paths inside one project workdir (local or `gs://`)."""

    root: epath.Path

    def __init__(self, root: str | epath.Path):
        object.__setattr__(self, "root", epath.Path(root))

    # Data.
    def tfds(self, data_dir: str = "") -> epath.Path:
        return epath.Path(data_dir) if data_dir else self.root / "tfds"

    @property
    def prepared(self) -> epath.Path:
        return self.root / "prepared"

    @property
    def prepared_manifest(self) -> epath.Path:
        return self.prepared / "manifest.json"

    @property
    def data_card(self) -> epath.Path:
        return self.root / "data_card.json"

    @property
    def data_card_markdown(self) -> epath.Path:
        return self.root / "DATA_CARD.md"

    # Tokenizers.
    @property
    def tokenizers(self) -> epath.Path:
        return self.root / "tokenizers"

    @property
    def vqgan_run(self) -> epath.Path:
        return self.tokenizers / "vqgan"

    @property
    def reconstructions(self) -> epath.Path:
        return self.tokenizers / "reconstructions.png"

    def vocab(self, vocab_dir: str = "") -> epath.Path:
        """The vocabulary data preparation uses: `prepare.vocab_dir`, else the trained one."""
        return epath.Path(vocab_dir) if vocab_dir else self.tokenizers / "vocab"

    @property
    def imported_vocab(self) -> epath.Path:
        return self.root / "vocab"

    def vocab_candidates(self) -> tuple[epath.Path, ...]:
        """Where a workdir without prepared data may hold its vocabulary: trained, then imported."""
        return (self.vocab(), self.imported_vocab)

    def high_tokenizer(self, high_tokenizer: str = "") -> epath.Path:
        return epath.Path(high_tokenizer) if high_tokenizer else self.root / "tokenizers_hr"

    # Retrieval.
    def retrieval_encoder(self, encoder_dir: str = "") -> epath.Path:
        return epath.Path(encoder_dir) if encoder_dir else self.root / "retrieval_encoder"

    def retrieval_index(self, index_dir: str = "") -> epath.Path:
        return epath.Path(index_dir) if index_dir else self.root / "retrieval_index"

    def neighbour_table(self, split: str, index_dir: str = "") -> epath.Path:
        return self.retrieval_index(index_dir) / f"neighbours_{split}.npz"

    # Decoder runs.
    def run(self, stage: str) -> epath.Path:
        return self.root / stage

    def checkpoints(self, stage: str) -> epath.Path:
        return checkpoints_of(self.run(stage))

    def has_checkpoint(self, stage: str) -> bool:
        directory = self.checkpoints(stage)
        return directory.exists() and any(p.name.isdigit() for p in directory.iterdir())

    @property
    def upsampler(self) -> epath.Path:
        return self.run(SUPERRES_RUN) / UPSAMPLER_EXPORT

    @property
    def evaluation(self) -> epath.Path:
        return self.root / "evaluate"

    @property
    def results_table(self) -> epath.Path:
        return self.root / "RESULTS.md"

    @property
    def generated(self) -> epath.Path:
        return self.root / "generated"

    @property
    def inspect(self) -> epath.Path:
        return self.root / "inspect"

    @property
    def imported_model(self) -> epath.Path:
        return self.root / "imported_model.json"

    @property
    def imported_config(self) -> epath.Path:
        return self.root / "imported_config.py"

    @property
    def demo(self) -> epath.Path:
        return self.root / "demo"

    @property
    def metrics(self) -> epath.Path:
        return self.root / "metrics.json"


def checkpoints_of(run_directory: str | epath.Path) -> epath.Path:
    """The Orbax directory inside any run directory (decoder, VQ-GAN, bi-encoder)."""
    return epath.Path(run_directory) / CHECKPOINTS


def tensorboard_of(run_directory: str | epath.Path) -> epath.Path:
    """The decoder loop's TensorBoard directory inside its run directory."""
    return epath.Path(run_directory) / TENSORBOARD


def checkpoint_dirs(path: str | epath.Path,
                    stage: Optional[str] = None) -> list[tuple[epath.Path, str]]:
    """(checkpoints directory, run name) that `path` may mean, in order of preference: a run
    directory or its checkpoints directory as given; else a project workdir's `stage` run, or its
    instruction-tuned run, then its pretrained one."""
    path = epath.Path(path)
    if checkpoints_of(path).exists() or path.name == CHECKPOINTS:
        run = path if path.name != CHECKPOINTS else path.parent
        return [(checkpoints_of(run), run.name)]
    stages = [stage] if stage else ["sft", "pretrain"]
    return [(Workdir(path).checkpoints(name), name) for name in stages]


def describe(width: int = 100) -> str:
    """The layout as the README shows it: each path, what it holds and which command writes it."""
    column = max(len(path) for path, _, _ in LAYOUT) + 2
    lines = ["W/"]
    for path, writer, holds in LAYOUT:
        lines += textwrap.wrap(f"{holds} [{writer}]", width,
                               initial_indent=f"  {path:<{column}}",
                               subsequent_indent=" " * (column + 2))
    return "\n".join(lines)


def first_existing(candidates, marker: str) -> Optional[epath.Path]:
    """The first directory of `candidates` that holds `marker`, or None (empty ones skipped)."""
    for candidate in candidates:
        if candidate and (epath.Path(candidate) / marker).exists():
            return epath.Path(candidate)
    return None
