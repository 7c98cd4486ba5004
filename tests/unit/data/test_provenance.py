"""Licence policy, removal lists and the data card."""

import json

import ml_collections
import pytest

from cm3leon_jax import config
from cm3leon_jax.data.offline import provenance


def _policy(**data_fields):
    data = config.data_config(ml_collections.ConfigDict({"data": data_fields}))
    return provenance.Policy.from_config(data)


def test_policy_verdicts():
    policy = _policy(allowed_licenses=["CC0-1.0", "CC-BY-4.0"])
    assert policy.verdict({"license": "CC0-1.0"}) is None
    assert policy.verdict({"license": "proprietary"}) == provenance.EXCLUDED_LICENSE
    assert policy.verdict({"license": ""}) == provenance.EXCLUDED_LICENSE
    open_policy = _policy()
    assert open_policy.verdict({"license": "unknown"}) is None
    strict = _policy(require_license=True)
    assert strict.verdict({"license": "unknown"}) == provenance.EXCLUDED_UNKNOWN
    assert strict.verdict({"license": "MIT"}) is None


def test_removal_list_by_id_or_source(tmp_path):
    path = tmp_path / "remove.txt"
    path.write_text("shapes/train/0000001  # asked by email\n\nhttps://x.org/a.jpg\n")
    removed = provenance.read_removals(str(path))
    policy = provenance.Policy(removed=removed)
    assert policy.verdict({"id": "shapes/train/0000001"}) == provenance.EXCLUDED_REMOVED
    assert policy.verdict({"id": "b", "source": "https://x.org/a.jpg"}) == \
        provenance.EXCLUDED_REMOVED
    assert policy.verdict({"id": "c", "source": "https://x.org/b.jpg"}) is None
    with pytest.raises(FileNotFoundError, match="removal list"):
        provenance.read_removals(str(tmp_path / "none.txt"))


def test_card_counts_and_markdown(tmp_path):
    train = provenance.SplitCounts()
    train.keep({"source": "generated:cm3leon_jax.shapes", "license": "CC0-1.0"}, 100)
    train.keep({"source": "https://example.org/a/b.png", "license": "CC-BY-4.0"}, 50)
    train.exclude(provenance.EXCLUDED_LICENSE, 3)
    card = provenance.write_card(str(tmp_path), data_set="shapes", policy=_policy(),
                                 splits={"train": train}, tokenizers={"text": "t.model"},
                                 shards_fingerprint=provenance.fingerprint({"a": "1"}))
    assert card["splits"]["train"]["tokens"] == 150
    assert card["splits"]["train"]["by_source"] == {"generated:cm3leon_jax.shapes": 1,
                                                    "https://example.org": 1}
    assert json.loads((tmp_path / "data_card.json").read_text()) == card
    markdown = (tmp_path / "DATA_CARD.md").read_text()
    assert "licence not allowed: 3" in markdown and "CC-BY-4.0" in markdown
    assert provenance.read_card(str(tmp_path)) == card


def test_fingerprint_changes_with_any_shard():
    assert provenance.fingerprint({"a": "1", "b": "2"}) == provenance.fingerprint({"b": "2",
                                                                                  "a": "1"})
    assert provenance.fingerprint({"a": "1"}) != provenance.fingerprint({"a": "2"})
