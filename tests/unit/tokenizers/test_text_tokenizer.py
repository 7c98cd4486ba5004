"""Text tokenizer: trains in memory, round-trips any Unicode text through byte fallback."""

import os

import pytest

from cm3leon_jax import config as config_lib
from cm3leon_jax.config import ConfigError, TextTokenizerConfig
from cm3leon_jax.tokenizers.text import TextTokenizer

CORPUS = [
    "a small red circle at the top left",
    "there is a large blue square on the right and a small green cross at the bottom",
    "how many objects are there?", "three", "what colour is the triangle?", "purple",
    "make the circle yellow", "move the square to the left", "remove the red cross",
] * 50

ARBITRARY = [
    "a red circle",
    "emoji 😀👍🏽🏳️‍🌈 and CJK 漢字かなカナ한국어",
    "control \x00\x01\x07\t\n\r\x1b\x7f characters",
    "  leading, double  and trailing spaces  ",
    "zero width \u200b\u200d joiner and BOM \ufeff",
    "ｆｕｌｌ width, ℌ𝔢𝔩𝔩𝔬 math letters, combining e\u0301",
    "numbers 1234567890 and symbols <>{}[]#@$%^&*",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer.train(iter(CORPUS), TextTokenizerConfig(vocab_size=400))


@pytest.mark.parametrize("text", ARBITRARY)
def test_round_trip_of_arbitrary_text(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert 0 not in ids  # never <unk>: unseen characters are spelled in bytes
    assert tokenizer.decode(ids) == text


def test_corpus_words_become_few_pieces(tokenizer):
    assert len(tokenizer.encode("a small red circle at the top left")) < 12
    assert tokenizer.vocab_size <= 400


def test_save_load_gives_the_same_ids(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "text.model")
    loaded = TextTokenizer.load(path)
    for text in ARBITRARY:
        assert loaded.encode(text) == tokenizer.encode(text)
    assert sorted(os.listdir(tmp_path)) == ["text.model"]


def test_training_leaves_no_files_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    TextTokenizer.train(iter(CORPUS[:100]), TextTokenizerConfig(vocab_size=300))
    assert os.listdir(tmp_path) == []


def test_train_from_user_file(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    tokenizer = TextTokenizer.train_from_file(corpus, TextTokenizerConfig(vocab_size=300))
    assert tokenizer.decode(tokenizer.encode("move the circle up")) == "move the circle up"


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"text_tokenizer\.vocab_size"):
        config_lib.from_dict({"vocab_size": 100}, TextTokenizerConfig, "text_tokenizer")
    with pytest.raises(ConfigError, match=r"text_tokenizer\.model_type.*'bpe'"):
        config_lib.from_dict({"model_type": "wordpiece"}, TextTokenizerConfig, "text_tokenizer")


def test_decode_rejects_out_of_range_ids(tokenizer):
    with pytest.raises(ValueError, match="text ids must be in"):
        tokenizer.decode([tokenizer.vocab_size + 5])
