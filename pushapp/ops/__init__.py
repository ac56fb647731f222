"""Operations: what the gateway counts and logs, and what keeps a worker healthy.

Owns the Prometheus metrics (``metrics``) and the structured log format (``logs``), both
leaves any layer may import; the stored-message backlog gauge (``backlog``, which reads the
store); returning freed memory to the system (``memory``); and the embedded redis-server
for development and tests (``embedded_redis``).

May import: the store (``backlog`` only) and the leaves (tests/test_layers.py holds this).
"""
