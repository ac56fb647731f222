"""The HTTP API's bodies and answers as pydantic models: they validate requests, and the
OpenAPI document is generated from them, so the two cannot disagree.

Request models are built per gateway, because their limits (id length, recipients, batch
size) are settings. User ids and ``needStore`` are checked by the same functions as on the
Redis channels (``payloads``), so a body the API accepts is one the Router accepts.
Unknown fields of a message are allowed: they are stored and delivered as they came.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, WrapValidator,
                      create_model)
from pydantic_core import PydanticCustomError

from .. import payloads
from ..config import Config

_MESSAGE = ConfigDict(strict=True, extra="allow")
_WRAPPER = ConfigDict(strict=True, extra="forbid")
_INT64 = 2**63


def _checked(problem: Callable[[Any], str | None]) -> WrapValidator:
    """Reject with the channel's own reason before the schema's type checks run."""

    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        reason = problem(value)
        if reason:
            raise PydanticCustomError("invalid", reason)
        return handler(value)

    return WrapValidator(validate)


def _user_id_rule(max_length: int) -> WrapValidator:
    return _checked(lambda value: payloads.user_id_problem(value, max_length))


IDEMPOTENCY_KEY = TypeAdapter(Annotated[str, Field(
    min_length=1, max_length=255, pattern="^[!-~]+$",
    description="makes retries safe: a request with a key seen in the last IDEMPOTENCY_TTL "
                "seconds gets the first answer and stores nothing again")])
KIND = TypeAdapter(Literal["chat", "notification"])
LAST = TypeAdapter(Annotated[int, Field(ge=0, le=100, description="also list the newest "
                                                                  "pending messages, this many "
                                                                  "of each kind at most")])
LIMIT = TypeAdapter(Annotated[int, Field(ge=1, le=1000, description="users listed at most "
                                                                   "(default 100)")])

NeedStore = Annotated[Union[bool, Annotated[int, Field(ge=0, le=1)]],
                      _checked(payloads.need_store_problem)]


@dataclasses.dataclass(frozen=True)
class RequestModels:
    """The request bodies, with one gateway's limits."""

    chat: type[BaseModel]
    notification: type[BaseModel]
    chat_batch: type[BaseModel]
    notification_batch: type[BaseModel]
    path_user: TypeAdapter

    @classmethod
    def build(cls, config: Config) -> "RequestModels":
        limit = config.max_user_id_length
        text = Annotated[str, Field(min_length=1, max_length=limit)]
        number = Annotated[int, Field(ge=-_INT64, lt=_INT64)]
        user_id = Annotated[Union[text, number], _user_id_rule(limit), Field(
            description="a user id: a string, or an integer as the seed's apps send them")]
        chat = create_model(
            "Chat", __config__=_MESSAGE,
            __doc__="A chat as on the snschat channel; other fields are kept and delivered.",
            to=(user_id, Field(description="the recipient")),
            from_=(Any, Field(None, alias="from", description="the sender, passed through")),
        )
        notification = create_model(
            "Notification", __config__=_MESSAGE,
            __doc__="A notification as on the notification channel; other fields (title, "
                    "body, …) are kept and delivered.",
            toWho=(Annotated[list[user_id], Field(max_length=config.max_recipients)],
                   Field(description="the recipients")),
            needStore=(NeedStore, Field(False, description="store it for each recipient "
                                                            "until they ack it")),
        )
        return cls(chat, notification, _batch(chat, config), _batch(notification, config),
                   TypeAdapter(Annotated[text, Field(pattern="^[^/]"), _user_id_rule(limit)]))


def _batch(item: type[BaseModel], config: Config) -> type[BaseModel]:
    return create_model(
        item.__name__ + "Batch", __config__=_WRAPPER,
        __doc__=f"Several {item.__name__.lower()}s, handled in order.",
        messages=(Annotated[list[item], Field(max_length=config.api_max_batch)], ...),
    )


