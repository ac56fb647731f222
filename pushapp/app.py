"""The application factory: one Flask app, its Socket.IO server and the Redis listener."""
from __future__ import annotations

import dataclasses
import logging
import resource

import gevent
from flask import Flask
from flask_socketio import SocketIO

from . import payloads
from .config import Config, ConfigError
from .drain import Drain
from .http import api, health, pages
from .ingest.lease import node_name
from .ingest.listener import Listener
from .ingest.routing import Router
from .ops import backlog, logs
from .ops.memory import MemoryReturn
from .sockets.connections import Connections
from .sockets.delivery import Delivery
from .sockets.events import Events
from .sockets.server import GatewayServer
from .store import migration
from .store.redis_url import connect
from .store.store import Store
from .wire.limits import Limits
from .wire.manager import GatewayManager
from .wire.transport import LeanEngineServer


@dataclasses.dataclass
class Gateway:
    """The running parts, kept in ``app.extensions["pushapp"]``."""

    config: Config
    socketio: SocketIO
    store: Store
    delivery: Delivery
    router: Router
    listener: Listener
    drain: Drain
    limits: Limits

    expiry_watch: gevent.Greenlet
    memory_watch: gevent.Greenlet
    backlog_count: gevent.Greenlet

    def close(self) -> None:
        self.expiry_watch.kill(block=False)
        self.memory_watch.kill(block=False)
        self.backlog_count.kill(block=False)
        self.socketio.server.eio.pinger.stop()
        self.socketio.server.eio.login_watch.stop()
        self.listener.close()


def create_app(config: Config | None = None) -> Flask:
    """Build the gateway for one worker process and start its Redis listener."""
    config = config or Config.from_env()
    if not config.redis_url:
        raise ConfigError("REDIS_URL is not set: point it at a Redis server, or start the "
                          "gateway with bin/serve, which starts an embedded one")
    logs.setup(config)
    # gevent-websocket logs every HTTP request and websocket upgrade at INFO.
    logging.getLogger("geventwebsocket.handler").setLevel(
        max(logging.WARNING, logging.getLogger().level))

    # The pages' blueprint serves /static itself.
    app = Flask(__name__, static_folder=None)
    socketio = SocketIO(
        app,
        async_mode="gevent",
        async_handlers=False,
        json=payloads.SocketIOJSON,
        client_manager=GatewayManager(),
        manage_session=False,
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
        max_http_buffer_size=config.max_frame_bytes,
        cors_allowed_origins=config.cors_allowed_origins,
        transports=list(config.transports),
        logger=False,
        engineio_logger=False,
    )
    limits = Limits.from_config(config)
    GatewayServer.adopt(socketio.server, limits)

    store = Store(config, connect(config))
    delivery = Delivery(config, store, socketio.server, node_name(), Connections())
    router = Router(config, store, delivery)
    events = Events(config, store, delivery, router.chat, socketio.server)
    events.register()
    LeanEngineServer.adopt(
        socketio.server.eio, socketio.server.environ, config,
        config.socket_capacity(resource.getrlimit(resource.RLIMIT_NOFILE)[0]), limits,
        events.logged_in, events.at_once)
    app.register_blueprint(health.bp)
    api.init_app(app, config, store, router)
    pages.init_app(app, config)

    # Done by the gunicorn master already, unless it could not reach Redis.
    gevent.spawn(migration.upgrade_until_done, config, store.redis, delivery.node)
    listener = Listener(config, store, router)
    listener.start()
    app.extensions["pushapp"] = Gateway(
        config, socketio, store, delivery, router, listener,
        Drain(config.drain_window, socketio.server, delivery, listener), limits,
        gevent.spawn(delivery.watch_expiries),
        gevent.spawn(MemoryReturn(lambda: len(delivery.by_sid)).run),
        gevent.spawn(backlog.BacklogCount(store, lambda: listener.leader).run))
    if config.auth_mode == "insecure":
        logging.getLogger(__name__).warning(
            "AUTH_MODE=insecure: logins are trusted as sent (myAuraId), anyone can log in as "
            "anyone. Use AUTH_MODE=jwt with a key in production.")
    return app
