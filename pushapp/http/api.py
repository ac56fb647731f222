"""The HTTP API under ``/api/v1``, for business servers that cannot speak Redis.

Publishing calls the Router, as the channel listener does, so a message sent here is
stored, archived, delivered and pushed exactly as one published on ``snschat`` or
``notification``; the answer says what happened. Any worker may take the request: the
Router stores it and signals the worker holding each recipient. A 2xx means the message is
in Redis (with ``STORE_WAIT_REPLICAS``, on that many replicas too); a Redis failure, or
too few replicas in time, answers 503 with the reason, and the client retries (safely,
with an ``Idempotency-Key``, whose record a 503 does not keep). Every route is in this one blueprint so that a single
``before_request`` hook can guard them all (``CATALOG.is_public`` names the exceptions):
a key, or the admin page's session (pushapp.http.pages), with wrong keys limited per address.
The operators' routes (users, ``/stats``) are what the admin page reads, so that the page
and a script see the same data.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import socket
import time
from typing import Any, Callable

import redis
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, session
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from .. import payloads
from ..config import Config
from ..ingest.routing import Router
from ..kinds import LABELS
from ..ops import metrics
from ..store.store import NotReplicated, Placement, Store
from ..store.store import Presence as StoredPresence
from ..wire.addresses import client_address
from . import api_keys
from .idempotency import Earlier, Idempotency
from .openapi import CATALOG
from .schemas import (IDEMPOTENCY_KEY, KIND, LAST, LIMIT, BatchOutcome, Counts, Error,
                      FieldError, Online, Outcome, Pending, PendingMessage, Presence,
                      RedisHealth, Removed, RequestModels, Stats, WorkerStats, field_errors)

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")

PUBLISH_ANSWERS = {400: Error, 401: Error, 409: Error, 413: Error, 422: Error, 429: Error,
                   503: Error}
USER_ANSWERS = {401: Error, 422: Error, 429: Error, 503: Error}
# The admin page's requests carry its session instead of a key, and this header: a page of
# another site cannot add it without the browser asking this gateway first (CORS).
SESSION_HEADER = "X-Pushapp-Session"
# Where the admin session keeps the digest of its key (api_keys.session_client).
SESSION_FIELD = "api_key"


@dataclasses.dataclass(frozen=True)
class Api:
    """What the routes use, one per app."""

    config: Config
    store: Store
    router: Router
    models: RequestModels
    idempotency: Idempotency
    document: dict
    guard: api_keys.KeyGuard


class UserConverter(BaseConverter):
    """A user id in a path: any text, slashes and line breaks included, except that it
    cannot start with a slash (that would read as an empty segment)."""

    regex = r"[^/][\s\S]*?"
    part_isolating = False


class ApiError(Exception):
    """An answer other than 2xx, with the reason as JSON."""

    def __init__(self, status: int, error: str, errors: list[FieldError] | None = None,
                 done: int | None = None, retry_after: int | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.body = Error(error=error, errors=errors, done=done)
        self.retry_after = retry_after


def init_app(app: Flask, config: Config, store: Store, router: Router) -> None:
    """Register the API; its models and document carry this gateway's limits."""
    models = RequestModels.build(config)
    app.url_map.converters["user"] = UserConverter
    app.extensions["pushapp_api"] = Api(
        config, store, router, models, Idempotency(config, store.idempotency_records()),
        CATALOG.document(models, "pushapp", "1"), api_keys.KeyGuard())
    app.register_blueprint(bp)


def _api() -> Api:
    return current_app.extensions["pushapp_api"]


@bp.before_request
def _authenticate_and_limit() -> None:
    """Every route but the public ones needs an API key; bodies have a size limit."""
    request.max_content_length = _api().config.api_max_body_bytes
    if CATALOG.is_public(request.endpoint):
        return
    keys = _api().config.api_keys
    authorization = request.headers.get("Authorization")
    if authorization is None and request.headers.get(SESSION_HEADER):
        def check() -> str:
            return api_keys.session_client(keys, session.get(SESSION_FIELD))
    else:
        def check() -> str:
            return api_keys.client_of(keys, authorization)
    address = caller_address()
    try:
        g.api_client = _api().guard.admit(address, check)
    except api_keys.TooManyGuesses as exc:
        raise ApiError(429, str(exc), retry_after=exc.retry_after) from None
    except api_keys.ApiKeyError as exc:
        log.warning("API call refused: %s %s from %s: %s", request.method, request.path,
                    address, exc)
        raise ApiError(401, str(exc)) from None


