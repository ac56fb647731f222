"""The HTTP side: the REST API for business servers, its API keys, health and metrics, and
the demo and admin pages.

Owns the API (``api``) and its request/response models (``schemas``) and OpenAPI document
(``openapi``), API keys (``api_keys``), idempotent publishing (``idempotency``), liveness,
readiness and metrics (``health``), the pages (``pages``) with their vendored client
(``vendor``); the pages' files stay in pushapp/templates and pushapp/static.

May import: the ingest (publishing goes through its Router), the wire's ``addresses``
(the caller's address behind a trusted proxy), the store, ops (the backlog for /metrics)
and the leaves. Nothing but the app imports it (tests/test_layers.py holds this).
"""
