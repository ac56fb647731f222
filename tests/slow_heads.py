"""Hold request heads that never end (slowloris), from one source address, in a process of
its own: a process may open only so many files, and one address is what per-address
limits count. Used by tests/test_abuse.py.

    python tests/slow_heads.py PORT SOURCE COUNT SECONDS

Opens COUNT connections from SOURCE (say 127.0.0.2) to 127.0.0.1:PORT, sends each
``GET /monitor HTTP/1.1`` and a ``Host`` line but never the blank line that ends the
head, prints ``ready``, then watches for SECONDS how long each connection stays open and
prints a summary as JSON: ``opened``, ``refused`` (could not connect), ``open`` (still
open at the end) and ``closed``, each connection's seconds from its head to its close.
"""
from __future__ import annotations

import json
import selectors
import socket
import sys
import time

HEAD = b"GET /monitor HTTP/1.1\r\nHost: x\r\n"


def main() -> None:
    port, source, count, seconds = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                    float(sys.argv[4]))
    selector = selectors.DefaultSelector()
    sent_at: dict[socket.socket, float] = {}
    closed: list[float] = []

    def watch(timeout: float) -> None:
        """Note the connections the server has closed (it may answer first: a 400)."""
        for key, _ in selector.select(timeout=timeout):
            sock = key.fileobj
            try:
                if sock.recv(4096):
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            closed.append(round(time.monotonic() - sent_at.pop(sock), 3))
            selector.unregister(sock)
            sock.close()

    refused = 0
    for number in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(HEAD)
        except OSError:
            refused += 1
            sock.close()
            continue
        sock.setblocking(False)
        sent_at[sock] = time.monotonic()
        selector.register(sock, selectors.EVENT_READ)
        if number % 20 == 0:
            watch(0)  # closes seen while connecting are timed as they come
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while sent_at and time.monotonic() < deadline:
        watch(0.05)
    print(json.dumps({"opened": count - refused, "refused": refused, "open": len(sent_at),
                      "closed": sorted(closed)}), flush=True)


if __name__ == "__main__":
    main()
