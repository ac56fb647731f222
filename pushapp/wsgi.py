"""The WSGI application, for gunicorn: ``pushapp.wsgi:app``.

gevent's monkey patching comes first, in the worker, before anything imports the
modules it patches (sockets, ssl, threads, time).
"""
from gevent import monkey

monkey.patch_all()

from . import create_app  # noqa: E402  (must follow the monkey patching)

app = create_app()
