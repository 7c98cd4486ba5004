"""Layout of one training example: documents as token segments, joined into one id sequence.

A *document* is a caption and/or an image. Rendered, its segments are joined by `<break>` and its
image is wrapped in `<boi> codes <eoi>`:

    caption then image:  text <break> <boi> codes <eoi>
    image then caption:  <boi> codes <eoi> <break> text

Which order a training example uses is a per-example random choice (`draw_image_first`, probability
`config.cm3.image_first_probability`): caption-then-image examples teach text-to-image generation,
image-then-caption examples teach captioning, and one model learns both from the same data. The
choice holds for every document of the example, so the retrieved documents demonstrate the same
direction as the query (an in-context pattern the model can copy, as at text-to-image inference).

An *example* puts the retrieved documents first (CM3leon's retrieval-augmented layout):

    ret_1 <break> ret_2 <break> query <eos>

Empty documents (no text, no image) are left out, so no `<break>` is ever doubled. Loss is taken on
every token, retrieved ones included, so the layout returns ids only (CM3 masking adds the weights).

Inputs are int arrays already in the unified id space: text piece ids and image codes already
offset by the caller (`cm3leon_jax/vocab.py` knows the offsets). A special id inside them is an
offset bug and raises. `layout_example_tf` runs the same numpy code inside tf.data.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from cm3leon_jax.data.input.cm3 import SpecialIds

TEXT = "text"
IMAGE = "image"
MODALITIES = (TEXT, IMAGE)


@dataclasses.dataclass(frozen=True)
class Document:
    """One document of an example: caption token ids and/or image codes (unified id space)."""

    text: Any = None
    image: Any = None


def draw_image_first(rng: np.random.Generator, image_first_probability: float) -> bool:
    """The per-example order choice: True puts images before captions in every document."""
    return bool(rng.random() < image_first_probability)


def _content(ids: Any, what: str, special: SpecialIds) -> np.ndarray:
    ids = np.zeros(0, np.int32) if ids is None else np.asarray(ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"{what} must be a 1-D int id array, got shape {ids.shape} {ids.dtype}")
    if ids.size and (ids.min() < 0 or special.is_structural(ids).any()):
        bad = ids[(ids < 0) | special.is_structural(np.maximum(ids, 0))][:5].tolist()
        raise ValueError(f"{what} holds special or negative ids {bad}: content ids must be offset "
                         "into the unified vocabulary, clear of <pad>/<eos>/<break>/<boi>/<eoi>/"
                         "sentinels")
    return ids.astype(np.int32, copy=False)


def render_segments(segments: Sequence[tuple[str, Any]], special: SpecialIds) -> np.ndarray:
    """Renders `(modality, ids)` segments in the given order: `<break>`-joined, images wrapped.

    For documents with several images or text runs (interleaved web documents). Empty segments are
    skipped.
    """
    pieces: list[np.ndarray] = []
    for index, (modality, ids) in enumerate(segments):
        if modality not in MODALITIES:
            raise ValueError(f"segment {index} has modality {modality!r}; allowed: {MODALITIES}")
        ids = _content(ids, f"segment {index} ({modality})", special)
        if not ids.size:
            continue
        if pieces:
            pieces.append(np.array([special.break_], np.int32))
        if modality == IMAGE:
            ids = np.concatenate([[special.boi], ids, [special.eoi]]).astype(np.int32)
        pieces.append(ids)
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


def render_document(document: Document, special: SpecialIds, image_first: bool) -> np.ndarray:
    """`text <break> <boi> codes <eoi>`, or image first; a missing part leaves no `<break>`."""
    segments = [(TEXT, document.text), (IMAGE, document.image)]
    return render_segments(segments[::-1] if image_first else segments, special)


def join_documents(rendered: Sequence[Any], special: SpecialIds) -> np.ndarray:
    """`doc_1 <break> doc_2 <break> ... doc_k <eos>` from rendered documents (empties skipped)."""
    pieces: list[np.ndarray] = []
    for ids in rendered:
        ids = np.asarray(ids, np.int32)
        if not ids.size:
            continue
        if pieces:
            pieces.append(np.array([special.break_], np.int32))
        pieces.append(ids)
    pieces.append(np.array([special.eos], np.int32))
    return np.concatenate(pieces)


def layout_example(query: Document, retrieved: Sequence[Document], special: SpecialIds,
                   image_first: bool) -> np.ndarray:
    """`ret_1 <break> ret_2 <break> query <eos>` (int32), every document in the same order.

    Raises ValueError when the query has neither text nor image: an example must have a query.
    """
    rendered_query = render_document(query, special, image_first)
    if not rendered_query.size:
        raise ValueError("the query document is empty (no text, no image)")
    rendered = [render_document(document, special, image_first) for document in retrieved]
    return join_documents(rendered + [rendered_query], special)


def layout_example_tf(query_text: Any, query_image: Any, retrieved_text: Any, retrieved_image: Any,
                      image_first: Any, special: SpecialIds) -> Any:
    """tf.data version of `layout_example`: int32 `[None]`, equal to it for the same inputs.

    query_text / query_image: int vectors (empty for a missing part). retrieved_text /
    retrieved_image: `tf.RaggedTensor`s `[num_retrieved, None]` (row i = retrieved document i; an
    empty row = missing part). image_first: scalar bool tensor, e.g. `stateless_uniform(seed) < p`.
    """
    import tensorflow as tf  # Lazily: numpy users of this module should not pay for TF's import.

    def layout(q_text, q_image, r_text, r_text_splits, r_image, r_image_splits, first):
        text_rows = [r_text[a:b] for a, b in zip(r_text_splits[:-1], r_text_splits[1:])]
        image_rows = [r_image[a:b] for a, b in zip(r_image_splits[:-1], r_image_splits[1:])]
        if len(text_rows) != len(image_rows):
            raise ValueError(f"{len(text_rows)} retrieved texts but {len(image_rows)} images")
        retrieved = [Document(text=t, image=i) for t, i in zip(text_rows, image_rows)]
        return layout_example(Document(text=q_text, image=q_image), retrieved, special,
                              bool(first))

    def flat(ragged: Any) -> tuple[Any, Any]:
        ragged = tf.cast(ragged, tf.int32)
        return ragged.flat_values, tf.cast(ragged.row_splits, tf.int64)

    text_values, text_splits = flat(retrieved_text)
    image_values, image_splits = flat(retrieved_image)
    ids = tf.numpy_function(
        layout, [tf.cast(query_text, tf.int32), tf.cast(query_image, tf.int32), text_values,
                 text_splits, image_values, image_splits, tf.cast(image_first, tf.bool)],
        tf.int32, stateful=False, name="layout_example")
    ids.set_shape([None])
    return ids