class Outcome(BaseModel):
    """What happened to one message."""

    recipients: int = Field(description="distinct recipients")
    online: int = Field(description="recipients online when it was stored; it was sent to "
                                    "them at once")
    stored: int = Field(description="recipients it was stored for (0 for needStore false)")
    ids: dict[str, str] = Field(description="the stored message's id, per recipient")


class BatchOutcome(BaseModel):
    results: list[Outcome] = Field(description="one outcome per message, in order")


class FieldError(BaseModel):
    field: str
    message: str


class Error(BaseModel):
    """Why a request was not done. ``errors`` names every bad field of a 422."""

    error: str
    errors: list[FieldError] | None = None
    done: int | None = Field(None, description="503 of a batch: how many messages, from "
                                                  "the first, were stored before the failure")


class Presence(BaseModel):
    user: str
    online: bool
    device: str | None = Field(None, description="the deviceId of its login")
    since: str | None = Field(None, description="login time, ISO 8601 UTC")
    since_ms: int | None = Field(None, description="login time, Unix milliseconds")
    node: str | None = Field(None, description="the gateway worker holding the socket")


class Counts(BaseModel):
    chat: int
    notification: int


class Online(BaseModel):
    users: list[Presence] = Field(description="users online now, by user id")
    more: bool = Field(description="whether more users are online than listed")


class PendingMessage(BaseModel):
    """A stored message waiting for an ack, without its content."""

    kind: Literal["chat", "notification"]
    id: str = Field(description="the mid the client receives and acks")
    bytes: int = Field(description="size of the message as stored")
    age_ms: int = Field(description="milliseconds since it was stored")


class Pending(BaseModel):
    user: str
    pending: Counts = Field(description="stored messages waiting for the user's ack")
    last: list[PendingMessage] | None = Field(None, description="with ?last=N: the newest "
                                                                "pending messages of each "
                                                                "kind, newest first")


class Removed(BaseModel):
    user: str
    removed: Counts


def field_errors(error: ValidationError, root: str) -> list[FieldError]:
    """pydantic's errors as field paths (``messages[2].toWho[0]``; ``root`` for the value
    itself) and reasons."""
    found = []
    for item in error.errors(include_url=False):
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        found.append(FieldError(field=path or root, message=item["msg"]))
    return found


class Ready(BaseModel):
    ready: bool
    node: str | None = Field(None, description="the worker that answered (host:pid:tag)")
    leader: bool | None = Field(None, description="whether it stores channel messages")
    reason: str | None = Field(None, description="why not ready")


Numbers = dict[str, Union[float, dict[str, float]]]


class RedisHealth(BaseModel):
    ok: bool
    latency_ms: float | None = Field(None, description="round trip of a PING")
    error: str | None = None


class WorkerStats(BaseModel):
    """One gateway worker: what Redis knows of it, and its own metrics where they are
    readable (workers of this gunicorn instance)."""

    node: str | None = Field(None, description="host:pid:tag, as in presence and readiness; "
                                               "unset when Redis cannot be read")
    pid: int
    heartbeat_ms: int | None = Field(None, description="milliseconds its heartbeat is still "
                                                       "valid (negative: stale)")
    leader: bool = Field(description="whether it holds the ingest lease")
    metrics: Numbers | None = Field(None, description="its own counters, as in totals")


class Stats(BaseModel):
    """What the admin dashboard shows: the numbers of /metrics, summed and per worker,
    and the state of Redis and of the ingest lease."""

    time_ms: int = Field(description="when this was read, Unix milliseconds")
    node: str = Field(description="the worker that answered")
    redis: RedisHealth
    lease: str | None = Field(None, description="the node holding the ingest lease")
    totals: Numbers = Field(description="the /metrics counters and gauges of every worker, by "
                                        "short name (logins, messages_in, …); labelled ones "
                                        "by label (kind, reason)")
    workers: list[WorkerStats]