def caller_address() -> str:
    """The request's client: the peer, or the address a trusted proxy names
    (``FORWARDED_ALLOW_IPS``), which is what wrong keys are counted by."""
    return client_address(request.environ, _api().config.forwarded_allow_ips)


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> tuple[Response, int]:
    metrics.ERRORS.labels("redis" if error.status == 503 else "api_rejected").inc()
    answer = _json(error.body)
    if error.status == 401:
        answer.headers["WWW-Authenticate"] = 'Bearer realm="pushapp"'
    if error.retry_after is not None:
        answer.headers["Retry-After"] = str(error.retry_after)
    return answer, error.status


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> tuple[Response, int]:
    if error.code == 413:
        error.description = f"the body is larger than {_api().config.api_max_body_bytes} bytes"
    return _api_error(ApiError(error.code or 500, error.description or error.name))


def serves(path: str) -> bool:
    """Whether ``path`` is under the API's prefix."""
    return path == bp.url_prefix or path.startswith(bp.url_prefix + "/")


def no_route(error: HTTPException) -> tuple[Response, int]:
    """A path under the API that no route has (404), or a method its route does not take
    (405), as JSON (pushapp.http.health hands these over: Flask finds no blueprint for them)."""
    if error.code == 405:
        allowed = ", ".join(sorted(getattr(error, "valid_methods", None) or ()))
        answer, status = _api_error(ApiError(405, f"{request.method} is not allowed on "
                                                  f"{request.path}; allowed: {allowed}"))
        answer.headers["Allow"] = allowed
        return answer, status
    return _api_error(ApiError(404, f"no such path: {request.path}"))


@bp.errorhandler(redis.RedisError)
def _redis_error(error: redis.RedisError) -> tuple[Response, int]:
    log.error("%s %s failed, Redis unavailable: %s", request.method, request.path, error)
    return _api_error(ApiError(503, f"Redis unavailable, try again: {error}"))


def _json(model: BaseModel) -> Response:
    return jsonify(model.model_dump(exclude_none=True))


def _publish(kind: str, batch: bool) -> Response:
    """Validate, claim the idempotency key if any, and hand each message to the Router."""
    api = _api()
    body = request.get_data(cache=False)
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        _checked(IDEMPOTENCY_KEY.validate_python, key, "Idempotency-Key", 400)
    try:
        document = payloads.parse_object(body, "body")
    except payloads.PayloadError as exc:
        raise ApiError(400, str(exc)) from None
    _checked(getattr(api.models, kind + "_batch" if batch else kind).model_validate, document)
    scope = f"{g.api_client}:{request.endpoint}"
    claim = api.idempotency.claim(scope, key, body) if key else None
    if isinstance(claim, Earlier):
        return _replay(claim)
    try:
        results = _route(api.router, kind, document["messages"] if batch else [document], batch)
    except BaseException:
        if claim is not None:
            _settle(api.idempotency.release, claim)
        raise
    answer = (BatchOutcome(results=results) if batch else results[0]).model_dump()
    if claim is not None:
        _settle(api.idempotency.finish, claim, 200, answer)
    return jsonify(answer)


def _route(router: Router, kind: str, messages: list[dict], batch: bool) -> list[Outcome]:
    handle: Callable[[dict, bytes], dict[str, Placement]] = (
        router.chat if kind == "chat" else router.notification)
    results = []
    for message in messages:
        try:
            placements = handle(message, payloads.dumps(message))
        except NotReplicated as exc:
            # STORE_WAIT_REPLICAS: on the master only, which a failover may lose. A retry
            # stores it again, so the recipient may get it twice (at least once).
            log.error("API %s not counted as stored: %s", kind, exc)
            raise ApiError(503, f"not counted as stored: {exc}; retry (the message may "
                           "then be stored twice)",
                           done=len(results) if batch else None) from None
        except redis.RedisError as exc:
            log.error("API %s not stored, Redis failed: %s", kind, exc)
            raise ApiError(503, f"not stored, Redis failed: {exc}; retry",
                           done=len(results) if batch else None) from None
        results.append(Outcome(
            recipients=len(placements),
            online=sum(p.online for p in placements.values()),
            stored=sum(p.id is not None for p in placements.values()),
            ids={user: p.id for user, p in placements.items() if p.id is not None}))
    return results


