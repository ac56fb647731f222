"""The WSGI entry point of a checkout: ``gunicorn -c gunicorn.conf.py wsgi:app``."""
from pushapp.wsgi import app  # noqa: F401
