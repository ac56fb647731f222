"""The ``pushapp`` command, installed with the package (``pip install .``).

``pushapp serve [gunicorn options]`` runs the gateway under gunicorn with the project's
settings, as ``gunicorn -c gunicorn.conf.py wsgi:app`` does in a checkout (no development
defaults: that is ``bin/serve``). ``pushapp token USER`` mints a login token for testing.
``pushapp check-config`` prints the settings the gateway would run with, secrets hidden,
or one line per problem and exit status 1, so a deployment can check before it restarts.
``pushapp upgrade-keys`` moves what an older pushapp stored into today's key layout
(pushapp.store.migration); the gunicorn master runs it at every start, before the workers.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any, Callable, NoReturn

from . import tokens
from .config import HIDDEN, Config, ConfigError, hide_password


def serve(args: list[str]) -> NoReturn:
    """Become gunicorn's master (exec, not a child), so that the signals a supervisor
    sends (SIGTERM to stop, SIGHUP to reload) reach it directly."""
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c",
                              "python:pushapp.gunicorn_conf", *args, "pushapp.wsgi:app"])


def token(args: list[str]) -> int:
    tokens.main(args, prog="pushapp token")
    return 0


def check_config(args: list[str]) -> int:
    """Print every setting as ``NAME=value`` and the warnings, or every problem found:
    values, key files that do not load, a JWKS URL whose keys cannot be fetched."""
    argparse.ArgumentParser(prog="pushapp check-config", description=check_config.__doc__
                            ).parse_args(args)
    # The problems are printed below, once each; the key loaders' log lines would repeat them.
    logging.disable(logging.CRITICAL)
    from .sockets.identity import Authenticator  # jwt and cryptography: only this command needs them

    try:
        config = Config.from_env()
        remote_error = Authenticator(config).remote_error
    except ConfigError as exc:
        return _problems(exc.problems)
    if remote_error:
        return _problems([f"JWT_JWKS_URL={_shown(config.jwt_jwks_url)}: {remote_error}"])
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        shown = HIDDEN if field.metadata["secret"] and value else _shown(value)
        print(f"{field.metadata['env']}={shown}")
    for warning in config.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def upgrade_keys(args: list[str]) -> int:
    """Bring the keys in Redis to this version's layout (nothing to do: a single GET)."""
    argparse.ArgumentParser(prog="pushapp upgrade-keys", description=upgrade_keys.__doc__
                            ).parse_args(args)
    import redis

    from .store import migration
    from .store.redis_url import connect

    logging.basicConfig(level=logging.INFO, format="pushapp: %(message)s")
    try:
        config = Config.from_env()
        client = connect(config, 1)
        migration.upgrade(config, client, f"upgrade-keys:{os.uname().nodename}:{os.getpid()}")
    except ConfigError as exc:
        return _problems(exc.problems)
    except redis.RedisError as exc:
        return _problems([f"keys not upgraded, Redis failed: {exc}"])
    return 0


def _problems(problems: list[str]) -> int:
    for problem in problems:
        print(f"pushapp: {problem}", file=sys.stderr)
    return 1


def _shown(value: Any) -> str:
    """A setting's value as it would be written in the environment; the password of a URL
    (in its user part or a ``password`` parameter) hidden."""
    if isinstance(value, (tuple, list)):
        return ",".join(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return hide_password(str(value))


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "serve": serve, "token": token, "check-config": check_config,
    "upgrade-keys": upgrade_keys}


def main(argv: list[str] | None = None) -> int:
    """``pushapp COMMAND [ARGS]``: ARGS go to the command (to gunicorn for serve)."""
    parser = argparse.ArgumentParser(
        prog="pushapp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    options = parser.parse_args(argv)
    return COMMANDS[options.command](options.args)
