"""A connection of the store's own for the commands of a chat.

A chat costs the worker three batches of Redis commands: the PUBLISH to the filter
server, the script that stores it, the XDEL of its ack. Through redis-py each batch also
pays a pool checkout (a lock, a poll of the socket for stray data, timing for its
metrics), a pipeline object with its command stack, and the retry wrapper, whatever the
batch's size (their share of a chat: docs/benchmarks.md). A ``Lane`` keeps a few
connections, packs a batch with hiredis, sends it and reads the replies, nothing more.
In a busy worker a few greenlets send batches at the same moment (the publish and ack
collectors, the listener's handler, a batch of logins), each on a connection of the lane
that no other batch is using; beyond ``KEPT`` at once, a batch runs the same way on a
connection of the pool, so nobody waits behind anybody and the lane stays small.

On one server and on a Sentinel-managed master only: redis-py's connection class for a
master the sentinels name finds the master as it connects and drops a connection to one
that was demoted, which the lane inherits. A cluster routes each command by its slot, so
the store keeps redis-py's cluster pipelines there.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from hiredis import pack_command
from redis.commands.core import Script

Command = Sequence[Any]

# Connections a lane keeps: one per greenlet that may send a batch at the same moment in a
# busy worker (the publish and ack collectors, the listener's handler, logins).
KEPT = 4


class Lane:
    """Batches of commands on connections kept for them (made by the client's pool, which
    counts them among its own and drops them with the others after a fork), one batch at
    a time on each."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._idle: list[redis.Connection] = []
        self._kept = 0

    def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The reply of each command, in order; a command that fails answers its
        ResponseError instead of raising. A connection that breaks raises its
        ConnectionError or TimeoutError (the commands may or may not have run, as with a
        pipeline) and is closed; the next batch connects again."""
        if self._idle:
            connection = self._idle.pop()
        elif self._kept < KEPT:
            connection = self._pool.make_connection()
            self._kept += 1
        else:
            connection = self._pool.get_connection()
            try:
                return _run(connection, commands)
            finally:
                self._pool.release(connection)
        try:
            return _run(connection, commands)
        finally:
            # Also a connection that broke: _run closed it, and the next batch connects.
            self._idle.append(connection)

    def scripts(self, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
                then: Command | None = None) -> tuple[list[Any], list[Any]]:
        """Run ``script`` once per (keys, args) of ``calls``, in one batch: EVALSHA, and for
        those that Redis answers NOSCRIPT (a restarted or flushed Redis), the script
        itself (EVAL, which Redis then keeps), so that none runs twice. Answers the
        script's answer of each call, and the replies of ``then``: a command sent right
        after the scripts in every batch, on the same connection (``WAIT``, which counts
        the writes of its own connection), so one reply, or two when scripts were sent
        again."""
        tail = [then] if then is not None else []
        answers = self.execute([*(("EVALSHA", script.sha, len(keys), *keys, *args)
                                  for keys, args in calls), *tail])
        followed = answers[len(calls):]
        del answers[len(calls):]
        missing = [index for index, answer in enumerate(answers)
                   if isinstance(answer, redis.exceptions.NoScriptError)]
        if missing:
            again = self.execute([*(("EVAL", script.script, len(calls[index][0]),
                                     *calls[index][0], *calls[index][1]) for index in missing),
                                  *tail])
            followed += again[len(missing):]
            for index, answer in zip(missing, again):
                answers[index] = answer
        return answers, followed


def _run(connection: redis.Connection, commands: Sequence[Command]) -> list[Any]:
    try:
        # Connects if it is not: a Sentinel-managed connection finds the master here.
        connection.connect()
        # hiredis packs a command several times faster than redis-py's packer, which
        # normalises each argument in Python first; these are str, bytes and int already.
        connection.send_packed_command([b"".join([pack_command(tuple(command))
                                                  for command in commands])])
        answers: list[Any] = []
        for _ in commands:
            try:
                answers.append(connection.read_response())
            except redis.ResponseError as exc:
                answers.append(exc)
        return answers
    except BaseException:
        connection.disconnect()
        raise
