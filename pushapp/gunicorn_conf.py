"""gunicorn settings for pushapp; every value comes from pushapp.config (see README).

They live in the package so that an installed pushapp has them too: ``pushapp serve``
runs ``gunicorn -c python:pushapp.gunicorn_conf pushapp.wsgi:app``, and a checkout's
``gunicorn -c gunicorn.conf.py wsgi:app`` imports them from here. With ``REDIS_URL``
unset the master starts an embedded redis-server (data in ``PUSHAPP_DATA_DIR``, relative
to the working directory) before the workers and stops it after them, and gives the
workers a directory for their metrics files. Only the standard library and pushapp's
light modules are imported: the workers apply gevent's monkey patching after this.
"""
import gc
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import Config, ConfigError
from .ops.embedded_redis import EmbeddedRedis

try:
    _config = Config.from_env()
except ConfigError as exc:
    # One line per problem and no traceback: nothing would be gained by starting workers.
    sys.exit("\n".join(f"pushapp: {problem}" for problem in exc.problems))
_embedded = None
_metrics_temp = None

bind = _config.listen
workers = _config.workers
# gevent-websocket's worker, with a bound on the size of websocket frames, does the
# handshake; pushapp.wire.transport then takes the connection over (docs/deployment.md).
worker_class = "pushapp.wire.worker.GatewayWorker"
# A stopping worker closes its clients over DRAIN_WINDOW (pushapp.drain), then exits.
graceful_timeout = _config.graceful_timeout
timeout = 30
accesslog = None
# gunicorn's control socket lives in one fixed path per user; several gateways on one
# host would fight over it, and pushapp does not use it.
control_socket_disable = True
errorlog = "-"
loglevel = _config.log_level.lower()
if _config.log_format == "json":
    logconfig_dict = {"formatters": {"generic": {"()": "pushapp.ops.logs.JsonFormatter"}}}


def _raise_open_files_limit() -> None:
    """Each socket is a file: raise the soft limit to the hard one for the workers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


_raise_open_files_limit()

_OPEN_FILES = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
# gunicorn's default of 1000 would cap a worker at 1000 requests in progress, /monitor
# included. The worker refuses websockets past the same number (pushapp.wire.transport).
worker_connections = _config.socket_capacity(_OPEN_FILES)


def _metrics_dir() -> None:
    """An empty directory for the workers' metrics files, named in the environment before
    any worker imports prometheus_client (which reads it at import). A directory the
    operator chose is emptied of the last run's files (each ``INSTANCE`` but the first
    keeps its own below it); otherwise a new one is made."""
    global _metrics_temp
    if _config.metrics_dir:
        path = Path(_config.metrics_dir)
        if _config.instance:
            path = path / f"instance-{_config.instance}"
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = _metrics_temp = Path(tempfile.mkdtemp(prefix="pushapp-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def on_starting(server):
    global _embedded
    for warning in _config.warnings():
        server.log.warning("pushapp: %s", warning)
    _metrics_dir()
    if not os.environ.get("REDIS_URL"):
        _embedded = EmbeddedRedis(_config.data_dir)
        _embedded.start()
        os.environ["REDIS_URL"] = _embedded.url
        server.log.info("REDIS_URL unset: started embedded redis-server at %s (data in %s)",
                        _embedded.url, _embedded.data_dir)
    _upgrade_layout(server)


def _upgrade_layout(server) -> None:
    """Move what an older pushapp stored into today's keys before any worker serves (in a
    child process: redis-py must not be imported before the workers' monkey patching). If
    Redis cannot be reached now, the workers do it once it can."""
    done = subprocess.run([sys.executable, "-m", "pushapp", "upgrade-keys"], check=False)
    if done.returncode:
        server.log.warning("pushapp: key layout not checked at start; the workers will")


def on_exit(server):
    if _metrics_temp is not None:
        shutil.rmtree(_metrics_temp, ignore_errors=True)
    if _embedded is not None:
        _embedded.stop()
        server.log.info("embedded redis-server stopped")


def child_exit(server, worker):
    """A dead worker's connections no longer count; its counters still do."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    # What the worker loaded to start lives as long as it does: the cyclic collector
    # need not scan it again at every full collection.
    gc.freeze()
    if worker_connections < _config.worker_connections:
        worker.log.warning("open files limit %d: this worker holds at most %d sockets, not "
                           "WORKER_CONNECTIONS=%d (%d files kept for Redis and itself)",
                           _OPEN_FILES, worker_connections, _config.worker_connections,
                           _config.reserved_files)


def worker_exit(server, worker):
    gateway = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("pushapp")
    if gateway is not None:
        gateway.close()
