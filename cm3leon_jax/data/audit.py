"""Audit a prepared workdir: print the data card, check every shard against the manifest.

    python -m cm3leon_jax.data.audit --workdir W

Exit status 0 when every shard listed in `W/prepared/manifest.json` exists with its recorded
sha256, the manifest's fingerprint matches those checksums, and the data card describes these
shards; 1 otherwise, with one line per problem (missing shard, corrupt shard, fingerprint mismatch,
card out of date).
"""

from __future__ import annotations

import sys

import ml_collections

from cm3leon_jax import cli, paths
from cm3leon_jax.data.offline import provenance, shards


def problems(workdir: str) -> list[str]:

    root = paths.Workdir(workdir).prepared
    try:
        manifest = shards.read_manifest(root)
    except FileNotFoundError as error:
        return [str(error)]
    found, checksums = [], {}
    for split, entry in manifest["splits"].items():
        for shard in entry["shards"]:
            path = shards.split_dir(root, split) / shard["name"]
            if not path.exists():
                found.append(f"missing shard {split}/{shard['name']}")
                continue
            actual = shards.checksum(path)
            checksums[f"{split}/{shard['name']}"] = actual
            if actual != shard["sha256"]:
                found.append(f"corrupt shard {split}/{shard['name']}: sha256 {actual[:12]}, "
                             f"manifest says {shard['sha256'][:12]}")
    if not found and provenance.fingerprint(checksums) != manifest["fingerprint"]:
        found.append("manifest fingerprint does not match its shards' checksums")
    try:
        card = provenance.read_card(workdir)
    except FileNotFoundError as error:
        found.append(str(error))
    else:
        if card["shards_fingerprint"] != manifest["fingerprint"]:
            found.append("data card describes other shards (fingerprint "
                         f"{card['shards_fingerprint'][:12]} vs {manifest['fingerprint'][:12]})")
    return found


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    del cfg  # the workdir says everything
    try:
        print(provenance.card_markdown(provenance.read_card(workdir)))
    except FileNotFoundError:
        pass  # reported among the problems
    found = problems(workdir)
    for problem in found:
        print(f"PROBLEM: {problem}")
    print("audit: " + ("OK" if not found else f"{len(found)} problem(s)"))
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    cli.run(main, default_config="demo.py")
