"""tfds builder for a user's folder of images plus `captions.jsonl`.

Layout:

    my_data/
      captions.jsonl   one JSON object per line: {"image": "a.png", "caption": "...", ...}
      dataset.json     optional folder-wide defaults: {"license": ..., "source": ..., "attribution":
      ...} a.png  b.jpg  sub/c.webp ...

Optional per-line fields `license` (SPDX id where one exists), `source`, `attribution` override the
folder defaults, which override `config.data.default_*`; what is still missing is recorded as
`license: unknown` (visible, not invented). Other fields are kept as JSON in `extra`.

Images are converted to RGB (CMYK, greyscale, palette, alpha) and centre-cropped/resized to
`data.image_size`. Bad input never stops the build: malformed lines and missing, empty, truncated or
non-image files are skipped, counted by reason, the first few named in the log, and the counts kept
in the data set's metadata (`skipped_by_reason`) for the data card.

Splits are chosen by a hash of the image path, so adding images never moves old ones between splits.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from typing import Iterator

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from cm3leon_jax.data.sources import images

MALFORMED_LINE = "malformed captions.jsonl line"
PROVENANCE_FIELDS = ("source", "license", "attribution")
UNKNOWN_LICENSE = "unknown"
_SHOW_FIRST = 5


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
    folder: str = ""
    image_size: int = 32
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    default_license: str = ""
    default_source: str = ""
    default_attribution: str = ""

    @classmethod
    def for_folder(cls, **kwargs) -> "FolderConfig":
        """Config named by a fingerprint of captions.jsonl, dataset.json and the listed files' sizes,
        so a changed folder is rebuilt rather than read from a stale cache."""
        probe = cls(name="probe", **kwargs)
        folder = epath.Path(probe.folder)
        if not (folder / "captions.jsonl").exists():
            raise FileNotFoundError(f"{folder}: no captions.jsonl (expected one JSON object per "
                                    "line with 'image' and 'caption')")
        digest = hashlib.sha256(repr(sorted(kwargs.items())).encode())
        for name in ("captions.jsonl", "dataset.json"):
            if (folder / name).exists():
                digest.update((folder / name).read_bytes())
        for record in read_lines(folder, SkipReport()):
            image = folder / record["image"]
            length = image.stat().length if image.exists() else -1
            digest.update(f"{record['image']}:{length}".encode())
        return cls(name=f"s{probe.image_size}_{digest.hexdigest()[:12]}", **kwargs)


def split_of(image_name: str, validation_fraction: float, test_fraction: float) -> str:
    bucket = int.from_bytes(hashlib.sha256(image_name.encode()).digest()[:8], "little") / 2**64
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + validation_fraction:
        return "validation"
    return "train"


@dataclasses.dataclass
class SkipReport:
    """Counts of skipped inputs by reason, with the first few examples of each."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))

    def add(self, reason: str, what: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < _SHOW_FIRST:
            self.examples[reason].append(what)

    def log(self, where: str) -> None:
        if not self.counts:
            logging.info("%s: nothing skipped", where)
            return
        for reason, count in sorted(self.counts.items()):
            logging.warning("%s: skipped %d (%s), e.g. %s", where, count, reason,
                            "; ".join(self.examples[reason]))


def read_lines(folder: epath.Path, report: SkipReport) -> list[dict]:
    """Valid records of captions.jsonl; malformed lines go to the report."""
    records = []
    text = (folder / "captions.jsonl").read_bytes().decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            report.add(MALFORMED_LINE, f"line {number}: {error.msg}")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) \
                or not isinstance(record.get("caption"), str):
            report.add(MALFORMED_LINE, f"line {number}: needs string fields 'image' and 'caption'")
            continue
        record["_line"] = number
        records.append(record)
    return records


class Folder(tfds.core.GeneratorBasedBuilder):
    """A user folder of captioned images (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = []

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "image": tfds.features.Image(shape=(size, size, 3)),
                "caption": tfds.features.Text(),
                "source": tfds.features.Text(),
                "license": tfds.features.Text(),
                "attribution": tfds.features.Text(),
                "extra": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _defaults(self, folder: epath.Path) -> dict[str, str]:
        config = self.builder_config
        defaults = {"license": config.default_license, "source": config.default_source,
                    "attribution": config.default_attribution}
        dataset_json = folder / "dataset.json"
        if dataset_json.exists():
            try:
                folder_defaults = json.loads(dataset_json.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{dataset_json}: not valid JSON ({error.msg})") from None
            defaults.update({k: str(v) for k, v in folder_defaults.items()
                             if k in PROVENANCE_FIELDS and v})
        return defaults

    def _split_generators(self, dl_manager):
        """Checks every listed image once up front, so that the report is complete before writing
        and a split with no good image is left out (tfds cannot write an empty split)."""
        del dl_manager
        config = self.builder_config
        folder = epath.Path(config.folder)
        report = SkipReport()
        by_split = collections.defaultdict(list)
        for record in read_lines(folder, report):
            try:
                images.read(str(folder / record["image"]), config.image_size)
            except images.BadImage as bad:
                report.add(bad.reason, f"{record['image']} (line {record['_line']})")
                continue
            by_split[split_of(record["image"], config.validation_fraction,
                              config.test_fraction)].append(record)
        report.log(f"folder {folder}")
        self.info.metadata["skipped_by_reason"] = dict(report.counts)
        self.info.metadata["skipped_examples"] = dict(report.examples)
        if not by_split:
            raise ValueError(f"folder {folder}: no usable image-caption pair "
                             f"(skipped: {dict(report.counts)})")
        defaults = self._defaults(folder)
        return {split: self._generate_examples(folder, records, defaults)
                for split, records in by_split.items()}

    def _generate_examples(self, folder: epath.Path, records: list[dict],
                           defaults: dict[str, str]) -> Iterator[tuple[str, dict]]:
        size = self.builder_config.image_size
        for record in records:
            provenance = {field: str(record.get(field) or defaults[field]) for field in
                          PROVENANCE_FIELDS}
            provenance["license"] = provenance["license"] or UNKNOWN_LICENSE
            provenance["source"] = provenance["source"] or f"folder:{record['image']}"
            extra = {k: v for k, v in record.items()
                     if k not in ("image", "caption", "_line", *PROVENANCE_FIELDS)}
            yield record["image"], {
                "id": f"folder/{record['image']}",
                "image": images.read(str(folder / record["image"]), size),
                "caption": record["caption"],
                "extra": json.dumps(extra, sort_keys=True),
                **provenance,
            }


def skipped_by_reason(builder: Folder) -> dict[str, int]:
    """Skip counts recorded when the folder data set was built."""
    return dict(builder.info.metadata.get("skipped_by_reason", {}))
