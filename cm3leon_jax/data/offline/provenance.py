"""Provenance: the licence policy, removal requests, and the data card a prepared data set ships.

CM3leon's makers trained on licensed data only; a team reproducing that must be able to prove what
went in. Every document carries `source`, `license`, `attribution` from its builder. Preparation
asks `Policy.verdict(doc)` for each document: `None` keeps it, otherwise the reason it is excluded
(counted by reason in the card). The retrieval memory bank is built from kept documents only, so a
refused document can never be anyone's neighbour.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from typing import Iterable, Mapping, Optional

from etils import epath

from cm3leon_jax import paths
from cm3leon_jax.config import DataConfig

UNKNOWN = "unknown"
EXCLUDED_LICENSE = "licence not allowed"
EXCLUDED_UNKNOWN = "licence unknown"
EXCLUDED_REMOVED = "removal request"
# Every removal so far, kept by `prepare` in <workdir>/prepared/: {"ids": [...], "log": [...]}.
REMOVALS_FILE = "removed.json"


def read_removals(path: str) -> frozenset[str]:
    """Ids or source URIs, one per line; blank lines and `#` comments ignored."""
    file = epath.Path(path)
    if not file.exists():
        raise FileNotFoundError(f"removal list {path} does not exist")
    lines = (line.split("#", 1)[0].strip() for line in file.read_text().splitlines())
    return frozenset(line for line in lines if line)


def recorded_removals(prepared_dir: str | epath.Path) -> tuple[frozenset[str], list[dict]]:
    """The removal requests `prepare` has applied so far (ids or source URIs) and their log."""
    path = epath.Path(prepared_dir) / REMOVALS_FILE
    state = json.loads(path.read_text()) if path.exists() else {"ids": [], "log": []}
    return frozenset(state["ids"]), list(state["log"])


@dataclasses.dataclass(frozen=True)
class Policy:
    allowed_licenses: frozenset[str] = frozenset()
    require_license: bool = False
    removed: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, data: DataConfig, removed: Iterable[str] = ()) -> "Policy":
        return cls(frozenset(data.allowed_licenses), data.require_license, frozenset(removed))

    @classmethod
    def of_workdir(cls, data: DataConfig, workdir: str) -> "Policy":
        """The config's licence policy plus every removal recorded in <workdir>/prepared."""
        return cls.from_config(data, recorded_removals(paths.Workdir(workdir).prepared)[0])

    def verdict(self, doc: Mapping[str, str]) -> Optional[str]:
        """None if the document may be used, else the exclusion reason."""
        if doc.get("id") in self.removed or doc.get("source") in self.removed:
            return EXCLUDED_REMOVED
        license_ = doc.get("license") or UNKNOWN
        if self.require_license and license_ == UNKNOWN:
            return EXCLUDED_UNKNOWN
        if self.allowed_licenses and license_ not in self.allowed_licenses:
            return EXCLUDED_LICENSE
        return None

    def describe(self) -> dict:
        return {"allowed_licenses": sorted(self.allowed_licenses) or "any",
                "require_license": self.require_license, "removed_count": len(self.removed)}


@dataclasses.dataclass
class SplitCounts:
    documents: int = 0
    tokens: int = 0
    by_source: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    by_license: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    tokens_by_license: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    excluded: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def keep(self, doc: Mapping[str, str], tokens: int) -> None:
        self.documents += 1
        self.tokens += tokens
        source = doc.get("source") or UNKNOWN
        # Group sources by scheme/host-ish prefix so a card of a billion URLs stays readable.
        self.by_source[source.split("/")[0] if "://" not in source else
                       "/".join(source.split("/")[:3])] += 1
        self.by_license[doc.get("license") or UNKNOWN] += 1
        self.tokens_by_license[doc.get("license") or UNKNOWN] += tokens

    def exclude(self, reason: str, count: int = 1) -> None:
        self.excluded[reason] += count

    def merge(self, other: "SplitCounts") -> None:
        self.documents += other.documents
        self.tokens += other.tokens
        for name in ("by_source", "by_license", "tokens_by_license", "excluded"):
            getattr(self, name).update(getattr(other, name))

    def as_dict(self) -> dict:
        return {"documents": self.documents, "tokens": self.tokens,
                "by_source": dict(sorted(self.by_source.items())),
                "by_license": dict(sorted(self.by_license.items())),
                "tokens_by_license": dict(sorted(self.tokens_by_license.items())),
                "excluded": dict(sorted(self.excluded.items()))}


def fingerprint(files: Mapping[str, str]) -> str:
    """One hash over {shard name: checksum}: what training records and checks on resume."""
    digest = hashlib.sha256()
    for name, checksum in sorted(files.items()):
        digest.update(f"{name}:{checksum}\n".encode())
    return digest.hexdigest()


def write_card(workdir: str, *, data_set: str, policy: Policy, splits: Mapping[str, SplitCounts],
               tokenizers: Mapping[str, str], shards_fingerprint: str,
               removals_log: Iterable[dict] = ()) -> dict:
    """Writes `data_card.json` and `DATA_CARD.md` in workdir; returns the card."""
    card = {
        "data_set": data_set,
        "policy": policy.describe(),
        "splits": {name: counts.as_dict() for name, counts in splits.items()},
        "tokenizers": dict(tokenizers),
        "shards_fingerprint": shards_fingerprint,
        "removals": list(removals_log),
    }
    work = paths.Workdir(workdir)
    work.root.mkdir(parents=True, exist_ok=True)
    work.data_card.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    work.data_card_markdown.write_text(card_markdown(card))
    return card


def card_markdown(card: Mapping) -> str:
    lines = [f"# Data card: {card['data_set']}", "",
             f"Shards fingerprint: `{card['shards_fingerprint']}`", "",
             "## Licence policy", "",
             f"- allowed licences: {card['policy']['allowed_licenses']}",
             f"- require a known licence: {card['policy']['require_license']}",
             f"- documents on the removal list: {card['policy']['removed_count']}", "",
             "## Splits", "",
             "| split | documents | tokens | excluded |", "|---|---|---|---|"]
    for name, split in card["splits"].items():
        excluded = ", ".join(f"{k}: {v}" for k, v in split["excluded"].items()) or "none"
        lines.append(f"| {name} | {split['documents']:,} | {split['tokens']:,} | {excluded} |")
    for title, key in (("By licence (documents)", "by_license"), ("By source (documents)",
                                                                   "by_source")):
        lines += ["", f"## {title}", "", "| split | " + key.split("_")[1] + " | documents |",
                  "|---|---|---|"]
        for name, split in card["splits"].items():
            for value, count in split[key].items():
                lines.append(f"| {name} | {value} | {count:,} |")
    lines += ["", "## Tokenizers", ""]
    lines += [f"- {name}: `{path}`" for name, path in card["tokenizers"].items()]
    if card["removals"]:
        lines += ["", "## Removals", ""]
        lines += [f"- {entry.get('time', '')}: {entry.get('count', 0)} document(s) removed "
                  f"({entry.get('list', '')}), shards rebuilt: {entry.get('rebuilt', [])}"
                  for entry in card["removals"]]
    return "\n".join(lines) + "\n"


def read_card(workdir: str) -> dict:
    path = paths.Workdir(workdir).data_card
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `python -m cm3leon_jax.data.prepare` "
                                "first")
    return json.loads(path.read_text())
