"""Unified vocabulary: disjoint id ranges, document <-> ids round trips, save/load."""

import numpy as np
import pytest

from cm3leon_jax.config import TextTokenizerConfig, VocabConfig
from cm3leon_jax.tokenizers.text import TextTokenizer
from cm3leon_jax.vocab import Image, Special, Text, Vocabulary

CORPUS = ["a small red circle at the top left", "make the square blue", "how many objects?",
          "there is a large green cross on the right"] * 40
CODEBOOK, GRID = 512, (8, 8)


@pytest.fixture(scope="module")
def vocab():
    text = TextTokenizer.train(iter(CORPUS), TextTokenizerConfig(vocab_size=320))
    return Vocabulary(text, CODEBOOK, GRID, config=VocabConfig(num_mask_sentinels=4))


def codes(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CODEBOOK, GRID).astype(np.int32)


def test_layout_and_padding(vocab):
    assert vocab.pad_id == 0
    assert vocab.special_tokens[:6] == ("<pad>", "<eos>", "<break>", "<mask>", "<boi>", "<eoi>")
    assert [vocab.special_tokens[i] for i in vocab.sentinel_ids] == [f"<mask:{i}>"
                                                                     for i in range(4)]
    assert vocab.vocab_size % 128 == 0 and vocab.vocab_size >= vocab.used_size
    assert vocab.used_size == vocab.text_offset + vocab.text_size + CODEBOOK


def test_id_ranges_are_disjoint_and_cover_the_used_ids(vocab):
    special, text, image = vocab.special_mask(), vocab.text_mask(), vocab.image_mask()
    assert not (special & text).any() and not (special & image).any() and not (text & image).any()
    covered = special | text | image
    assert covered[:vocab.used_size].all() and not covered[vocab.used_size:].any()
    assert image.sum() == CODEBOOK and text.sum() == vocab.text_size
    ids = vocab.encode_document([Text("a red circle"), Image(codes(0))])
    assert vocab.is_text(ids).sum() == len(vocab.encode_text("a red circle"))
    assert vocab.is_image(ids).sum() == 64


DOCUMENTS = [
    [Text("a small red circle at the top left"), Image(codes(1))],
    [Image(codes(2)), Text("make the square blue"), Image(codes(3))],
    [Text("emoji 😀 and 漢字 and \x00 control"), Text(""), Text("second text")],
    [Special("<mask>"), Image(codes(4))],
    [Text("prefix"), Special("<mask:2>"), Text("suffix")],
    [Image(codes(5))],
    [],
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_document_round_trip(vocab, document):
    ids = vocab.encode_document(document, add_eos=True)
    assert ids.dtype == np.int32 and ids[-1] == vocab.eos_id
    assert ((ids >= 0) & (ids < vocab.used_size)).all()
    assert vocab.decode_document(ids) == document


def test_image_is_wrapped_and_row_major(vocab):
    grid = codes(6)
    ids = vocab.encode_document([Image(grid)])
    assert ids[0] == vocab.boi_id and ids[-1] == vocab.eoi_id
    np.testing.assert_array_equal(ids[1:-1] - vocab.image_offset, grid.reshape(-1))


def test_breaks_separate_items_and_padding_is_skipped(vocab):
    ids = vocab.encode_document([Text("make the square blue"), Image(codes(7))])
    assert (ids == vocab.break_id).sum() == 1
    padded = np.concatenate([ids, [vocab.eos_id], np.zeros(5, np.int32)])
    assert vocab.decode_document(padded) == [Text("make the square blue"), Image(codes(7))]


def test_masked_sequences_decode_into_items(vocab):
    """A CM3-style sequence (sentinel inside text, no <break>) reads back as its pieces."""
    a, b = vocab.encode_text("a red"), vocab.encode_text(" circle")
    ids = a + [vocab.sentinel_id(0)] + b
    assert vocab.decode_document(ids) == [Text("a red"), Special("<mask:0>"), Text(" circle")]


def test_malformed_images(vocab):
    truncated = [vocab.boi_id] + list(vocab.image_offset + np.arange(10))
    with pytest.raises(ValueError, match="malformed image"):
        vocab.decode_document(truncated)
    assert vocab.decode_document(truncated + [vocab.break_id] + vocab.encode_text("ok"),
                                 strict=False)[-1] == Text("ok")
    with pytest.raises(ValueError, match="image codes only appear"):
        vocab.decode_document([vocab.image_offset + 3])
    with pytest.raises(ValueError, match="shape"):
        vocab.encode_document([Image(np.zeros((4, 4), np.int32))])
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        vocab.encode_document([Image(np.full(GRID, 512, np.int32))])


def test_save_load(vocab, tmp_path):
    vocab.image_tokenizer_path = str(tmp_path / "vqgan" / "image_tokenizer")
    directory = vocab.save(tmp_path / "vocab")
    loaded = Vocabulary.load(directory)
    assert (loaded.vocab_size, loaded.text_offset, loaded.image_offset) == (
        vocab.vocab_size, vocab.text_offset, vocab.image_offset)
    assert loaded.image_tokenizer_path == vocab.image_tokenizer_path
    document = DOCUMENTS[1]
    np.testing.assert_array_equal(loaded.encode_document(document),
                                  vocab.encode_document(document))
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        Vocabulary.load(tmp_path / "nothing")
