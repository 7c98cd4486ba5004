"""Clustered unit vectors: a stand-in memory bank for index tests and `benchmarks/retrieval.py`.

Real embedding banks are clumpy (many documents about one thing), which is what a ScaNN tree
exploits and what makes near neighbours hard to separate. Points are a cluster centre (a random unit
vector) plus isotropic Gaussian noise of total norm ~`spread`, normalised to unit length; queries
are drawn the same way from the same centres but are not in the bank.
"""

from __future__ import annotations

import numpy as np


def clustered_unit_vectors(num_points: int, dim: int, num_clusters: int, spread: float,
                           rng: np.random.Generator, centres: np.ndarray | None = None,
                           chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(points float32 [num_points, dim] unit vectors, centres float32 [num_clusters, dim])."""
    if centres is None:
        centres = rng.standard_normal((num_clusters, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = np.empty((num_points, dim), np.float32)
    for start in range(0, num_points, chunk):
        count = min(chunk, num_points - start)
        members = rng.integers(0, len(centres), count)
        noise = rng.standard_normal((count, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        block = centres[members] + noise
        points[start:start + count] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return points, centres
