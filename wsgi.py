"""The WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``."""
from gevent import monkey

monkey.patch_all()

from pushapp import create_app  # noqa: E402  (must follow the monkey patching)

app = create_app()
