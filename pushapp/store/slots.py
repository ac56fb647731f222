"""The store's batched scripts on a Redis Cluster: one call split by hash slot.

A batched script (pushapp.store.scripts: APPEND, READ, LOGIN, UNBIND) takes the keys of
many users at once, the messages, logins or unbinds of one moment, where a cluster runs a
script only on keys of one slot (CROSSSLOT). Each item of a batch is one user's keys, in
one slot (their ``{user}`` hash tag), so a batch splits cleanly: one EVALSHA per slot, each
with the items of its slot in their order, all sent in one pipeline (redis-py's cluster
pipeline writes each node's share on one connection, then reads them), and the answers
put back in the caller's order. On one server the script is called as it is: a batch
stays one EVALSHA, at no cost.

redis-py's cluster pipeline refuses ``evalsha()`` and does not load a script a node
lacks; the EVALSHAs go through ``execute_command``, each naming its slot's master (else
the pipeline asks a node for the keys of each, COMMAND GETKEYS, one round trip per call), and a NOSCRIPT answer (a new node, a
promoted replica, a restart: Redis does not replicate its script cache) loads the script
on every master (SCRIPT LOAD goes to all of them) and runs those slots' calls again.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.crc import key_slot
from redis.exceptions import NoScriptError

# A batched script's call: its keys and args as one server takes them; answers one value
# (or, on a cluster, the error of its slot's call) per item.
Batched = Callable[..., Any]


def batched(client: redis.Redis | RedisCluster, text: str, keys_each: int, shared: int,
            args_each: int) -> Batched:
    """``text`` registered on ``client``, called as ``register_script``'s scripts are
    (``keys=``, ``args=``). Its keys come ``keys_each`` per item; its args are ``shared``
    ones for every item, then ``args_each`` per item. On a cluster it is split by slot."""
    script = client.register_script(text)
    if not isinstance(client, RedisCluster):
        return script
    return SlotScript(client, script, keys_each, shared, args_each)


class SlotScript:
    """A batched script on a cluster: one EVALSHA per hash slot, in one pipeline. A master
    that cannot be connected to fails the whole call before anything is sent, which
    raises, as on one server. An item whose slot's call failed once sent (its master
    gone meanwhile, CLUSTERDOWN while a replica is promoted) answers that error, with the
    other items of its slot: the other slots' items were done."""

    def __init__(self, client: RedisCluster, script: Script, keys_each: int, shared: int,
                 args_each: int) -> None:
        self.client = client
        self.script = script
        self.keys_each = keys_each
        self.shared = shared
        self.args_each = args_each

    def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        shared, each_keys, each_args = args[:self.shared], self.keys_each, self.args_each
        slots: dict[int, list[int]] = {}
        for item in range(len(keys) // each_keys):
            slots.setdefault(key_slot(keys[item * each_keys].encode()), []).append(item)
        calls = []
        for items in slots.values():
            call_keys, call_args = [], list(shared)
            for item in items:
                call_keys += keys[item * each_keys:(item + 1) * each_keys]
                start = self.shared + item * each_args
                call_args += args[start:start + each_args]
            calls.append((items, call_keys, call_args))
        answers: list[Any] = [None] * (len(keys) // each_keys)
        for items, reply in self._run(calls):
            if isinstance(reply, Exception):
                reply = [reply] * len(items)
            for item, answer in zip(items, reply):
                answers[item] = answer
        return answers

    def _run(self, calls: list[tuple[list[int], list[str], list[Any]]]
             ) -> list[tuple[list[int], Any]]:
        """Each call's items and reply, the calls of a slot that lacked the script
        loaded on every master and run again (once)."""
        done: list[tuple[list[int], Any]] = []
        for attempt in range(2):
            with self.client.pipeline(transaction=False) as pipe:
                for _, call_keys, call_args in calls:
                    # The slot's master, named: without it redis-py asks a node for the
                    # keys of each EVALSHA (COMMAND GETKEYS), a round trip per call.
                    pipe.execute_command("EVALSHA", self.script.sha, len(call_keys),
                                         *call_keys, *call_args,
                                         target_nodes=self.client.get_node_from_key(
                                             call_keys[0]))
                replies = pipe.execute(raise_on_error=False)
            missing = []
            for call, reply in zip(calls, replies):
                if isinstance(reply, NoScriptError) and not attempt:
                    missing.append(call)
                else:
                    done.append((call[0], reply))
            if not missing:
                break
            self.client.script_load(self.script.script)
            calls = missing
        return done