def _replay(earlier: Earlier) -> Response:
    if not earlier.same_body:
        raise ApiError(422, "Idempotency-Key was used before with another body",
                       [FieldError(field="Idempotency-Key", message="used with another body")])
    if earlier.status is None:
        raise ApiError(409, "a request with this Idempotency-Key is still in flight; retry")
    answer = jsonify(earlier.body)
    answer.status_code = earlier.status
    answer.headers["Idempotent-Replayed"] = "true"
    return answer


def _settle(step: Callable[..., None], *args: Any) -> None:
    """Finish or release a claim; the message's fate does not hang on it, so a Redis
    failure here is logged (the claim runs out by itself) and the request goes on."""
    try:
        step(*args)
    except redis.RedisError as exc:
        log.warning("Idempotency-Key record not updated, Redis failed: %s", exc)


def _checked(validate: Callable[[Any], Any], value: Any, root: str = "body",
             status: int = 422) -> Any:
    """``validate(value)``, or an answer naming every bad field (under ``root``)."""
    try:
        return validate(value)
    except ValidationError as exc:
        errors = field_errors(exc, root)
        raise ApiError(status, f"{errors[0].field}: {errors[0].message}", errors) from None


@CATALOG.route(bp, "POST", "/notifications", body="notification",
               answers={200: Outcome, **PUBLISH_ANSWERS}, idempotent=True)
def notifications() -> Response:
    """Send a notification, as published on the notification channel.

    Sent at once to the recipients online; with needStore true also stored for each
    recipient until they ack it (the others get it at their next login).
    """
    return _publish("notification", batch=False)


@CATALOG.route(bp, "POST", "/notifications/batch", body="notification_batch",
               answers={200: BatchOutcome, **PUBLISH_ANSWERS}, idempotent=True)
def notifications_batch() -> Response:
    """Send several notifications, in order.

    All are validated before any is handled. If Redis fails midway, the 503 says how many
    were stored (done): retry the rest.
    """
    return _publish("notification", batch=True)


@CATALOG.route(bp, "POST", "/chats", body="chat",
               answers={200: Outcome, **PUBLISH_ANSWERS}, idempotent=True)
def chats() -> Response:
    """Send a chat, as published on snschat.

    Stored for its recipient, published on the history channel, sent if the recipient is
    online, and a mobile push requested if not (or if they do not ack in time).
    """
    return _publish("chat", batch=False)


@CATALOG.route(bp, "POST", "/chats/batch", body="chat_batch",
               answers={200: BatchOutcome, **PUBLISH_ANSWERS}, idempotent=True)
def chats_batch() -> Response:
    """Send several chats, in order.

    All are validated before any is handled. If Redis fails midway, the 503 says how many
    were stored (done): retry the rest.
    """
    return _publish("chat", batch=True)


@CATALOG.route(bp, "GET", "/users/<user:user>/presence", answers={200: Presence, **USER_ANSWERS})
def presence(user: str) -> Response:
    """Whether a user is online now, since when, and on which device."""
    api, user = _api(), _path_user(user)
    found = api.store.presence(user)
    if found is None:
        return _json(Presence(user=user, online=False))
    return _json(_presence(user, found))


def _presence(user: str, found: StoredPresence) -> Presence:
    return Presence(user=user, online=True, device=found.device, node=found.node,
                    since_ms=found.since_ms, since=_iso(found.since_ms))


@CATALOG.route(bp, "GET", "/users/online", query={"limit": LIMIT},
               answers={200: Online, **USER_ANSWERS})
def online() -> Response:
    """Users online now, up to limit (default 100).

    It walks the gateway's presence records until it has found that many: meant for a
    look (the admin and demo pages), not for every request of a busy backend.
    """
    api = _api()
    limit = _checked(LIMIT.validate_python, request.args.get("limit", "100"), "limit")
    found, more = api.store.online(limit)
    return _json(Online(users=sorted((_presence(user, presence) for user, presence in found),
                                     key=lambda presence: presence.user), more=more))


