"""The tokenizers that go with an export, so the directory is self-contained.

Written next to the weights (`export_tokenizers`):

  cm3leon_vocab/vocab.json                    our id layout (`cm3leon_jax/vocab.py`), unchanged
  cm3leon_vocab/text.model                    the sentencepiece model
  cm3leon_vocab/image_tokenizer/config.json   the VQ-GAN's `vqgan` config section
  cm3leon_vocab/image_tokenizer/model.safetensors   its variables, flattened with "/" names
  load_tokenizers.py                          a standalone loader (a copy of `export/loader.py`)
  tokenizer.json, tokenizer_config.json, special_tokens_map.json
                                              a transformers fast tokenizer with *our* ids

Our files live in a subdirectory because transformers reads a top-level `vocab.json` as a BPE
vocabulary. The fast tokenizer is sentencepiece's BPE re-expressed for the `tokenizers` library:
each piece keeps its sentencepiece id plus our `text_offset`, merges are ranked by piece score
(how sentencepiece BPE chooses them), spaces become "▁" without a dummy prefix, unknown characters
fall back to bytes, and every special token and image code is a special added token, so
`tokenizer.encode(text, add_special_tokens=False)` equals `Vocabulary.encode_text(text)`.

How our ids map onto Chameleon's conventions (`chameleon_vocabulary_map`, the config's
`vocabulary_map`): ids are *not* renumbered (the embedding rows stay where they are); the map
names them. Image code c (our id image_offset + c) is named "IMGIMG" + the decimal digits of c
spelled with letters A..J + "Z" (HF decodes exactly this in `ChameleonImageVocabularyMapping`),
our `<boi>`/`<eoi>` keep their names and ids (Chameleon's own are `<racm3:break>` / `<eoss>`),
text pieces keep their sentencepiece strings, and HF's `<image>` placeholder (the id the
processor repeats where `pixel_values` are spliced in) gets the first padding id of our
vocabulary (>= used_size: never produced), when there is one.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import numpy as np

from cm3leon_jax import vocab as vocab_lib

OUR_VOCAB_DIR = "cm3leon_vocab"
IMAGE_TOKENIZER_DIR = "image_tokenizer"
LOADER_FILE = "load_tokenizers.py"
IMAGE_PLACEHOLDER = "<image>"
SPACE = "\u2581"


def image_token_name(code: int) -> str:
    """Chameleon's name of image code `code`: digits as letters A..J between IMGIMG and Z."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(int(code))) + "Z"


def text_pieces(vocab: vocab_lib.Vocabulary) -> list[str]:
    processor = vocab.text_tokenizer.processor
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def chameleon_vocabulary_map(vocab: Optional[vocab_lib.Vocabulary],
                             model_vocab_size: int) -> dict[str, int]:
    """Name -> id for every id the vocabulary uses (module docstring); {} without a vocabulary
    (then HF masks no logits and knows no image tokens)."""
    if vocab is None:
        return {}
    names = {name: vocab.special_id(name) for name in vocab.special_tokens}
    for index, piece in enumerate(text_pieces(vocab)):
        names.setdefault(piece, vocab.text_offset + index)  # a special name always wins
    for code in range(vocab.codebook_size):
        names[image_token_name(code)] = vocab.image_offset + code
    if vocab.used_size < model_vocab_size:
        names[IMAGE_PLACEHOLDER] = vocab.used_size
    return names


def write_image_tokenizer(image_tokenizer_path: str, directory: str) -> str:
    """The VQ-GAN as config.json + model.safetensors (variables flattened with '/')."""
    from safetensors.numpy import save_file  # noqa: PLC0415
    from cm3leon_jax.tokenizers import image_tokenizer  # noqa: PLC0415

    source = image_tokenizer.resolve(image_tokenizer_path)
    os.makedirs(directory, exist_ok=True)
    shutil.copyfile(source / image_tokenizer.CONFIG_FILE,
                    os.path.join(directory, image_tokenizer.CONFIG_FILE))
    tokenizer = image_tokenizer.ImageTokenizer.load(source, batch_size=1)
    flat = {}

    def visit(prefix: str, node) -> None:
        if isinstance(node, dict) or hasattr(node, "items"):
            for key, value in node.items():
                visit(f"{prefix}/{key}" if prefix else str(key), value)
        else:
            flat[prefix] = np.ascontiguousarray(np.asarray(node))

    visit("", dict(tokenizer.variables))
    save_file(flat, os.path.join(directory, "model.safetensors"),
              metadata={"format": "cm3leon_jax.vqgan"})
    return directory


