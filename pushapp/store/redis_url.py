"""From ``REDIS_URL`` to a redis-py client: one Redis server, a Redis Cluster, or the
master a group of Sentinels names. What the URL may say (``RedisTarget``, ``parse_redis_url``) is part
of the settings, in pushapp.config, which checks it at start.

A single server's URL goes to redis-py's ``from_url`` as it is. For a cluster the hosts are
seeds: redis-py asks any of them for the others and follows the slots as they move and as
replicas are promoted. For Sentinel the hosts are the sentinels, and the client asks them
where the master named by the path is each time it connects, so that it follows failovers.

``connect`` and ``sharded_pubsub`` import redis-py when called: gunicorn's master imports
this module's package before its workers apply gevent's monkey patching, which must come
before redis-py (and ssl) are imported.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster

    from ..config import Config, RedisTarget

# Redis 7.0 brought sharded pub/sub (SPUBLISH, SSUBSCRIBE).
SHARDED_PUBSUB_VERSION = (7, 0)


def connect(config: Config, size: int | None = None,
            **options: Any) -> redis.Redis | RedisCluster:
    """A client of ``REDIS_URL`` whose pools are bounded (``REDIS_MAX_CONNECTIONS``, or
    ``size``) and make a caller wait up to ``REDIS_POOL_TIMEOUT`` for a free connection
    instead of failing (redis-py's default pools raise once theirs are busy); ``options``
    go to each connection. A cluster client keeps such a pool per node, and asks the seeds
    for the slots at once, raising if none answers (the others connect at first use); the
    options it has no name for, ``parser_class`` and ``health_check_interval``, reach
    each node's connections through their class."""
    import redis

    from ..config import parse_redis_url

    target = parse_redis_url(config.redis_url)
    bounds = {"max_connections": size or config.redis_max_connections,
              "timeout": config.redis_pool_timeout}
    if target.kind == "cluster":
        return _cluster(target, bounds, options)
    if target.kind == "sentinel":
        return _sentinel(target, bounds, options)
    pool = redis.BlockingConnectionPool.from_url(target.url, health_check_interval=30,
                                                 **bounds, **options)
    return redis.Redis(connection_pool=pool)


# Options of a connection that RedisCluster would drop: each node's connections get them
# through a connection class of their own.
_PER_CONNECTION = ("parser_class", "health_check_interval")


def _cluster(target: RedisTarget, bounds: dict[str, Any],
             options: dict[str, Any]) -> RedisCluster:
    import redis
    from redis.cluster import REDIS_ALLOWED_KEYS, ClusterNode, RedisCluster

    options = dict(options)
    # Idle connections are checked (a PING before use after 30 s), as with one server; the
    # listener's pub/sub connection pings as often.
    preset = {"health_check_interval": 30,
              **{name: options.pop(name) for name in _PER_CONNECTION if name in options}}
    # RedisCluster drops the options it does not know without a word: say so instead.
    dropped = sorted(set(options) - set(REDIS_ALLOWED_KEYS))
    if dropped:
        raise TypeError(f"redis-py's RedisCluster does not take {', '.join(dropped)}")
    (host, port), *seeds = target.nodes
    host = f"[{host}]" if ":" in host else host
    # redis-py 8.1 builds each node's pool with connection_pool_class only for a client
    # made from a URL; the other seeds are added to the one the URL names. A rediss://
    # URL would set the connection class itself: TLS comes with the class instead.
    base = redis.SSLConnection if target.tls else redis.Connection
    return RedisCluster(url=f"redis://{host}:{port}",
                        startup_nodes=[ClusterNode(*seed) for seed in seeds],
                        connection_pool_class=redis.BlockingConnectionPool,
                        connection_class=_connection_class(base, preset),
                        username=target.username, password=target.password,
                        **bounds, **options)


def _connection_class(base: type, preset: dict[str, Any]) -> type:
    """``base`` (redis-py's Connection or SSLConnection) made with ``preset`` options."""
    def __init__(self: Any, **kwargs: Any) -> None:
        base.__init__(self, **{**kwargs, **preset})

    return type(f"Preset{base.__name__}", (base,), {"__init__": __init__,
                                                    "__module__": __name__})


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
    """Whether every node behind ``client`` that answers runs Redis 7.0 or newer, and so
    has sharded pub/sub (SPUBLISH, SSUBSCRIBE). On a cluster, a PUBLISH goes to every node
    and a SPUBLISH only to the shard of its channel: the gateway picks the one its Redis
    has, at start. Replicas are asked too, and a node that does not answer is left out: a
    worker that starts while a master is down (its replica not yet promoted) decides as
    the others did. Raises the last error if no node answers."""
    import redis
    from redis.cluster import RedisCluster

    if not isinstance(client, RedisCluster):
        return _version(client.info("server")["redis_version"]) >= SHARDED_PUBSUB_VERSION
    versions, failure = [], None
    for node in client.get_nodes():
        try:
            info = client.info("server", target_nodes=node)
        except redis.RedisError as exc:
            failure = exc
            continue
        versions.append(_version(info["redis_version"]))
    if not versions and failure is not None:
        raise failure
    return all(version >= SHARDED_PUBSUB_VERSION for version in versions)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])
