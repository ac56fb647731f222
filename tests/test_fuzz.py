"""The HTTP API fuzzed from its own OpenAPI document, and the sockets fuzzed with what a
hostile client sends, against the real gateway.

schemathesis generates requests from the document the gateway serves, valid ones and
invalid ones (wrong types, missing fields, odd strings, bad headers), hypothesis drives
them, and each goes over HTTP to gunicorn. Every answer is checked: never a 5xx, always a
status the document lists, with the content type and body schema it declares. Bodies
nested hundreds of levels deep are answered 400.

Over real websockets hypothesis sends sequences of namespace joins and leaves, events
with payloads of any shape and depth, binary packets and frames, and garbage: whatever
comes, a binary packet closes the connection with 1003, the worker neither dies nor logs
a traceback, and a bystander is served throughout.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from support import API_KEY, WAIT, Gateway, close_code, uid

EXAMPLES = 50
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_gateway(start_gateway) -> Iterator[Gateway]:
    gateway = start_gateway()
    yield gateway
    gateway.assert_unharmed()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(fuzz_gateway, mode):
    schema = schemathesis.openapi.from_url(fuzz_gateway.url + "/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # Every operation but the document itself, which schemathesis leaves out.
    assert len(operations) == sum(map(len, schema.raw_schema["paths"].values())) - 1
    if mode is GenerationMode.NEGATIVE:
        # Invalid bodies and queries; an invalid path id mostly cannot be put in a URL at
        # all (test_api checks the ones that can), so schemathesis finds too few to try.
        operations = [op for op in operations if op.body or op.query]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers_as_documented(case):
            case.call_and_validate(base_url=fuzz_gateway.url, checks=CHECKS,
                                   headers={"Authorization": f"Bearer {API_KEY}"})

        answers_as_documented()


def nested(depth: int, leaf: Any, objects: bool) -> Any:
    """``leaf`` inside ``depth`` lists, or objects ``{"k": …}``."""
    for _ in range(depth):
        leaf = {"k": leaf} if objects else [leaf]
    return leaf


LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                   st.text(max_size=20))
DEEP = st.builds(nested, st.integers(1, 400), LEAVES, st.booleans())
PAYLOADS = st.one_of(DEEP, st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4)
                                        | st.dictionaries(st.text(max_size=8), inner,
                                                          max_size=4), max_leaves=20))


@given(kind=st.sampled_from(["chats", "notifications"]), depth=st.integers(1, 400),
       leaf=LEAVES, objects=st.booleans())
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_deeply_nested_api_bodies_are_refused_as_json(fuzz_gateway, kind, depth, leaf,
                                                       objects):
    body = {"to": "u", "toWho": ["u"], "x": nested(depth, leaf, objects)}
    answer = fuzz_gateway.api("POST", "/" + kind, data=json.dumps(body),
                              headers={"Content-Type": "application/json"})
    # The body is one level, its members' containers the others: 32 levels at most.
    assert answer.status_code == (400 if 1 + depth > 32 else 200), answer.text
    assert answer.headers["Content-Type"] == "application/json"


# What a hostile socket sends: ("text", frame) or ("binary", frame).
EVENTS = st.sampled_from(["hb", "chat", "geo", "login", "refresh", "nope"])
SOCKET_PACKETS = st.one_of(
    st.sampled_from([("text", "40"), ("text", "41"), ("text", '40{"token":1}'),
                     ("text", "3"), ("text", "6"), ("text", "44")]),
    st.builds(lambda ack, name, payload: ("text", f"42{ack}" + json.dumps([name, payload])),
              st.sampled_from(["", "1", "99999"]), EVENTS, PAYLOADS),
    st.builds(lambda kind, count, name: ("text", f"4{kind}{count}-" + json.dumps([name])),
              st.sampled_from(["5", "6"]), st.integers(0, 10**9), EVENTS),
    st.builds(lambda data: ("binary", data), st.binary(max_size=4096)),
    st.builds(lambda text: ("text", text), st.text(max_size=64)),
)


@given(sequence=st.lists(SOCKET_PACKETS, min_size=1, max_size=20))
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_packet_sequence_harms_the_gateway(fuzz_gateway, sequence):
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{fuzz_gateway.port}/socket.io/?EIO=4&transport=websocket", timeout=WAIT)
    assert ws.recv().startswith("0")
    binary_sent = False
    try:
        for kind, data in sequence:
            if kind == "binary":
                ws.send_binary(data)
            else:
                ws.send(data)
            if kind == "text" and data[:1] == "1":
                return  # an Engine.IO close packet: the client left
            binary_sent = kind == "binary" or data[:2] in ("45", "46")
            if binary_sent:
                break
    except (websocket.WebSocketException, ConnectionError):
        return  # closed already, for what came before
    if binary_sent:
        # 1003; 1008 if garbage before had already used up its strikes.
        assert close_code(ws, timeout=2) in (1003, 1008, None), "binary data must close the connection"
    ws.close()


def test_a_bystander_is_served_after_the_fuzzing(fuzz_gateway):
    client = fuzz_gateway.client()
    try:
        assert client.login(uid()) == 1 and client.call("hb") == 1
        assert requests.get(fuzz_gateway.url + "/monitor", timeout=WAIT).text == "OK"
    finally:
        client.close()
