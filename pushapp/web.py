"""HTTP routes beside the sockets: the load balancer's check and readiness."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("web", __name__)


@bp.get("/monitor")
def monitor() -> Response:
    """Liveness, as the seed answered it: 200 ``OK`` while the process serves."""
    return Response("OK", mimetype="text/plain")


@bp.get("/health/ready")
def ready() -> tuple[Response, int]:
    """200 once Redis answers, the listener is subscribed and a node holds the ingest
    lease; 503 with the reason otherwise."""
    bridge = current_app.extensions["pushapp"].bridge
    try:
        is_ready = bridge.ready()
    except Exception as exc:  # any Redis failure means not ready
        return jsonify(ready=False, reason=f"redis: {exc}"), 503
    if not is_ready:
        return jsonify(ready=False, reason="listener not subscribed or no ingest lease"), 503
    return jsonify(ready=True, node=bridge.node, leader=bridge.leader), 200


@bp.app_errorhandler(404)
def not_found(error: Exception) -> Response:
    return Response("", status=404)
