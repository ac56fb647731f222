"""pushapp: a Socket.IO chat and push gateway backed by Redis.

``create_app`` is imported lazily so that gunicorn's master can read ``pushapp.config``
without importing Flask, Redis or gevent-sensitive modules before a worker patches them.
"""
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
