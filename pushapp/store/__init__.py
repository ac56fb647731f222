"""The store: everything that talks to Redis.

Owns the ``Store`` and its Lua scripts (``store``: streams, presence, the lease,
heartbeats, key names), batching of many greenlets' commands into one round trip
(``batching``), clients made from ``REDIS_URL`` (``redis_url``), the capped pub/sub client
that never holds an oversized message whole (``capped``) and key migrations between
versions (``migration``).

May import: nothing of pushapp above it, only the leaves (config, kinds, internals,
ticker, ops.metrics). Every other layer reaches Redis through it (tests/test_layers.py
holds the direction).
"""
