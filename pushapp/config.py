"""Every setting pushapp reads from the environment, in one place.

Defaults keep the seed's channel names, so business servers written for the seed work
unchanged. ``Config.from_env()`` is the only reader of ``os.environ`` for settings; the
table in the README lists the same names.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit


# An HS256 key as long as the hash: RFC 7518 section 3.2.
MIN_JWT_SECRET_BYTES = 32
# Seconds a stopping worker keeps after its drain window (pushapp.drain).
DRAIN_MARGIN = 5.0
# How pushapp check-config and the errors at start show a secret.
HIDDEN = "********"


class ConfigError(ValueError):
    """Settings pushapp cannot use: one message per problem, each naming its variable, so
    that an operator fixes them all in one go."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError("expected one of " + ", ".join(allowed))
        return text

    return parse


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    return parse


def _not_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise ValueError("must not be negative")
        return value

    return parse


def _replicas(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError("expected a number of replicas: 0 (off), 1 or more")
    return int(text)


def _milliseconds(text: str) -> int:
    if not text.strip().isdigit() or int(text) <= 0:
        raise ValueError("expected a whole number of milliseconds, 1 or more (WAIT takes 0 "
                         "for never giving up, which would hold a store forever)")
    return int(text)


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _transports(text: str) -> tuple[str, ...]:
    chosen = _list(text)
    if not chosen or any(name not in ("polling", "websocket") for name in chosen):
        raise ValueError("expected websocket, or polling,websocket")
    return tuple(sorted(set(chosen)))


def _origins(text: str) -> list[str] | str:
    return "*" if text.strip() == "*" else list(_list(text))


def _redis_url(text: str) -> str:
    """The URL as given (redis-py reads it), once ``parse_redis_url`` found it usable."""
    parse_redis_url(text)
    return text


def _key_prefix(text: str) -> str:
    if "{" in text or "}" in text:
        raise ValueError("must not contain { or }: on Redis Cluster the keys carry a {user} "
                         "hash tag, and Redis takes the first {…} of a key for its tag")
    return text


def hide_password(text: str) -> str:
    """``text`` with the password of a URL in it hidden: the one before the host
    (``scheme://user:password@host``) and every ``…password=`` option."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    userinfo, at, rest = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":" + HIDDEN
    rest, question, query = rest.partition("?")
    if question:
        query = urlencode([(key, HIDDEN if key.endswith("password") else value)
                           for key, value in parse_qsl(query, keep_blank_values=True)],
                          safe="*")
    return f"{scheme}://{userinfo}{at}{rest}{question}{query}"


def _field(env: str, default: Any, parse: Callable[[str], Any] = str,
           secret: bool = False) -> Any:
    """A setting read from ``env``; a ``secret`` one is never printed (pushapp check-config)."""
    return dataclasses.field(default=default,
                             metadata={"env": env, "parse": parse, "secret": secret})


@dataclasses.dataclass(frozen=True)
class Config:
    """The gateway's settings. Build with ``Config.from_env()`` or directly in code."""

    redis_url: str = _field("REDIS_URL", "", _redis_url)
    data_dir: str = _field("PUSHAPP_DATA_DIR", "var")
    key_prefix: str = _field("KEY_PREFIX", "pushapp:", _key_prefix)

    channel_snschat: str = _field("CHANNEL_SNSCHAT", "snschat")
    channel_notification: str = _field("CHANNEL_NOTIFICATION", "notification")
    channel_login: str = _field("CHANNEL_LOGIN", "login_message_channel")
    channel_chat_filter: str = _field("CHANNEL_CHAT_FILTER", "chat_filter_channel")
    channel_chat_history: str = _field("CHANNEL_CHAT_HISTORY", "chat_message_history_channel")
    channel_chat_push: str = _field("CHANNEL_CHAT_PUSH", "chat_message_channel")
    channel_geo: str = _field("CHANNEL_GEO", "geo")

    chat_filter: str = _field("CHAT_FILTER", "external", _choice("external", "direct"))
    auth_mode: str = _field("AUTH_MODE", "jwt", _choice("jwt", "insecure"))
    jwt_secret: str = _field("JWT_SECRET", "", secret=True)
    jwt_public_key_file: str = _field("JWT_PUBLIC_KEY_FILE", "")
    jwt_jwks_file: str = _field("JWT_JWKS_FILE", "")
    jwt_jwks_url: str = _field("JWT_JWKS_URL", "")
    jwt_jwks_cooldown: float = _field("JWT_JWKS_COOLDOWN", 10.0, _not_negative(float))
    jwt_algorithms: tuple[str, ...] = _field("JWT_ALGORITHMS", (), _list)
    jwt_audience: str = _field("JWT_AUDIENCE", "")
    jwt_issuer: str = _field("JWT_ISSUER", "")
    jwt_leeway: float = _field("JWT_LEEWAY", 30.0, float)
    api_keys: tuple[str, ...] = _field("API_KEYS", (), _list, secret=True)
    rate_limit: float = _field("RATE_LIMIT", 20.0, _positive(float))
    rate_burst: int = _field("RATE_BURST", 40, _positive(int))
    rate_strikes: int = _field("RATE_STRIKES", 20, _positive(int))
    header_timeout: float = _field("HEADER_TIMEOUT", 5.0, _positive(float))
    login_timeout: float = _field("LOGIN_TIMEOUT", 20.0, _positive(float))
    max_handshakes_per_ip: int = _field("MAX_HANDSHAKES_PER_IP", 50, _positive(int))
    max_channel_message_bytes: int = _field("MAX_CHANNEL_MESSAGE_BYTES", 1024 * 1024,
                                            _positive(int))
    max_connections_per_ip: int = _field("MAX_CONNECTIONS_PER_IP", 0, int)
    # gunicorn reads the same variable, with the same default, for X-Forwarded-Proto.
    forwarded_allow_ips: tuple[str, ...] = _field("FORWARDED_ALLOW_IPS", ("127.0.0.1", "::1"),
                                                  _list)
    push_delay: float = _field("PUSH_DELAY", 120.0, _positive(float))
    ack_timeout: float = _field("ACK_TIMEOUT", 60.0, _positive(float))
    store_max_entries: int = _field("STORE_MAX_ENTRIES", 1000, _positive(int))
    store_max_age: int = _field("STORE_MAX_AGE", 30 * 24 * 3600, _positive(int))
    # A stored message counts as stored once this many replicas have it (WAIT after the
    # append, on its connection); 0: once the master has it, Redis' own default.
    store_wait_replicas: int = _field("STORE_WAIT_REPLICAS", 0, _replicas)
    store_wait_timeout_ms: int = _field("STORE_WAIT_TIMEOUT_MS", 1000, _milliseconds)
    chat_batch_max: int = _field("CHAT_BATCH_MAX", 200, _positive(int))
    max_event_bytes: int = _field("MAX_EVENT_BYTES", 64 * 1024, _positive(int))
    max_frame_bytes: int = _field("MAX_FRAME_BYTES", 256 * 1024, _positive(int))
    max_recipients: int = _field("MAX_RECIPIENTS", 10_000, _positive(int))
    max_user_id_length: int = _field("MAX_USER_ID_LENGTH", 128, _positive(int))
    send_backlog_max_bytes: int = _field("SEND_BACKLOG_MAX_BYTES", 1024 * 1024, _positive(int))

    ping_interval: float = _field("PING_INTERVAL", 60.0, _positive(float))
    ping_timeout: float = _field("PING_TIMEOUT", 30.0, _positive(float))
    # None: browsers only from the gateway's own origin; native apps send no Origin.
    cors_allowed_origins: Any = _field("CORS_ALLOWED_ORIGINS", None, _origins)
    transports: tuple[str, ...] = _field("TRANSPORTS", ("polling", "websocket"), _transports)

    redis_max_connections: int = _field("REDIS_MAX_CONNECTIONS", 32, _positive(int))
    redis_pool_timeout: float = _field("REDIS_POOL_TIMEOUT", 20.0, _positive(float))
    lease_ttl: float = _field("LEASE_TTL", 5.0, _positive(float))
    log_level: str = _field("LOG_LEVEL", "INFO",
                            _choice("DEBUG", "INFO", "WARNING", "ERROR"))

    bind: str = _field("BIND", "127.0.0.1:5000")
    instance: int = _field("INSTANCE", 0, _not_negative(int))
    workers: int = _field("WORKERS", 1, _positive(int))
    drain_window: float = _field("DRAIN_WINDOW", 5.0, _not_negative(float))
    worker_connections: int = _field("WORKER_CONNECTIONS", 50_000, _positive(int))

    log_format: str = _field("LOG_FORMAT", "plain", _choice("plain", "json"))
    metrics_dir: str = _field("METRICS_DIR", "")
    metrics_token: str = _field("METRICS_TOKEN", "", secret=True)
    demo: str = _field("DEMO", "auto", _choice("auto", "0", "1"))
    api_max_body_bytes: int = _field("API_MAX_BODY_BYTES", 4_000_000, _positive(int))
    api_max_batch: int = _field("API_MAX_BATCH", 1000, _positive(int))
    idempotency_ttl: int = _field("IDEMPOTENCY_TTL", 24 * 3600, _positive(int))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Config":
        """Read every field from ``environ`` (default ``os.environ``); unset keeps the default.
        Every value that does not parse is named in the one ``ConfigError`` raised."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for field in dataclasses.fields(cls):
            name = field.metadata["env"]
            raw = environ.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[field.name] = field.metadata["parse"](raw)
            except ValueError as exc:
                problems.append(f"{name}={hide_password(raw)!r}: {exc}")
        if problems:
            raise ConfigError(*problems)
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ConfigError(*problems)

    def _problems(self) -> list[str]:
        """What is wrong in settings that each parsed but do not work together."""
        problems = []
        if self.auth_mode == "jwt" and not (
                self.jwt_secret or self.jwt_public_key_file or self.jwt_jwks_file
                or self.jwt_jwks_url):
            problems.append(
                "AUTH_MODE=jwt (the default) needs a key to check login tokens: set JWT_SECRET "
                "(HS256), JWT_PUBLIC_KEY_FILE (RS256/ES256 PEM), JWT_JWKS_FILE or JWT_JWKS_URL; "
                "or set AUTH_MODE=insecure to trust the myAuraId clients send, as the seed did")
        if self.jwt_secret and len(self.jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
            problems.append(
                f"JWT_SECRET is {len(self.jwt_secret.encode())} bytes: an HS256 secret needs "
                f"{MIN_JWT_SECRET_BYTES} or more, or it can be guessed offline from one token "
                "(make one with: python3 -c 'import secrets; print(secrets.token_hex(32))')")
        if self.jwt_jwks_url and not self.jwt_jwks_url.startswith(("https://", "http://")):
            problems.append(
                f"JWT_JWKS_URL={self.jwt_jwks_url!r}: expected an https:// (or http://) URL")
        if self.max_frame_bytes < self.max_event_bytes:
            problems.append("MAX_FRAME_BYTES must not be below MAX_EVENT_BYTES")
        problems += self._wait_problems()
        if self.instance:
            host, _, port = self.bind.rpartition(":")
            if not (host and port.isdigit()) or int(port) + self.instance > 65535:
                problems.append(f"INSTANCE={self.instance} needs BIND as host:port with room "
                                f"for port + INSTANCE, not {self.bind!r}")
        return problems

    def _wait_problems(self) -> list[str]:
        """STORE_WAIT_REPLICAS where it cannot work: on a Redis with no replica (the
        embedded one), or on a cluster, where redis-py's pipeline re-sends a script that
        met MOVED, ASK or a broken connection on another connection than its WAIT's
        (docs/deployment.md, "What a failover can lose")."""
        if not self.store_wait_replicas:
            return []
        setting = f"STORE_WAIT_REPLICAS={self.store_wait_replicas}"
        if not self.redis_url:
            return [f"{setting} needs a Redis with replicas (REDIS_URL): the embedded Redis "
                    "started when REDIS_URL is unset has none, so every store would fail"]
        try:
            kind = parse_redis_url(self.redis_url).kind
        except ValueError:
            return []  # REDIS_URL's own problem, named on its own line
        if kind == "cluster":
            return [f"{setting} is not supported on Redis Cluster: redis-py's cluster "
                    "pipeline may send a store and its WAIT on different connections, where "
                    "WAIT confirms nothing; set STORE_WAIT_REPLICAS=0, or use one server or "
                    "Sentinel (docs/deployment.md)"]
        return []

    def warnings(self) -> list[str]:
        """Settings that work but are likely a mistake: said loudly at start (by gunicorn's
        master, once) and by ``pushapp check-config``."""
        warnings = []
        if self.workers > 1 and "polling" in self.transports:
            warnings.append(
                f"WORKERS={self.workers} with TRANSPORTS allowing long-polling: every request "
                "of a polling session must reach the worker that opened it, which one gunicorn "
                "with several workers cannot promise (polling clients fail with 'Invalid "
                "session'). Set TRANSPORTS=websocket, or run one worker per gunicorn instance "
                "behind a load balancer with sticky sessions (docs/deployment.md)")
        return warnings

    @property
    def listen(self) -> str:
        """The address gunicorn binds: ``BIND``, its port moved up by ``INSTANCE`` so that
        the instances supervisord starts from one program take consecutive ports."""
        if not self.instance:
            return self.bind
        host, _, port = self.bind.rpartition(":")
        return f"{host}:{int(port) + self.instance}"

    @property
    def graceful_timeout(self) -> int:
        """Seconds gunicorn gives a stopping worker: the drain window, and time for what is
        in flight and for the clients' closing handshakes (gunicorn takes whole seconds)."""
        return math.ceil(self.drain_window + DRAIN_MARGIN)

    @property
    def reserved_files(self) -> int:
        """Files a worker needs besides its clients' sockets: its Redis pool, the listening
        socket, logs, the event loop, metrics files, connections being set up."""
        return self.redis_max_connections + 64

    def socket_capacity(self, open_files: int) -> int:
        """Client sockets one worker holds: ``WORKER_CONNECTIONS``, but never so many that
        a client's socket would take the descriptor a Redis connection needs."""
        return max(1, min(self.worker_connections, open_files - self.reserved_files))

    def key(self, *parts: str) -> str:
        """A Redis key (or internal channel) under ``key_prefix``."""
        return self.key_prefix + ":".join(parts)


# The grammar of REDIS_URL; pushapp.store.redis_url makes the clients. It uses only the
# standard library: gunicorn's master validates the settings before its workers apply
# gevent's monkey patching, which must come before redis-py (and ssl) are imported.
# The three forms (README, "Configuration")::
#
#     redis://[[user]:password@]host[:port][/db]   rediss://…   unix://[[user]:password@]/path
#     redis+cluster://[[user]:password@]host:port[,host:port…]          rediss+cluster://…
#     redis+sentinel://[[user]:password@]host:port[,host:port…]/MASTER[?db=N&sentinel_password=…]
SINGLE_SCHEMES = ("redis", "rediss", "unix")
# scheme -> (kind, TLS)
_MANY_HOSTS = {
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_DEFAULT_PORT = {"cluster": 6379, "sentinel": 26379}
# Query options each kind takes; anything else is a mistake better named at start.
_OPTIONS = {"cluster": ("password",), "sentinel": ("db", "password", "sentinel_password")}
_FORMS = ("redis://, rediss://, unix://, redis+cluster://, rediss+cluster://, "
          "redis+sentinel:// or rediss+sentinel://")


@dataclasses.dataclass(frozen=True)
class RedisTarget:
    """What a ``REDIS_URL`` names. Its repr leaves the passwords (and the URL, which may
    hold one) out, so that a log line or a traceback never shows them."""

    kind: str  # "single", "cluster" or "sentinel"
    # Cluster: seed nodes; Sentinel: the sentinels; single: none (``url`` says it all).
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""  # Sentinel: the name of the master the sentinels monitor
    db: int = 0  # Sentinel: the master's database
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)
    tls: bool = False
    url: str = dataclasses.field(default="", repr=False)  # single: given to from_url


def parse_redis_url(url: str) -> RedisTarget:
    """The target of ``url``, or ``ValueError`` saying in one line what is wrong with it
    (never quoting a password)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or (scheme not in SINGLE_SCHEMES and scheme not in _MANY_HOSTS):
        raise ValueError(f"expected a URL starting with {_FORMS}")
    parts = urlsplit(url)
    if scheme != "unix" and "@" in url[len(scheme) + 3 + len(parts.netloc):]:
        # A '/', '?' or '#' in a password ends the host part early: the rest would be
        # read as hosts, path or options, and quoted in the errors below.
        raise ValueError("'@' after the host part: percent-encode '/', '?', '#' and '@' in "
                         "a user name or password (%2F, %3F, %23, %40)")
    if scheme in SINGLE_SCHEMES:
        host = parts.netloc.rpartition("@")[2]
        if "," in host:
            raise ValueError(f"{scheme}:// names one server: for several, use "
                             "redis+cluster:// or redis+sentinel://")
        if scheme != "unix" and host:
            _node(host, 6379)  # the same checks of the host and port as below
        return RedisTarget("single", tls=scheme == "rediss", url=url)
    kind, tls = _MANY_HOSTS[scheme]
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = tuple(_node(text, _DEFAULT_PORT[kind]) for text in hosts.split(","))
    options = _options(parts.query, kind, scheme)
    if password and "password" in options:
        raise ValueError("the password is given twice, before the hosts and as ?password=")
    path = unquote(parts.path.strip("/"))
    if kind == "cluster" and path:
        raise ValueError(f"Redis Cluster has no databases: remove '/{path}' from the URL")
    if kind == "sentinel" and (not path or "/" in path):
        raise ValueError(f"{scheme}:// needs the name of the master the sentinels monitor "
                         f"as its path, and nothing else: {scheme}://host:26379/MASTER_NAME")
    return RedisTarget(kind, nodes, master=path if kind == "sentinel" else "",
                       db=_db(options.get("db", "0")), username=unquote(username) or None,
                       password=unquote(password) or options.get("password") or None,
                       sentinel_password=options.get("sentinel_password") or None, tls=tls)


def _node(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[ipv6]:port`` as (host, port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif text.count(":") == 1 or ":" not in text:
        host, _, port = text.partition(":")
    else:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [address]:port")
    if not host:
        raise ValueError("a host is missing: expected host:port[,host:port…]")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the port of {host} is {port!r}, not a number from 1 to 65535")
    return host, int(port)


def _options(query: str, kind: str, scheme: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if kind == "cluster" and key == "db":
            raise ValueError("Redis Cluster has no databases: remove db= from the URL")
        if key not in _OPTIONS[kind]:
            raise ValueError(f"unknown option {key!r} in a {scheme}:// URL; it takes "
                             + ", ".join(_OPTIONS[kind]))
        if key in options:
            raise ValueError(f"option {key!r} is given twice")
        options[key] = value
    return options


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"db is {text!r}, not a database number")
    return int(text)
