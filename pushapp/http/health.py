"""HTTP routes for operators beside the sockets: liveness, readiness and metrics."""
from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..ops import backlog
from . import api, api_keys
from .openapi import CATALOG, TEXT
from .schemas import Ready

log = logging.getLogger(__name__)
# Named "web" as before the move: the name is in the OpenAPI operationIds (web_ready, …).
bp = Blueprint("web", __name__)


@CATALOG.route(bp, "GET", "/monitor", answers={200: TEXT}, public=True)
def monitor() -> Response:
    """Liveness, as the seed answered it: 200 OK while the process serves."""
    return Response("OK", mimetype="text/plain")


@CATALOG.route(bp, "GET", "/health/ready", answers={200: Ready, 503: Ready}, public=True)
def ready() -> tuple[Response, int]:
    """Readiness: 200 once Redis answers (on a cluster, every master: one that is down
    until its replica is promoted leaves some users unserved), the listener is subscribed
    and a worker holds the ingest lease; 503 with the reason otherwise, and from the
    moment the worker begins to stop, so that a load balancer sends no one new to it."""
    gateway = current_app.extensions["pushapp"]
    if gateway.drain.started:
        return jsonify(ready=False, reason="draining: this worker is stopping"), 503
    listener = gateway.listener
    try:
        gateway.store.ping()
        is_ready = listener.ready()
    except Exception as exc:  # any Redis failure means not ready
        return jsonify(ready=False, reason=f"redis: {exc}"), 503
    if not is_ready:
        return jsonify(ready=False, reason="listener not subscribed or no ingest lease"), 503
    return jsonify(ready=True, node=listener.node, leader=listener.leader), 200


@CATALOG.route(bp, "GET", "/metrics", answers={200: TEXT, 401: TEXT}, public=True)
def metrics_text() -> Response:
    """Prometheus metrics of every worker, in the text exposition format. With
    METRICS_TOKEN set, only for ``Authorization: Bearer <METRICS_TOKEN>`` (401 otherwise),
    since the figures tell how busy the gateway is and what fails in it."""
    gateway = current_app.extensions["pushapp"]
    token = gateway.config.metrics_token
    given = api_keys.bearer(request.headers.get("Authorization"))
    if token and not (given and api_keys.matches(given, (token,))):
        log.warning("metrics scrape refused from %s: %s", request.remote_addr,
                    "no token" if given is None else "wrong token")
        return Response("send Authorization: Bearer <METRICS_TOKEN>\n", status=401,
                        mimetype=TEXT, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    body, content_type = backlog.exposition(gateway.store)
    return Response(body, content_type=content_type)


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def no_route(error: HTTPException) -> Response | tuple[Response, int]:
    """A path no route has, or a method its route does not take: found before any
    blueprint is, so answered here for all. Under the API's prefix as the API answers
    (JSON); elsewhere with an empty body."""
    if api.serves(request.path):
        return api.no_route(error)
    return Response("", status=error.code, mimetype="text/plain", headers=[
        header for header in error.get_headers() if header[0] != "Content-Type"])
