"""Every private part of pushapp's libraries that pushapp relies on, in one place.

pushapp subclasses classes of python-engineio, python-socketio, gevent-websocket and
redis-py (and adopts the server Flask-SocketIO builds) and overrides or calls methods they document nowhere, because the public API
costs too much per connection or per message (see each module's docstring for the
measure). Such a dependency breaks silently on an upgrade; listed here, it breaks
loudly: pushapp takes these classes and modules from this package only (a test holds
that), and tests/test_internals.py checks, against the installed (pinned) versions, that
every name in each module's ``RELIED_ON`` still exists with the parameters pushapp calls or overrides it with.

One module per library group, each importing only its own library: gunicorn's master
imports the worker class (pushapp.wire.worker, which needs gevent_websocket) before its
workers apply gevent's monkey patching, which must come before redis-py and ssl are
imported, so the master must not import the others. This package imports nothing of
pushapp, so that each layer may use it: the wire (Engine.IO socket and server, the
gevent-websocket handler and worker, the Socket.IO manager), the sockets (python-socketio's
message handling) and the store (redis-py's parser, under the capped pub/sub client).

- ``socketio_engineio``: python-engineio, python-socketio, Flask-SocketIO's server.
- ``gevent_websocket``: gevent-websocket's handler, websocket and gunicorn worker.
- ``redis_parsers``: redis-py's RESP2 parser and socket buffer.

Where a library offers no way to pass pushapp's class (Flask-SocketIO the Socket.IO server,
python-socketio the Engine.IO server, python-engineio each socket, gevent-websocket each
websocket), ``adopt`` swaps the instance's class, here and nowhere else.

When a test there fails after an upgrade: read the library's change for the named method,
adapt the pushapp module that ``why`` names, then the entry here.
"""
from __future__ import annotations

import dataclasses
from typing import Any


def adopt(instance: Any, cls: type) -> None:
    """Make ``instance``, built by a library, an instance of pushapp's subclass ``cls``.

    The one place pushapp swaps a ``__class__``: Flask-SocketIO builds python-socketio's
    server with no way to pass a class (pushapp.sockets.server.GatewayServer),
    python-socketio builds the Engine.IO server likewise (pushapp.wire.transport
    .LeanEngineServer), the Engine.IO server builds each socket in its connect path
    (LeanSocket), and gevent-websocket builds each websocket (QuietWebSocket). Each
    subclass adds no instance ``__init__`` and keeps the base's layout (``__slots__``)."""
    instance.__class__ = cls


@dataclasses.dataclass(frozen=True)
class Reliance:
    """One private (or undocumented) name pushapp uses: ``owner.name``.

    ``params``: the parameter names pushapp calls or overrides it with (``self`` left
    out), or None for an attribute; ``instance``: an attribute set on instances (checked
    in the class's source as ``self.<name>``); ``why``: what pushapp does with it, and
    what breaks if it changes."""

    owner: Any
    name: str
    params: tuple[str, ...] | None
    why: str
    instance: bool = False
