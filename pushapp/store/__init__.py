"""The store: everything that talks to Redis.

Owns the ``Store`` (``store``: streams, presence, the lease, heartbeats, key names) and
its Lua scripts (``scripts``), split by hash slot on a Redis Cluster (``slots``), the
inbox stream's commands (``inbox_stream``), the ``Idempotency-Key`` records
(``idempotency_records``), batching of many greenlets' commands into one round trip
(``batching``), clients made from ``REDIS_URL`` (``redis_url``), the capped client that
never holds an oversized channel message whole (``capped``), the listener's subscription
(``subscription``) and key migrations between versions (``migration``).

May import: nothing of pushapp above it, only the leaves (config, kinds, internals,
ticker). Every other layer reaches Redis through it (tests/test_layers.py holds the
direction).
"""