@CATALOG.route(bp, "GET", "/users/<user:user>/pending", query={"last": LAST},
               answers={200: Pending, **USER_ANSWERS})
def pending(user: str) -> Response:
    """How many stored messages wait for the user's ack, by kind.

    With last=N, also the ids, sizes and ages of the N newest of each kind.
    """
    api, user = _api(), _path_user(user)
    last = request.args.get("last")
    answer = Pending(user=user, pending=_counts(api.store.pending_counts(user)))
    if last is not None:
        count = _checked(LAST.validate_python, last, "last")
        now_ms = int(time.time() * 1000)
        answer.last = [PendingMessage(kind=LABELS[kind], id=entry.id, bytes=len(entry.raw),
                                      age_ms=max(0, now_ms - int(entry.id.partition("-")[0])))
                       for kind, entries in api.store.newest(user, count).items()
                       for entry in entries] if count else []
    return _json(answer)


@CATALOG.route(bp, "DELETE", "/users/<user:user>/pending", query={"kind": KIND},
               answers={200: Removed, **USER_ANSWERS})
def clear_pending(user: str) -> Response:
    """Drop the user's stored messages (an operator's action), of one kind or both.

    A socket the user has open is not told; messages it was sent and acks later are simply
    gone already.
    """
    api, user = _api(), _path_user(user)
    kind = request.args.get("kind")
    wanted = LABELS.values() if kind is None else {_checked(KIND.validate_python, kind,
                                                                 "kind")}
    kinds = [stored for stored, name in LABELS.items() if name in wanted]
    return _json(Removed(user=user, removed=_counts(api.store.clear(user, kinds))))


@CATALOG.route(bp, "GET", "/stats", answers={200: Stats, 401: Error, 429: Error})
def stats() -> Response:
    """The live numbers of the admin dashboard: every worker's metrics, summed and one by
    one, the stored backlog, the ingest lease and Redis' health.

    The same values as /metrics, the backlog as last counted. Redis being down is part of
    the answer, not an error.
    """
    api = _api()
    gateway = current_app.extensions["pushapp"]
    now_ms = int(time.time() * 1000)
    totals = metrics.totals()
    started = time.perf_counter()
    nodes: dict[str, int] = {}
    lease = None
    try:
        api.store.ping()
        health = RedisHealth(ok=True, latency_ms=round((time.perf_counter() - started) * 1000, 3))
        nodes, lease = api.store.nodes(), api.store.lease_holder()
        saved = api.store.saved_backlog()
        if saved is not None:
            totals["stored"] = {LABELS[kind]: count for kind, count in saved[0].items()}
    except redis.RedisError as exc:
        health = RedisHealth(ok=False, error=str(exc))
    return _json(Stats(time_ms=now_ms, node=gateway.listener.node, redis=health, lease=lease,
                       totals=totals, workers=_workers(nodes, lease, now_ms)))


def _workers(nodes: dict[str, int], lease: str | None, now_ms: int) -> list[WorkerStats]:
    """Every node Redis has a heartbeat of, with the metrics of those of this gunicorn
    (by pid), and this gunicorn's workers that Redis does not know of."""
    local = metrics.by_worker()
    host = socket.gethostname()
    found = []
    for node, expiry in sorted(nodes.items()):
        node_host, _, rest = node.partition(":")
        pid = int(rest.partition(":")[0] or 0)
        found.append(WorkerStats(node=node, pid=pid, heartbeat_ms=expiry - now_ms,
                                 leader=node == lease,
                                 metrics=local.pop(pid, None) if node_host == host else None))
    found += [WorkerStats(pid=pid, leader=False, metrics=numbers)
              for pid, numbers in local.items()]
    return found


@CATALOG.route(bp, "GET", "/openapi.json", answers={200: "application/json"}, public=True)
def openapi() -> Response:
    """This document: OpenAPI 3.1, with this gateway's limits."""
    return jsonify(_api().document)


def _path_user(user: str) -> str:
    return _checked(_api().models.path_user.validate_python, user, "user")


def _counts(by_kind: dict[str, int]) -> Counts:
    return Counts(**{name: by_kind.get(kind, 0) for kind, name in LABELS.items()})


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
