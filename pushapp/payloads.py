"""Checks on everything that arrives, from clients and from business servers.

Each check either returns the cleaned value or raises ``PayloadError`` with a reason a
developer can act on; callers turn that into an error ack, an HTTP answer or a log line.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import orjson

# Levels of nesting a payload may have. Real ones have two or three; orjson parses up to
# 1024 but encodes only up to 254 (a deeper payload would fail when stored or published),
# and each level costs recursion wherever a payload is walked.
MAX_NESTING = 32


class PayloadError(ValueError):
    """The payload cannot be used; ``str()`` of it is the reason sent back."""


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


class SocketIOJSON:
    """orjson in the shape python-socketio wants for its packets (``json.dumps`` and
    ``json.loads`` with keyword arguments it may pass): several times faster than the
    standard library, and it refuses absurd nesting with an error instead of recursing."""

    @staticmethod
    def dumps(value: Any, **_: Any) -> str:
        return orjson.dumps(value).decode()

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        return orjson.loads(text)


def parse_object(data: bytes | str, what: str = "message") -> dict:
    """A JSON object from text, or a reason why not."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise PayloadError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise PayloadError(f"{what} must be a JSON object, not {_kind(value)}")
    if _may_nest_deep(data):
        shallow(value, what)
    return value


def _may_nest_deep(text: bytes | str) -> bool:
    """Whether JSON ``text`` has brackets enough to nest deeper than ``MAX_NESTING``:
    counting them spares the usual message the walk of ``shallow``."""
    if isinstance(text, str):
        return text.count("{") + text.count("[") > MAX_NESTING
    return text.count(b"{") + text.count(b"[") > MAX_NESTING


def shallow(value: Any, what: str = "payload") -> None:
    """Refuse a value nested deeper than ``MAX_NESTING`` levels. It looks one level at a
    time, at the objects and lists only, without recursion."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > MAX_NESTING:
            raise PayloadError(f"{what} is nested too deep: more than {MAX_NESTING} levels")
        inner: list = []
        for item in level:
            inner.extend(child for child in (item.values() if isinstance(item, dict) else item)
                         if isinstance(child, (dict, list)))
        level = inner


def event_object(args: tuple, max_bytes: int) -> tuple[dict, bytes]:
    """The single object argument of a client event, and its JSON encoding.

    Clients of the seed's era sometimes send the object as a JSON string; both are taken.
    """
    if not args:
        raise PayloadError("payload missing: expected a JSON object")
    value = args[0]
    if isinstance(value, str):
        if len(value) > max_bytes:
            raise PayloadError(f"payload too large: over {max_bytes} bytes")
        value = parse_object(value, "payload")
    elif not isinstance(value, dict):
        raise PayloadError(f"payload must be a JSON object, not {_kind(value)}")
    try:
        raw = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        # orjson refuses to nest deeper than 254 levels, and integers beyond 64 bits.
        raise PayloadError(f"payload is nested too deep: more than {MAX_NESTING} levels"
                           if "ecursion" in str(exc) else f"payload cannot be stored: {exc}") \
            from None
    if not isinstance(args[0], str) and _may_nest_deep(raw):
        shallow(value)
    if len(raw) > max_bytes:
        raise PayloadError(f"payload too large: {len(raw)} bytes, the limit is {max_bytes}")
    return value, raw


def user_id(value: Any, field: str, max_length: int) -> str:
    """A user id as text. Ids may be JSON strings or integers, as the seed's apps send them."""
    if value is None:
        raise PayloadError(f"{field} is missing")
    problem = user_id_problem(value, max_length)
    if problem:
        raise PayloadError(f"{field} {problem}")
    return str(value)


def user_id_problem(value: Any, max_length: int) -> str | None:
    """Why ``value`` is not a user id, or None; the HTTP API's schema checks with this too."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"must be a string or an integer, not {_kind(value)}"
    text = str(value)
    if not text.strip():
        return "must not be empty"
    if len(text) > max_length:
        return f"is longer than {max_length} characters"
    return None


def optional_text(value: Any, field: str, max_length: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PayloadError(f"{field} must be a string, not {_kind(value)}")
    text = str(value)
    if len(text) > max_length:
        raise PayloadError(f"{field} is longer than {max_length} characters")
    return text


def same_user(payload: dict, field: str, user: str) -> None:
    """A client may repeat its own id in a payload, never another one (seed bug 5)."""
    if field in payload and str(payload[field]) != user:
        raise PayloadError(f"{field} does not match the logged-in user")


_MID = re.compile(r"\d{1,20}-\d{1,20}")


def last_mids(value: Any) -> dict[str, str]:
    """``lastMids`` of a login: the last chat and notification ids the client has seen."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not set(value) <= {"chat", "notification"}:
        raise PayloadError('lastMids must be {"chat": mid, "notification": mid}')
    for mid in value.values():
        if not isinstance(mid, str) or not _MID.fullmatch(mid):
            raise PayloadError("lastMids holds an id that is not a mid")
    return value


class Notification(NamedTuple):
    users: list[str]
    need_store: bool


def notification(message: dict, max_recipients: int, max_id_length: int) -> Notification:
    """Recipients (in order, without repeats) and whether to store, of a notification."""
    users = message.get("toWho")
    if users is None:
        raise PayloadError("toWho is missing")
    if not isinstance(users, list):
        raise PayloadError(f"toWho must be a list of user ids, not {_kind(users)}")
    if len(users) > max_recipients:
        raise PayloadError(f"toWho has {len(users)} recipients, the limit is {max_recipients}")
    clean = list(dict.fromkeys(user_id(u, "toWho[]", max_id_length) for u in users))
    need_store = message.get("needStore", False)
    problem = need_store_problem(need_store)
    if problem:
        raise PayloadError(f"needStore {problem}")
    return Notification(clean, bool(need_store))


def need_store_problem(value: Any) -> str | None:
    """Why ``value`` is not a needStore flag (the seed's apps send booleans or 0/1), or None."""
    if value in (0, 1) and not isinstance(value, float):
        return None
    return f"must be true or false, not {_kind(value)}"


def _kind(value: Any) -> str:
    return {
        dict: "an object", list: "a list", str: "a string", bool: "a boolean",
        int: "a number", float: "a number", type(None): "null",
    }.get(type(value), type(value).__name__)
