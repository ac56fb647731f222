"""gunicorn settings for pushapp; every value comes from pushapp.config (see README).

Run: ``gunicorn -c gunicorn.conf.py wsgi:app``. With ``REDIS_URL`` unset the master starts
an embedded redis-server before the workers and stops it after them.
"""
import os
import resource
import sys
from pathlib import Path

from pushapp.config import Config, ConfigError
from pushapp.embedded_redis import EmbeddedRedis

try:
    _config = Config.from_env()
except ConfigError as exc:
    sys.exit(f"pushapp: {exc}")
_root = Path(__file__).resolve().parent
_embedded = None

bind = _config.bind
workers = _config.workers
# gevent-websocket's worker (3 greenlets and ~57 KB per connection against 4 and ~68 KB
# for the plain gevent worker with simple-websocket: docs/deployment.md), with a bound on
# the size of websocket frames.
worker_class = "pushapp.worker.GatewayWorker"
# gunicorn's default of 1000 would cap a worker at 1000 sockets, /monitor included.
worker_connections = _config.worker_connections
graceful_timeout = 10
timeout = 30
accesslog = None
# gunicorn's control socket lives in one fixed path per user; several gateways on one
# host would fight over it, and pushapp does not use it.
control_socket_disable = True
errorlog = "-"
loglevel = _config.log_level.lower()


def _raise_open_files_limit() -> None:
    """Each socket is a file: raise the soft limit to the hard one for the workers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


_raise_open_files_limit()


def on_starting(server):
    global _embedded
    if os.environ.get("REDIS_URL"):
        return
    _embedded = EmbeddedRedis(_root / _config.data_dir)
    _embedded.start()
    os.environ["REDIS_URL"] = _embedded.url
    server.log.info("REDIS_URL unset: started embedded redis-server at %s (data in %s)",
                    _embedded.url, _embedded.data_dir)


def on_exit(server):
    if _embedded is not None:
        _embedded.stop()
        server.log.info("embedded redis-server stopped")


def post_worker_init(worker):
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit < _config.worker_connections:
        worker.log.warning("open files limit %d is below WORKER_CONNECTIONS=%d: this worker "
                           "holds at most about %d sockets", limit, _config.worker_connections,
                           limit - 50)


def worker_exit(server, worker):
    gateway = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("pushapp")
    if gateway is not None:
        gateway.close()
