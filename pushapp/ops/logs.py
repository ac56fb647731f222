"""Log lines, plain for people or one JSON object a line for log pipelines (``LOG_FORMAT``).

Socket lifecycle lines (connect, login, kick, disconnect) go through ``event`` so that both
formats carry the same fields: ``login user=alice device=d1 sid=… address=…`` in plain
text, ``{"event": "login", "user": "alice", …}`` in JSON. Only the standard library and
orjson are used: gunicorn's master imports this to format its own lines the same way.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from ..config import Config

PLAIN = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, pid, logger, message, the event's fields,
    and the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup(config: Config) -> None:
    """Format the root logger's output as ``LOG_FORMAT`` asks, at ``LOG_LEVEL``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if config.log_format == "json" else
                         logging.Formatter(PLAIN))
    logging.basicConfig(level=config.log_level, handlers=[handler], force=True)


def event(log: logging.Logger, name: str, **fields: Any) -> None:
    """One line for a socket's lifecycle event, with its fields in both formats."""
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    log.info("%s %s", name, text, extra={"fields": {"event": name, **fields}})
