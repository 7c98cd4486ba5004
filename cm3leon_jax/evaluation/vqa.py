"""Exact-match VQA accuracy with the usual answer normalisation.

Normalisation (the VQA v2 evaluation's spirit, for one-word/short answers): lower case, the
trailing full stop of the SFT answer template ("{answer}.") and other punctuation removed,
articles (a, an, the) dropped, digits 0-10 written as words ("3" -> "three", the `shapes`
answers' form), American spellings of the two words our answers use ("center", "color") mapped
to the data's, whitespace collapsed. An answer is right when it equals the normalised reference.
Question types come from the `shapes` question templates (`scenes.questions`).
"""

from __future__ import annotations

import re

_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_ARTICLES = {"a", "an", "the"}
_SPELLING = {"center": "centre", "color": "colour", "gray": "grey"}
QUESTION_TYPES = ("count", "colour", "position", "shape", "yes_no", "other")


def normalise(answer: str) -> str:
    words = re.sub(r"[^\w\s]", " ", answer.lower()).split()
    out = []
    for word in words:
        if word in _ARTICLES:
            continue
        if word.isdigit() and int(word) < len(_NUMBERS):
            word = _NUMBERS[int(word)]
        out.append(_SPELLING.get(word, word))
    return " ".join(out)


def correct(prediction: str, reference: str) -> bool:
    return normalise(prediction) == normalise(reference)


def question_type(question: str) -> str:
    q = question.lower().strip()
    for prefix, kind in (("how many", "count"), ("what colour", "colour"), ("what color", "colour"),
                         ("where", "position"), ("what shape", "shape"), ("is there", "yes_no")):
        if q.startswith(prefix):
            return kind
    return "other"
