"""gunicorn settings for a checkout: ``gunicorn -c gunicorn.conf.py wsgi:app``.

The settings themselves are in pushapp/gunicorn_conf.py, so that an installed pushapp
(``pushapp serve``) runs with the same ones.
"""
from pushapp.gunicorn_conf import *  # noqa: F401,F403