def write_our_vocabulary(vocab: vocab_lib.Vocabulary, out_dir: str) -> str:
    directory = os.path.join(out_dir, OUR_VOCAB_DIR)
    vocab.save(directory)
    layout_path = os.path.join(directory, vocab_lib.VOCAB_FILE)
    with open(layout_path) as handle:
        layout = json.load(handle)
    if vocab.image_tokenizer_path:
        write_image_tokenizer(vocab.image_tokenizer_path,
                              os.path.join(directory, IMAGE_TOKENIZER_DIR))
        layout["image_tokenizer"] = IMAGE_TOKENIZER_DIR
        layout["image_tokenizer_format"] = "safetensors"
    with open(layout_path, "w") as handle:
        json.dump(layout, handle, indent=2)
        handle.write("\n")
    return directory


def _merges(pieces: list[str]) -> list[tuple[str, str]]:
    """BPE merges ranked like sentencepiece chooses them: by the score (= id order) of the merged
    piece; pairs of the same piece by the ids of their parts."""
    index = {piece: i for i, piece in enumerate(pieces)}
    merges = []
    for merged_id, piece in enumerate(pieces):
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                merges.append((merged_id, index[left], index[right], left, right))
    merges.sort()
    return [(left, right) for _, _, _, left, right in merges]


def hf_fast_tokenizer(vocab: vocab_lib.Vocabulary, max_length: Optional[int] = None):
    """A `transformers.PreTrainedTokenizerFast` that reproduces our text ids (module
    docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    processor = vocab.text_tokenizer.processor
    pieces = text_pieces(vocab)
    ids: dict[str, int] = {}
    for index, piece in enumerate(pieces):
        if not processor.is_control(index):
            ids[piece] = vocab.text_offset + index
    specials = {name: vocab.special_id(name) for name in vocab.special_tokens}
    images = {image_token_name(code): vocab.image_offset + code
              for code in range(vocab.codebook_size)}
    ids.update(specials)
    ids.update(images)
    unk = processor.id_to_piece(processor.unk_id())
    model = models.BPE(vocab=ids, merges=_merges(pieces), unk_token=unk, byte_fallback=True,
                       fuse_unk=True)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(),
                                           decoders.Fuse()])
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False)
                                  for name in list(specials) + list(images)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=vocab_lib.PAD, eos_token=vocab_lib.EOS,
        unk_token=unk, mask_token=vocab_lib.MASK,
        additional_special_tokens=[vocab_lib.BREAK, vocab_lib.BOI, vocab_lib.EOI],
        clean_up_tokenization_spaces=False, **({"model_max_length": max_length}
                                              if max_length else {}))


def copy_loader(out_dir: str) -> str:
    target = os.path.join(out_dir, LOADER_FILE)
    shutil.copyfile(os.path.join(os.path.dirname(__file__), "loader.py"), target)
    return target


def export_tokenizers(vocab: vocab_lib.Vocabulary, out_dir: str, model) -> list[str]:
    """Writes every tokenizer file (module docstring); returns notes for the report."""
    notes = []
    if vocab.vocab_size > model.vocab_size:
        notes.append(f"warning: the vocabulary has {vocab.vocab_size} ids but the model only "
                     f"{model.vocab_size}")
    write_our_vocabulary(vocab, out_dir)
    copy_loader(out_dir)
    hf_fast_tokenizer(vocab, model.max_seq_len).save_pretrained(out_dir)
    notes.append(f"tokenizers: {OUR_VOCAB_DIR}/ (ours), tokenizer.json (transformers, our ids), "
                 f"{LOADER_FILE}")
    if not vocab.image_tokenizer_path:
        notes.append("the vocabulary names no VQ-GAN: no image tokenizer was exported")
    return notes
