"""WebDataset / img2dataset tar shards: `key.jpg|jpeg|png|webp` + `key.txt` or `key.json`.

Read with Python's `tarfile` over `etils.epath` (local or gs://), one shard at a time, so a Beam
pipeline reads shards in parallel (`prepare`) and tf.data can stream them (`sources.load`). Bad
members go through the same `images.decode` as user folders and come out as `images.BadImage`
values (never exceptions), so every caller counts them by reason.
"""

from __future__ import annotations

import json
import tarfile
from typing import Iterator, Union

from etils import epath

from cm3leon_jax.data.sources import folder, images

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MISSING_CAPTION = "missing caption"
MALFORMED_JSON = "malformed json"


def shard_paths(pattern: str) -> list[str]:
    path = epath.Path(pattern)
    paths = sorted(str(p) for p in path.parent.glob(path.name))
    if not paths:
        raise FileNotFoundError(f"config.data.webdataset={pattern!r} matches no tar shard")
    return paths


def _groups(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, in the order the tar holds them."""
    current, members = None, {}
    with epath.Path(path).open("rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name
            key, _, extension = name.rpartition(".")
            if key != current and current is not None:
                yield current, members
                members = {}
            current = key
            members[extension.lower()] = tar.extractfile(member).read()
    if current is not None:
        yield current, members


def read_shard(path: str, image_size: int, split: str, validation_fraction: float,
               test_fraction: float, defaults: dict[str, str]
               ) -> Iterator[Union[dict, images.BadImage]]:
    """Documents of `split` in one shard, or BadImage for each sample that could not be used."""
    for key, members in _groups(path):
        if folder.split_of(key, validation_fraction, test_fraction) != split:
            continue
        where = f"{path}:{key}"
        meta = {}
        if "json" in members:
            try:
                meta = json.loads(members["json"])
            except json.JSONDecodeError:
                yield images.BadImage(MALFORMED_JSON, where)
                continue
        caption = members["txt"].decode("utf-8", "replace").strip() if "txt" in members \
            else str(meta.get("caption") or meta.get("text") or "")
        if not caption:
            yield images.BadImage(MISSING_CAPTION, where)
            continue
        data = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
        try:
            if data is None:
                raise images.BadImage("missing file", where)
            pixels = images.decode(data, where, image_size)
        except images.BadImage as bad:
            yield bad
            continue
        yield {"id": f"wds/{key}", "image": pixels, "caption": caption,
               "source": str(meta.get("url") or meta.get("source") or defaults["source"]
                             or where),
               "license": str(meta.get("license") or defaults["license"] or "unknown"),
               "attribution": str(meta.get("attribution") or defaults["attribution"] or "")}
