"""The memory bank: maximum-inner-product search over document embeddings, saved with a manifest.

Two searchers behind one `RetrievalIndex.search`:

* ScaNN (`scann_ops_pybind.builder(...).tree(...).score_ah(...).reorder(...)`): a k-means tree
  partitions the bank into leaves, asymmetric hashing (4-bit codes of 2-dimension blocks) scores
  the points of the searched leaves, and the best `reorder` of them are re-scored exactly, so the
  returned scores are exact dot products. Sizes derive from the corpus (`scann_parameters`), each
  overridable by `config.retrieval.index_*`.
* exact: a batched, jitted matmul + `lax.top_k` over the whole bank. Used below
  `config.retrieval.exact_search_below` documents (a tree over a few thousand points costs more than
  it saves) and as the reference the benchmark and tests measure ScaNN's recall against.

On disk (`save` / `load`) an index is a directory:

    manifest.json      format version, kind, parameters, encoder {model_id, fingerprint},
                       corpus {size, dim, fingerprint, document_ids_fingerprint}, build time
    embeddings.npy     float32 [N, D] unit vectors (also what the rules' diversity test reads)
    multimodal.npy     bool [N]: document has both an image and a text
    document_ids.json  the N document ids, row order
    provenance.json    each row's {"source", "license"}: the licence policy and removal requests
                       are applied to the bank itself (`filtered`), so a refused or removed
                       document is never a neighbour, in training or at generation time
    scann/shard_<s>/   ScaNN's own serialisation of each shard's tree (relative paths: the
                       directory can move); `config.retrieval.index_shards` trees over contiguous
                       row ranges, searched apart and merged (`ShardedScann`)

The corpus fingerprint is sha256 over the document ids and the embeddings' bytes. `load` recomputes
it from the files (a half-written or edited index is refused) and refuses an index built by another
encoder (`encoder_fingerprint=`) or for another corpus (`document_ids=` / `corpus_fingerprint=`),
with an `IndexMismatch` saying what differs and how to rebuild.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import math
import shutil
import time
from typing import Any, Callable, Optional, Sequence

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax import paths
from cm3leon_jax.config import RetrievalConfig

FORMAT_VERSION = 2  # 2: provenance.json, policy and exclusions in the manifest
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
MULTIMODAL = "multimodal.npy"
DOCUMENT_IDS = "document_ids.json"
PROVENANCE = "provenance.json"
MIN_POINTS_PER_LEAF = 100  # a derived leaf count never leaves k-means fewer points per leaf
SCANN_SUBDIR = "scann"
REBUILD_HINT = ("rebuild it: python -m cm3leon_jax.retrieval.build_index --config <config> "
                "--workdir <workdir>")


class IndexMismatch(ValueError):
    """A saved index that does not belong to the current corpus or encoder (or is damaged)."""


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class IndexParameters:
    """How the bank is searched. For kind='exact' only `num_neighbours` matters."""

    kind: str  # "scann" or "exact"
    num_neighbours: int  # default neighbours per query (the rules' candidate count)
    num_leaves: int = 0
    leaves_to_search: int = 0
    training_sample_size: int = 0
    dims_per_block: int = 2
    ah_training_sample_size: int = 0
    anisotropic_threshold: float = 0.0  # 0: isotropic asymmetric hashing
    reorder: int = 0
    num_shards: int = 1  # ScaNN trees over contiguous row ranges, searched apart and merged


def scann_parameters(corpus_size: int, num_neighbours: int, *, num_leaves: int = 0,
                     leaves_to_search: int = 0, training_sample_size: int = 0,
                     ah_training_sample_size: int = 0, dims_per_block: int = 2,
                     anisotropic_threshold: float = 0.0, reorder: int = 0,
                     num_shards: int = 1) -> IndexParameters:
    """ScaNN sizes for a corpus; each argument left at 0 is derived from `corpus_size`:

    num_leaves = sqrt(N) (ScaNN's rule of thumb; 2 sqrt(N) lost recall in the benchmark), a k-means
    training sample of min(N, max(100 x leaves, 100k)) (50 points per leaf left leaves so poorly
    trained that recall fell to 0.68), asymmetric-hashing codebooks trained on min(N, 30k) points
    (as good as 100k, 4 CPU s faster at 1M), leaves_to_search = max(8, leaves / 80) and reorder =
    max(100, 2 x num_neighbours) exact re-scorings, with isotropic asymmetric hashing. On 1M
    clustered 256-d unit vectors (`benchmarks/retrieval.py`, docs/BENCHMARKS.md) recall@10 is
    limited by the reorder size, not by the leaves searched (6, 12, 24, 48 of 1,000 leaves with
    reorder 100: 0.975, 0.978, 0.981, 0.983; 48 costs 2.5x the time of 12), so the defaults search
    few leaves and re-score enough. Corpora less clustered than that benchmark may need more leaves
    searched: raise `config.retrieval.index_leaves_to_search`.

    num_shards > 1 (`ShardedScann`): every shard is a tree with these parameters, the leaf count
    still derived from the whole bank (sqrt(N)) but at most a shard's size / 100 (k-means needs
    ~100 points per leaf), and the samples capped at a shard's size. Each shard holds a slice of
    every cluster of a well-mixed bank, so its leaves must stay as fine as one tree's: deriving
    them from the shard (sqrt(N / S)) put two of the benchmark's 1,000 clusters in each leaf and
    cost 0.04 of recall@10 at S = 4 (1M points); with sqrt(N) leaves recall rose by 0.013 instead.
    On a small bank (20k points, S = 4) sqrt(N) leaves held 35 points each and lost 0.03: hence
    the 100-point floor.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if corpus_size < 2 * num_shards:
        raise ValueError(f"{num_shards} ScaNN trees need at least 2 documents each, got "
                         f"{corpus_size} documents")
    shard_size = math.ceil(corpus_size / num_shards)
    leaves = num_leaves or max(2, round(math.sqrt(corpus_size)))
    leaves = min(leaves, shard_size) if num_leaves else \
        min(leaves, max(2, shard_size // MIN_POINTS_PER_LEAF))
    to_search = leaves_to_search or max(8, round(leaves / 80))
    sample = training_sample_size or max(100 * leaves, 100_000)
    return IndexParameters(
        kind="scann", num_neighbours=num_neighbours, num_leaves=leaves,
        leaves_to_search=min(to_search, leaves), training_sample_size=min(sample, shard_size),
        ah_training_sample_size=min(ah_training_sample_size or 30_000, shard_size),
        dims_per_block=dims_per_block, anisotropic_threshold=anisotropic_threshold,
        reorder=reorder or max(100, 2 * num_neighbours), num_shards=num_shards)


def parameters_for(retrieval: RetrievalConfig, corpus_size: int) -> IndexParameters:
    """Exact search below `retrieval.exact_search_below`, else ScaNN with the config's overrides."""
    if corpus_size < max(retrieval.exact_search_below, 2):
        return IndexParameters(kind="exact", num_neighbours=retrieval.num_candidates)
    return scann_parameters(
        corpus_size, retrieval.num_candidates, num_leaves=retrieval.index_num_leaves,
        leaves_to_search=retrieval.index_leaves_to_search,
        training_sample_size=retrieval.index_training_sample_size,
        ah_training_sample_size=retrieval.index_ah_training_sample_size,
        dims_per_block=retrieval.index_dims_per_block,
        anisotropic_threshold=retrieval.index_anisotropic_threshold,
        reorder=retrieval.index_reorder, num_shards=retrieval.index_shards)


def index_dir(retrieval: RetrievalConfig, workdir: str) -> epath.Path:
    return paths.Workdir(workdir).retrieval_index(retrieval.index_dir)


# --------------------------------------------------------------------------------------------------
# Exact search (reference, small corpora)
# --------------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("k",))
def _exact_top_k(bank: jax.Array, queries: jax.Array, *, k: int):
    scores = jnp.dot(queries, bank.T, precision=jax.lax.Precision.HIGHEST)
    return jax.lax.top_k(scores, k)


class ExactSearcher:
    """Brute-force maximum inner product: the bank stays on device, queries go in fixed batches
    (padded, so one compilation serves every call)."""

    def __init__(self, bank: np.ndarray, batch_size: int = 1024):
        self.bank = jnp.asarray(bank, jnp.float32)
        self.size = int(bank.shape[0])
        self.batch_size = batch_size

    def search(self, queries: np.ndarray, num_neighbours: int
               ) -> tuple[np.ndarray, np.ndarray]:
        queries = np.asarray(queries, np.float32)
        k = min(num_neighbours, self.size)
        rows = np.full((len(queries), num_neighbours), -1, np.int32)
        scores = np.full((len(queries), num_neighbours), -np.inf, np.float32)
        for start in range(0, len(queries), self.batch_size):
            chunk = queries[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, queries.shape[1]), np.float32)
            padded[:len(chunk)] = chunk
            top_scores, top_rows = _exact_top_k(self.bank, jnp.asarray(padded), k=k)
            rows[start:start + len(chunk), :k] = np.asarray(top_rows)[:len(chunk)]
            scores[start:start + len(chunk), :k] = np.asarray(top_scores)[:len(chunk)]
        return rows, scores


def exact_search(bank: np.ndarray, queries: np.ndarray, num_neighbours: int,
                 batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(rows int32 [Q, k], scores float32 [Q, k]) of the k largest inner products, best first."""
    return ExactSearcher(bank, batch_size).search(queries, num_neighbours)


# --------------------------------------------------------------------------------------------------
# ScaNN
# --------------------------------------------------------------------------------------------------

def build_scann(bank: np.ndarray, params: IndexParameters):
    """A ScaNN searcher (dot product) over `bank` with `params` (kind 'scann')."""
    from scann.scann_ops.py import scann_ops_pybind

    bank = np.ascontiguousarray(bank, np.float32)
    return (scann_ops_pybind.builder(bank, params.num_neighbours, "dot_product")
            .tree(num_leaves=params.num_leaves, num_leaves_to_search=params.leaves_to_search,
                  training_sample_size=params.training_sample_size)
            .score_ah(params.dims_per_block,  # ScaNN reads a NaN threshold as isotropic
                      anisotropic_quantization_threshold=(params.anisotropic_threshold
                                                          or float("nan")),
                      training_sample_size=params.ah_training_sample_size)
            .reorder(params.reorder)
            .build())


def scann_search(searcher, queries: np.ndarray, num_neighbours: int, params: IndexParameters,
                 batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    queries = np.ascontiguousarray(queries, np.float32)
    rows, scores = searcher.search_batched_parallel(
        queries, final_num_neighbors=num_neighbours,
        pre_reorder_num_neighbors=max(params.reorder, num_neighbours),
        leaves_to_search=params.leaves_to_search, batch_size=batch_size)
    rows = np.asarray(rows).astype(np.int64)
    scores = np.asarray(scores, np.float32)
    if rows.shape[1] < num_neighbours:  # fewer points than asked for: pad like exact search
        pad = num_neighbours - rows.shape[1]
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return rows.astype(np.int32), scores


def shard_bounds(corpus_size: int, num_shards: int) -> np.ndarray:
    """int64 [S + 1]: shard s holds bank rows bounds[s] .. bounds[s + 1] - 1 (sizes differ by <= 1)."""
    return np.linspace(0, corpus_size, num_shards + 1).round().astype(np.int64)


def merge_top_k(rows: Sequence[np.ndarray], scores: Sequence[np.ndarray], k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The k best of several searches' (rows int [Q, m], scores float [Q, m]), best first.

    Correct because every shard's scores are exact dot products (ScaNN re-scores its candidates
    exactly before returning them), so scores from different shards compare directly."""
    all_rows = np.concatenate(rows, axis=1)
    all_scores = np.concatenate(scores, axis=1)
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(all_rows, order, axis=1).astype(np.int32),
            np.take_along_axis(all_scores, order, axis=1))


class ShardedScann:
    """The memory bank as S ScaNN trees over contiguous row ranges, each searched on its own and
    the per-shard top-k merged by score.

    A shard is a self-contained searcher (built, saved and loaded alone, `scann/shard_<s>/`), so
    at a scale where no machine holds the bank, each host serves some shards and the caller merges
    their answers with `merge_top_k`; in one process the shards are searched by a thread pool
    (ScaNN releases the GIL during search). With S = 1 this is exactly one ScaNN tree."""

    def __init__(self, searchers: Sequence, bounds: np.ndarray):
        if len(searchers) + 1 != len(bounds):
            raise ValueError(f"{len(searchers)} searchers for {len(bounds) - 1} shards")
        self.searchers, self.bounds = list(searchers), np.asarray(bounds)

    @classmethod
    def build(cls, bank: np.ndarray, params: IndexParameters) -> "ShardedScann":
        bounds = shard_bounds(len(bank), params.num_shards)
        return cls([build_scann(bank[start:stop], params)
                    for start, stop in zip(bounds[:-1], bounds[1:])], bounds)

    def search(self, queries: np.ndarray, num_neighbours: int, params: IndexParameters,
               batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        def one(shard: int):
            rows, scores = scann_search(self.searchers[shard], queries, num_neighbours, params,
                                        batch_size)
            return np.where(rows >= 0, rows + self.bounds[shard], -1), scores

        if len(self.searchers) == 1:
            return one(0)
        with concurrent.futures.ThreadPoolExecutor(len(self.searchers)) as pool:
            answers = list(pool.map(one, range(len(self.searchers))))
        return merge_top_k([r for r, _ in answers], [s for _, s in answers], num_neighbours)

    @staticmethod
    def shard_dir(directory: epath.Path, shard: int) -> epath.Path:
        return directory / f"shard_{shard:05d}"

    def serialize(self, directory: epath.Path) -> None:
        for shard, searcher in enumerate(self.searchers):
            path = self.shard_dir(directory, shard)
            path.mkdir(parents=True)
            searcher.serialize(str(path), relative_path=True)

    @classmethod
    def load(cls, directory: epath.Path, corpus_size: int, num_shards: int) -> "ShardedScann":
        from scann.scann_ops.py import scann_ops_pybind

        return cls([scann_ops_pybind.load_searcher(str(cls.shard_dir(directory, shard)))
                    for shard in range(num_shards)], shard_bounds(corpus_size, num_shards))


# --------------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------------

def document_ids_fingerprint(document_ids: Sequence[str]) -> str:
    digest = hashlib.sha256(f"{len(document_ids)}\n".encode())
    for doc_id in document_ids:
        digest.update(doc_id.encode("utf-8") + b"\0")
    return digest.hexdigest()


def corpus_fingerprint(document_ids: Sequence[str], embeddings: np.ndarray) -> str:
    """sha256 over the document ids (in order) and the float32 embeddings' bytes."""
    embeddings = np.ascontiguousarray(embeddings, np.float32)
    digest = hashlib.sha256(document_ids_fingerprint(document_ids).encode())
    digest.update(f"{embeddings.shape}".encode())
    digest.update(embeddings.tobytes())
    return digest.hexdigest()


def refused_rows(document_ids: Sequence[str], provenance: Sequence[dict],
                 verdict: Callable[[dict], Optional[str]]) -> dict[int, str]:
    """row -> reason for every document `verdict({"id", "source", "license"})` refuses
    (`provenance.Policy.verdict`: licences and removal requests)."""
    refused = {}
    for row, (doc_id, origin) in enumerate(zip(document_ids, provenance)):
        reason = verdict({"id": doc_id, **origin})
        if reason is not None:
            refused[row] = reason
    return refused


class RetrievalIndex:
    """Document embeddings, ids and modality flags with a searcher over them."""

    def __init__(self, embeddings: np.ndarray, document_ids: Sequence[str],
                 multimodal: np.ndarray, params: IndexParameters, manifest: dict[str, Any],
                 searcher=None, search_batch_size: int = 1024,
                 provenance: Optional[Sequence[dict]] = None):
        self.embeddings = np.ascontiguousarray(embeddings, np.float32)
        self.document_ids = list(document_ids)
        self.multimodal = np.asarray(multimodal, bool)
        self.provenance = [dict(p) for p in provenance] if provenance is not None else \
            [{"source": "", "license": ""} for _ in self.document_ids]
        self.params = params
        self.manifest = manifest
        self.search_batch_size = search_batch_size
        self._scann = searcher
        self._exact: Optional[ExactSearcher] = None
        self._row_of: Optional[dict[str, int]] = None

    def __len__(self) -> int:
        return len(self.document_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def row_of(self, document_id: str) -> int:
        """The bank row of a document id, -1 if it is not in the bank."""
        if self._row_of is None:
            self._row_of = {doc_id: row for row, doc_id in enumerate(self.document_ids)}
        return self._row_of.get(document_id, -1)

    def search(self, queries: np.ndarray, num_neighbours: Optional[int] = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(rows int32 [Q, m], scores float32 [Q, m]), best first; rows -1 past the bank's size."""
        num_neighbours = num_neighbours or self.params.num_neighbours
        queries = np.asarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [n, {self.dim}], got {queries.shape}")
        if self.params.kind == "scann":
            return self._scann.search(queries, num_neighbours, self.params,
                                      self.search_batch_size)
        if self._exact is None:
            self._exact = ExactSearcher(self.embeddings, self.search_batch_size)
        return self._exact.search(queries, num_neighbours)

    # ---------------------------------------------------------------------------------- disk

    def save(self, directory: str | epath.Path) -> epath.Path:
        """Writes the index to `directory` (replacing an older one only once complete)."""
        directory = epath.Path(directory)
        staging = directory.parent / (directory.name + ".partial")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        np.save(staging / EMBEDDINGS, self.embeddings)
        np.save(staging / MULTIMODAL, self.multimodal)
        (staging / DOCUMENT_IDS).write_text(json.dumps(self.document_ids))
        (staging / PROVENANCE).write_text(json.dumps(self.provenance))
        if self.params.kind == "scann":
            self._scann.serialize(staging / SCANN_SUBDIR)
        (staging / MANIFEST).write_text(json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")
        if directory.exists():
            # Files kept beside the index (the neighbour tables of `neighbours.py`) survive a
            # rebuild: only the index's own files are replaced.
            for entry in directory.iterdir():
                if not (staging / entry.name).exists():
                    copy = shutil.copytree if entry.is_dir() else shutil.copy2
                    copy(entry, staging / entry.name)
            shutil.rmtree(directory)
        staging.rename(directory)
        return directory

    @classmethod
    def load(cls, directory: str | epath.Path, *, encoder_fingerprint: Optional[str] = None,
             document_ids: Optional[Sequence[str]] = None,
             corpus_fingerprint_expected: Optional[str] = None,
             search_batch_size: int = 1024) -> "RetrievalIndex":
        """Loads an index, refusing one that does not match what the caller expects.

        encoder_fingerprint: of the encoder that will embed queries (`BiEncoder.fingerprint`).
        document_ids: the corpus the caller means (order matters: rows are positions).
        corpus_fingerprint_expected: `corpus_fingerprint(ids, embeddings)` of that corpus.
        """
        directory = epath.Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"no retrieval index at {directory} ({MANIFEST} missing); "
                                    + REBUILD_HINT)
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IndexMismatch(f"index at {directory} has format {manifest.get('format_version')}"
                                f", this code reads {FORMAT_VERSION}; " + REBUILD_HINT)
        built_with = manifest["encoder"]
        if encoder_fingerprint is not None and built_with["fingerprint"] != encoder_fingerprint:
            raise IndexMismatch(
                f"index at {directory} was built with encoder {built_with['model_id']!r} "
                f"(fingerprint {built_with['fingerprint'][:12]}…), but queries would be embedded "
                f"by an encoder with fingerprint {encoder_fingerprint[:12]}…: their scores are not "
                "comparable; " + REBUILD_HINT)
        corpus = manifest["corpus"]
        if document_ids is not None and \
                document_ids_fingerprint(list(document_ids)) != corpus["document_ids_fingerprint"]:
            raise IndexMismatch(
                f"index at {directory} holds another corpus ({corpus['size']} documents) than the "
                f"{len(document_ids)} document ids expected (ids or their order differ); "
                + REBUILD_HINT)
        if corpus_fingerprint_expected is not None and \
                corpus_fingerprint_expected != corpus["fingerprint"]:
            raise IndexMismatch(f"index at {directory} was built for corpus "
                                f"{corpus['fingerprint'][:12]}…, expected "
                                f"{corpus_fingerprint_expected[:12]}…; " + REBUILD_HINT)
        embeddings = np.load(directory / EMBEDDINGS)
        ids = json.loads((directory / DOCUMENT_IDS).read_text())
        if corpus_fingerprint(ids, embeddings) != corpus["fingerprint"]:
            raise IndexMismatch(f"index at {directory} is damaged: its embeddings or document ids "
                                "do not hash to the manifest's corpus fingerprint; " + REBUILD_HINT)
        params = IndexParameters(**manifest["parameters"])
        searcher = None
        if params.kind == "scann":
            searcher = ShardedScann.load(directory / SCANN_SUBDIR, len(ids), params.num_shards)
        return cls(embeddings, ids, np.load(directory / MULTIMODAL), params, manifest, searcher,
                   search_batch_size, json.loads((directory / PROVENANCE).read_text()))

    def filtered(self, verdict: Callable[[dict], Optional[str]], policy_description: dict,
                 params_for: Optional[Callable[[int], IndexParameters]] = None
                 ) -> tuple["RetrievalIndex", collections.Counter]:
        """This index without the documents `verdict` refuses (a licence policy, removals), and
        the count of dropped rows by reason. The searcher is rebuilt over the kept embeddings (no
        re-embedding) with `params_for(kept size)` (e.g. `parameters_for(retrieval, n)`: leaves,
        samples and exact-vs-ScaNN follow the new size), else with this index's parameters; with
        nothing to drop, the index itself is returned."""
        refused = refused_rows(self.document_ids, self.provenance, verdict)
        excluded = collections.Counter(refused.values())
        if not refused:
            return self, excluded
        keep = np.asarray([row not in refused for row in range(len(self))])
        if not keep.any():
            raise ValueError(f"the policy {policy_description} refuses every one of the "
                             f"{len(self)} documents in the retrieval index")
        total = collections.Counter(self.manifest.get("excluded", {})) + excluded
        params = params_for(int(keep.sum())) if params_for is not None else self.params
        kept = build(self.embeddings[keep], [i for i, k in zip(self.document_ids, keep) if k],
                     self.multimodal[keep], params,
                     encoder_model_id=self.manifest["encoder"]["model_id"],
                     encoder_fingerprint=self.manifest["encoder"]["fingerprint"],
                     search_batch_size=self.search_batch_size,
                     provenance=[p for p, k in zip(self.provenance, keep) if k],
                     policy_description=policy_description, excluded=dict(total))
        return kept, excluded


def build(embeddings: np.ndarray, document_ids: Sequence[str], multimodal: np.ndarray,
          params: IndexParameters, *, encoder_model_id: str, encoder_fingerprint: str,
          search_batch_size: int = 1024, provenance: Optional[Sequence[dict]] = None,
          policy_description: Optional[dict] = None, excluded: Optional[dict] = None
          ) -> RetrievalIndex:
    """An index over `embeddings` (float32 [N, D] unit vectors, row i = document_ids[i]).

    provenance: each row's {"source", "license"}; policy_description / excluded: the policy the
    bank was filtered by and the documents it left out, by reason (recorded in the manifest).
    """
    embeddings = np.ascontiguousarray(embeddings, np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(document_ids):
        raise ValueError(f"embeddings {embeddings.shape} do not match {len(document_ids)} ids")
    if len(set(document_ids)) != len(document_ids):
        raise ValueError("document ids must be unique (rows are looked up by id)")
    if len(multimodal) != len(document_ids):
        raise ValueError(f"{len(multimodal)} modality flags for {len(document_ids)} documents")
    if provenance is not None and len(provenance) != len(document_ids):
        raise ValueError(f"{len(provenance)} provenance entries for {len(document_ids)} documents")
    start = time.perf_counter()
    searcher = ShardedScann.build(embeddings, params) if params.kind == "scann" else None
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": params.kind,
        "parameters": dataclasses.asdict(params),
        "encoder": {"model_id": encoder_model_id, "fingerprint": encoder_fingerprint},
        "corpus": {"size": len(document_ids), "dim": int(embeddings.shape[1]),
                   "fingerprint": corpus_fingerprint(document_ids, embeddings),
                   "document_ids_fingerprint": document_ids_fingerprint(document_ids),
                   "multimodal": int(np.sum(multimodal))},
        "policy": policy_description or {"allowed_licenses": "any", "require_license": False,
                                         "removed_count": 0},
        "excluded": dict(excluded or {}),
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    return RetrievalIndex(embeddings, document_ids, multimodal, params, manifest, searcher,
                          search_batch_size, provenance)
