"""Offline preparation (`python -m cm3leon_jax.data.prepare`, an Apache Beam job): `beam.py` (the
Beam pieces shared with the neighbour job), `provenance.py` (licence policy, removals, data card),
`shards.py` (the token shards it writes, which the training input reads).
"""
