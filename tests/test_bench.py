"""bench/run's choice of Redis (``--redis single|tcp|cluster``), its table's per-master
rows, and the Redis Cluster it starts: three masters sharing the slots, reachable as the
gateway and the bench's publisher reach them."""
from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient

from bench import runner
from bench.procs import RedisCluster


def test_redis_defaults_to_one_server_and_takes_a_list():
    assert runner._options([]).redis == ["single"]
    assert runner._options(["--redis", "tcp,cluster"]).redis == ["tcp", "cluster"]


def test_an_unknown_redis_is_refused(capsys):
    with pytest.raises(SystemExit):
        runner._options(["--redis", "sentinel"])
    assert "--redis takes single, tcp, cluster" in capsys.readouterr().err


def test_only_pushapp_runs_on_a_cluster():
    assert runner.columns(["pushapp", "node"], ["single", "cluster"]) == [
        ("pushapp", "single", "pushapp"), ("pushapp", "cluster", "pushapp/cluster"),
        ("node", "single", "node")]


def _line(target: str, results: dict) -> dict:
    return {"scenario": "fanout_stored_5k", "target": target, "results": results}


def test_the_table_shows_each_master_once_a_column_has_several():
    single = {"redis_us_per_delivery": 20.0, "m0_redis_us_per_delivery": 20.0,
              "m0_share_pct": 100.0, "evalsha_per_notification": 1.0}
    cluster = {"redis_us_per_delivery": 50.0, "m0_redis_us_per_delivery": 30.0,
               "m0_share_pct": 60.0, "m1_redis_us_per_delivery": 10.0, "m1_share_pct": 20.0,
               "evalsha_per_notification": 100.0}
    table = runner.table([_line("pushapp/tcp", single), _line("pushapp/cluster", cluster)],
                         ["pushapp/tcp", "pushapp/cluster"])
    rows = {tuple(line.split()[1:]) for line in table.splitlines()[1:]}
    assert ("redis_us_per_delivery", "20", "50", "x2.50") in rows
    assert ("evalsha_per_notification", "1", "100", "x100.00") in rows
    assert ("m1_share_pct", "-", "20", "-") in rows
    assert ("m0_share_pct", "100", "60", "-") in rows
    alone = runner.table([_line("pushapp", single)], ["pushapp"])
    assert "m0_" not in alone


def test_the_bench_cluster_has_three_masters_sharing_the_slots(tmp_path):
    cluster = RedisCluster(tmp_path)
    cluster.start()
    try:
        client = ClusterClient.from_url(cluster.node_urls[0].removesuffix("/0"))
        for i in range(300):
            client.set(f"pushapp:{{u{i}}}:on", i)
        nodes = [redis.Redis.from_url(url) for url in cluster.node_urls]
        held = [node.dbsize() for node in nodes]
        assert sum(held) == 300 and all(60 < count < 140 for count in held), held
        # a plain client of one node hears what is published on another
        listener = nodes[1].pubsub(ignore_subscribe_messages=True)
        listener.subscribe("notification")
        nodes[0].publish("notification", b"hello")
        message = None
        for _ in range(50):
            message = listener.get_message(timeout=0.1)
            if message:
                break
        assert message and message["data"] == b"hello"
        assert cluster.url.startswith("redis+cluster://127.0.0.1:")
        assert all((tmp_path / f"node-{i}" / "appendonlydir").exists() for i in range(3))
        listener.close()
        client.close()
    finally:
        cluster.stop()
    assert all(process.poll() is not None for process in cluster.processes)
