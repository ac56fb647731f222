"""gunicorn settings of the baseline: pushapp's worker class and limits, nothing more.

worker_connections and the open-files limit are settings, not optimisations: without them
the baseline would stop at 1000 sockets and would measure gunicorn's default, not its code.
"""
import os
import resource

bind = os.environ.get("BIND", "127.0.0.1:5001")
workers = 1
worker_class = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"
worker_connections = 50_000
accesslog = None
control_socket_disable = True

resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
