"""Embeds every training document with the trained bi-encoder and builds the memory-bank index.

    python -m cm3leon_jax.retrieval.build_index --config experiments/retrieval_shapes.py --workdir W

Reads the encoder from `W/retrieval_encoder` (`config.retrieval.encoder_dir`), embeds the train
split (mean of the normalised text and image embeddings, renormalised; a progress line with rate and
ETA), leaves out what the data policy refuses (`config.data` licences and the removals recorded by
`prepare --remove`, counted by reason in the manifest), builds ScaNN or, below
`config.retrieval.exact_search_below` documents, exact search, and saves it to `W/retrieval_index`
(`config.retrieval.index_dir`) with its manifest. The final summary (also `W/metrics.json` stage
"retrieval_index") gives sizes, times, and two sanity figures on a sample of bank documents: how
often a document finds itself first, and the index's recall@10 against exact search (1.0 by construction for exact search).
"""

from __future__ import annotations

import collections
import time

from absl import logging
import ml_collections
import numpy as np

from cm3leon_jax import cli, config, console, results
from cm3leon_jax.data.offline import provenance
from cm3leon_jax.retrieval import corpus, encoder, index

STAGE = "retrieval_index"
SANITY_SAMPLE = 1000


def sanity_figures(built: index.RetrievalIndex, sample: int = SANITY_SAMPLE) -> dict[str, float]:
    """Self-retrieval and recall@10 against exact search (@ the bank size if it is below 10)."""
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(built), size=min(sample, len(built)), replace=False))
    queries = built.embeddings[rows]
    k = min(10, len(built))
    found, _ = built.search(queries, k)
    exact, _ = index.exact_search(built.embeddings, queries, k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact)])
    return {"self_found_first": float(np.mean(found[:, 0] == rows)),
            "recall@10_vs_exact": float(recall), "sanity_queries": int(len(rows))}


def build(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    data = config.data_config(cfg)
    retrieval = config.retrieval_config(cfg)
    biencoder = encoder.load_trained(encoder.encoder_dir(retrieval, workdir))
    policy = provenance.Policy.of_workdir(data, workdir)

    started = time.perf_counter()
    embedded = corpus.embed_split(biencoder, data, workdir, "train", retrieval.embed_batch_size)
    embed_seconds = time.perf_counter() - started

    # The bank obeys the training data's policy (licences, removals): a refused document is
    # never indexed, so it can be nobody's neighbour, in training or at generation time.
    refused = index.refused_rows(embedded.document_ids, embedded.provenance, policy.verdict)
    rows = np.asarray([row for row in range(len(embedded)) if row not in refused], np.int64)
    if not len(rows):
        raise ValueError(f"the data policy {policy.describe()} refuses every one of the "
                         f"{len(embedded)} train documents: nothing to index")
    excluded = collections.Counter(refused.values())
    params = index.parameters_for(retrieval, len(rows))
    logging.info("building the %s index over %d documents (%d refused by the data policy): %s",
                 params.kind, len(rows), len(refused), params)
    built = index.build(embedded.embeddings[rows], [embedded.document_ids[r] for r in rows],
                        embedded.multimodal[rows], params, encoder_model_id=biencoder.model_id,
                        encoder_fingerprint=biencoder.fingerprint,
                        search_batch_size=retrieval.search_batch_size,
                        provenance=[embedded.provenance[r] for r in rows],
                        policy_description=policy.describe(), excluded=dict(excluded))
    directory = built.save(index.index_dir(retrieval, workdir))

    figures = {"documents": len(built), "dim": built.dim, "kind": params.kind,
               "excluded_by_policy": built.manifest["excluded"],
               "multimodal_documents": int(built.multimodal.sum()),
               "embed_seconds": round(embed_seconds, 1),
               "documents_per_second": round(len(embedded) / max(embed_seconds, 1e-9), 1),
               "build_seconds": built.manifest["build_seconds"],
               "parameters": built.manifest["parameters"], "index_dir": str(directory),
               **sanity_figures(built)}
    results.write_metrics(workdir, STAGE, figures)
    summary = (f"index: {figures['documents']} documents x {figures['dim']} ({params.kind}) "
               f"embedded in {figures['embed_seconds']} s ({figures['documents_per_second']}/s), "
               f"built in {figures['build_seconds']} s, saved to {directory}; "
               f"self found first {figures['self_found_first']:.3f}, "
               f"recall@10 vs exact {figures['recall@10_vs_exact']:.3f}")
    logging.info("%s", summary)
    console.say(summary)
    return figures


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    build(cfg, workdir)


if __name__ == "__main__":
    cli.run(main, default_config="retrieval_shapes.py")
