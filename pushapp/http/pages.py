"""The browser pages: ``/demo`` to try the gateway, ``/admin`` to watch it, and ``/``.

Both are plain HTML, CSS and JavaScript under ``templates/`` and ``static/``, with no build
step, and hold no data of their own: the demo is a Socket.IO client (the official
socket.io-client, served from here: pushapp.http.vendor) that also calls the HTTP API with a key
typed into it, and the dashboard reads ``/api/v1/stats`` and the user routes of the HTTP
API. The dashboard's key is typed once into its form and kept in a signed session cookie
(HttpOnly, SameSite=Strict) as the key's digest; the API takes that session, with the
``X-Pushapp-Session`` header, as it takes the key (pushapp.http.api). Every page answer forbids
inline script and any other origin (Content-Security-Policy), and the scripts put user
text into the page only as text.
"""
from __future__ import annotations

import datetime
import logging
from pathlib import Path

from flask import (Blueprint, Flask, Response, abort, current_app, redirect,
                   render_template, request, session, url_for)
from flask.sessions import SecureCookieSessionInterface

from ..config import Config
from . import api_keys, vendor
from .api import SESSION_FIELD, SESSION_HEADER, caller_address

log = logging.getLogger(__name__)

# The pages' files stay at pushapp/templates and pushapp/static, where bin/setup puts the
# vendored client and the package data says; the blueprint lives a folder below them.
_FILES = Path(__file__).resolve().parent.parent
bp = Blueprint("pages", __name__, static_folder=str(_FILES / "static"), static_url_path="/static",
               template_folder=str(_FILES / "templates"))

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
SESSION_LIFETIME = datetime.timedelta(hours=8)


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the request came over TLS (directly,
    or from a proxy gunicorn trusts), so that plain http in development still works."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def demo_enabled(config: Config) -> bool:
    """``DEMO``: ``auto`` serves the demo only in development (``AUTH_MODE=insecure``)."""
    return config.demo == "1" or (config.demo == "auto" and config.auth_mode == "insecure")


def init_app(app: Flask, config: Config) -> None:
    """Register the pages; the session cookie is signed with a secret derived from
    ``API_KEYS``, so that every worker and instance accepts it."""
    app.secret_key = api_keys.session_secret(config.api_keys)
    app.session_interface = SessionCookies()
    app.config.update(SESSION_COOKIE_NAME="pushapp_admin", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME)
    app.extensions["pushapp_pages"] = config
    app.register_blueprint(bp)
    if demo_enabled(config) and not vendor.present():
        log.warning("/demo cannot connect: %s is missing; run %s", vendor.CLIENT,
                    vendor.FETCH_COMMAND)


def _config() -> Config:
    return current_app.extensions["pushapp_pages"]


@bp.after_request
def _secure(answer: Response) -> Response:
    answer.headers.update(SECURITY_HEADERS)
    if request.endpoint != "pages.static":
        answer.headers["Cache-Control"] = "no-store"
    return answer


@bp.context_processor
def _context() -> dict[str, bool]:
    return {"demo_on": demo_enabled(_config())}


@bp.get("/")
def index() -> Response | str:
    """A newcomer's first stop: the demo when it is on, else where to read on."""
    if demo_enabled(_config()):
        return redirect(url_for("pages.demo"))
    return render_template("index.html")


@bp.get("/demo")
def demo() -> str:
    """The chat demo (``DEMO``); it says so when the JavaScript client is missing."""
    config = _config()
    if not demo_enabled(config):
        abort(404)
    return render_template("demo.html", insecure=config.auth_mode == "insecure",
                           client=vendor.CLIENT_URL_PATH if vendor.present() else None,
                           client_missing=vendor.CLIENT,
                           fetch_command=vendor.FETCH_COMMAND)


@bp.get("/admin")
def admin() -> str:
    """The dashboard for a session that holds a valid key, else only the key form."""
    try:
        api_keys.session_client(_config().api_keys, session.get(SESSION_FIELD))
    except api_keys.ApiKeyError:
        return render_template("admin_login.html")
    return render_template("admin.html", session_header=SESSION_HEADER)


@bp.post("/admin/login")
def admin_login() -> Response | tuple[str, int]:
    """Check the typed key as the API would (wrong keys count against the address, as at
    the API) and keep its digest in the session."""
    key = request.form.get("key", "").strip()
    keys = _config().api_keys
    address = caller_address()
    try:
        _guard().admit(address, lambda: api_keys.client_of(keys, f"Bearer {key}"))
    except api_keys.TooManyGuesses as exc:
        return render_template("admin_login.html", error=str(exc)), 429
    except api_keys.ApiKeyError as exc:
        log.warning("admin login refused from %s: %s", address, exc)
        return render_template("admin_login.html", error=str(exc)), 401
    session.clear()
    session[SESSION_FIELD] = api_keys.digest(key)
    session.permanent = True
    return redirect(url_for("pages.admin"), 303)


@bp.post("/admin/logout")
def admin_logout() -> Response:
    session.clear()
    return redirect(url_for("pages.admin"), 303)


def _guard() -> api_keys.KeyGuard:
    return current_app.extensions["pushapp_api"].guard
