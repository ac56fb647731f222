"""From ``REDIS_URL`` to a redis-py client: one Redis server, a Redis Cluster, or the
master a group of Sentinels names.

The three forms (README, "Configuration")::

    redis://[[user]:password@]host[:port][/db]   rediss://…   unix://[[user]:password@]/path
    redis+cluster://[[user]:password@]host:port[,host:port…]          rediss+cluster://…
    redis+sentinel://[[user]:password@]host:port[,host:port…]/MASTER[?db=N&sentinel_password=…]

A single server's URL goes to redis-py's ``from_url`` as it is. For a cluster the hosts are
seeds: redis-py asks any of them for the others and follows the slots as they move and as
replicas are promoted. For Sentinel the hosts are the sentinels, and the client asks them
where the master named by the path is each time it connects, so that it follows failovers.

``parse`` uses only the standard library: gunicorn's master validates the settings before
its workers apply gevent's monkey patching, which must come before redis-py (and ssl) are
imported. ``connect`` and ``sharded_pubsub`` import redis-py when called.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster

    from .config import Config

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
# Redis 7.0 brought sharded pub/sub (SPUBLISH, SSUBSCRIBE).
SHARDED_PUBSUB_VERSION = (7, 0)


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


def parse(url: str) -> RedisTarget:
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


def connect(config: Config, size: int | None = None,
            **options: Any) -> redis.Redis | RedisCluster:
    """A client of ``REDIS_URL`` whose pools are bounded (``REDIS_MAX_CONNECTIONS``, or
    ``size``) and make a caller wait up to ``REDIS_POOL_TIMEOUT`` for a free connection
    instead of failing (redis-py's default pools raise once theirs are busy); ``options``
    go to each connection. A cluster client keeps such a pool per node, and asks the seeds
    for the slots at once, raising if none answers (the others connect at first use)."""
    import redis

    target = parse(config.redis_url)
    bounds = {"max_connections": size or config.redis_max_connections,
              "timeout": config.redis_pool_timeout}
    if target.kind == "cluster":
        return _cluster(target, bounds, options)
    if target.kind == "sentinel":
        return _sentinel(target, bounds, options)
    pool = redis.BlockingConnectionPool.from_url(target.url, health_check_interval=30,
                                                 **bounds, **options)
    return redis.Redis(connection_pool=pool)


def _cluster(target: RedisTarget, bounds: dict[str, Any],
             options: dict[str, Any]) -> RedisCluster:
    import redis
    from redis.cluster import REDIS_ALLOWED_KEYS, ClusterNode, RedisCluster

    # RedisCluster drops the options it does not know without a word: say so instead.
    # health_check_interval is one of them; a node's broken connection fails its command,
    # and the client then asks the cluster where the slots are.
    dropped = sorted(set(options) - set(REDIS_ALLOWED_KEYS))
    if dropped:
        raise TypeError(f"redis-py's RedisCluster does not take {', '.join(dropped)}")
    (host, port), *seeds = target.nodes
    host = f"[{host}]" if ":" in host else host
    # redis-py 8.1 builds each node's pool with connection_pool_class only for a client
    # made from a URL; the other seeds are added to the one the URL names.
    return RedisCluster(url=f"{'rediss' if target.tls else 'redis'}://{host}:{port}",
                        startup_nodes=[ClusterNode(*seed) for seed in seeds],
                        connection_pool_class=redis.BlockingConnectionPool,
                        username=target.username, password=target.password,
                        **bounds, **options)


def _sentinel(target: RedisTarget, bounds: dict[str, Any],
              options: dict[str, Any]) -> redis.Redis:
    from redis.sentinel import Sentinel

    # The sentinels get the socket options (redis-py's own default), their password and TLS.
    sentinels = Sentinel(target.nodes, sentinel_kwargs={
        **{key: value for key, value in options.items() if key.startswith("socket_")},
        "password": target.sentinel_password, "ssl": target.tls})
    return sentinels.master_for(
        target.master, connection_pool_class=_blocking_sentinel_pool(),
        db=target.db, username=target.username, password=target.password,
        ssl=target.tls, health_check_interval=30, **bounds, **options)


@functools.cache
def _blocking_sentinel_pool() -> type:
    """redis-py's SentinelConnectionPool (which asks the sentinels for the master's
    address at each connect, and drops connections to a master that was replaced)
    with BlockingConnectionPool's bound and wait. redis-py 8.1 has no such class; the
    two compose as they are: the sentinel pool's methods call ``super()``."""
    import redis
    from redis.sentinel import SentinelConnectionPool

    return type("BlockingSentinelConnectionPool",
                (SentinelConnectionPool, redis.BlockingConnectionPool), {"__module__": __name__})


def sharded_pubsub(client: redis.Redis | RedisCluster) -> bool:
    """Whether every primary behind ``client`` runs Redis 7.0 or newer, and so has
    sharded pub/sub (SPUBLISH, SSUBSCRIBE). On a cluster, a PUBLISH goes to every node
    and a SPUBLISH only to the shard of its channel: the gateway picks the one its Redis
    has, at start."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        infos = client.info("server", target_nodes=RedisCluster.PRIMARIES).values()
    else:
        infos = [client.info("server")]
    return all(_version(info["redis_version"]) >= SHARDED_PUBSUB_VERSION for info in infos)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])
