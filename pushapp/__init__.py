"""pushapp: a Socket.IO chat and push gateway backed by Redis.

Its folders are its layers, and imports go one way (tests/test_layers.py; README, "Code
layout"): the entry points (``app``, ``cli``, ``drain``, ``wsgi``, ``gunicorn_conf``) import
``http``, ``ingest``, ``sockets``; ``http`` imports ``ingest``; ``ingest`` hands over to
``sockets``; ``sockets`` sit on the ``wire``; all of them reach Redis through ``store``.
The leaves ``config``, ``kinds``, ``payloads``, ``ticker``, ``internals``, ``ops.metrics``
and ``ops.logs`` may be imported from anywhere.

``create_app`` is imported lazily so that gunicorn's master can read ``pushapp.config``
without importing Flask, Redis or gevent-sensitive modules before a worker patches them.
"""
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
