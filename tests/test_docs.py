"""The docs stay true: docs/http-api.md's curl commands run against a real gateway answer
as shown, its Java program runs, and it and the OpenAPI document cover every route; the
README's "Try it" chat runs against ``bin/serve`` as written.

Java is required (a JDK 11 or newer, for single-file ``java File.java``): without it the
Java test fails, it never skips.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
from flask import Flask

from pushapp.http import api, health
from pushapp.http.openapi import CATALOG
from pushapp.ops.embedded_redis import free_port
from support import API_KEY, ROOT, Gateway, uid, wait_for

DOC = (ROOT / "docs" / "http-api.md").read_text()
DOC_URL = "http://127.0.0.1:5000"
_BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
_VOLATILE = re.compile(r"^(\d{13}-\d+|\d{4}-\d\d-\d\dT[\d:.]+Z|[^:\s]+:\d+:[0-9a-f]{6})$")


def _curl_examples() -> list[tuple[str, str, str]]:
    """(command, kind of answer block, answer) for each ``sh`` block running curl."""
    blocks = _BLOCK.findall(DOC)
    return [(body, blocks[i + 1][0], blocks[i + 1][1]) for i, (lang, body) in enumerate(blocks)
            if lang == "sh" and body.startswith("curl")]


def _alike(documented: Any, actual: Any) -> bool:
    """Equal, but for ids, times and node names, which differ from run to run."""
    if isinstance(documented, dict):
        return isinstance(actual, dict) and documented.keys() == actual.keys() and all(
            _alike(documented[key], actual[key]) for key in documented)
    if isinstance(documented, list):
        return isinstance(actual, list) and len(documented) == len(actual) and all(
            map(_alike, documented, actual))
    if isinstance(documented, str) and _VOLATILE.match(documented):
        return isinstance(actual, str) and bool(_VOLATILE.match(actual))
    if isinstance(documented, int) and documented > 10**12:  # a time in milliseconds
        return isinstance(actual, int) and actual > 10**12
    return documented == actual


def _check_http(documented: str, output: str, command: str) -> None:
    doc_head, _, doc_body = documented.partition("\n\n")
    head, _, body = output.replace("\r\n", "\n").partition("\n\n")
    doc_status, *doc_headers = doc_head.splitlines()
    status, *headers = head.splitlines()
    assert status.split()[1] == doc_status.split()[1], f"{command}\n{output}"
    got = {name.lower(): value for name, _, value in (h.partition(": ") for h in headers)}
    for line in doc_headers:
        name, _, value = line.partition(": ")
        assert got.get(name.lower()) == value, f"{command}: header {line!r}\n{output}"
    if doc_body.lstrip().startswith("{"):
        assert _alike(json.loads(doc_body), json.loads(body)), f"{command}\n{output}"
    else:
        assert body.strip() == doc_body.strip(), f"{command}\n{output}"


def test_the_curl_examples_answer_as_documented(start_gateway):
    gateway = start_gateway()
    alice = gateway.client()
    alice.login("alice", "phone-1")
    examples = _curl_examples()
    assert len(examples) >= 11
    try:
        for command, kind, documented in examples:
            result = subprocess.run(
                ["bash", "-o", "pipefail", "-c", command.replace(DOC_URL, gateway.url)],
                capture_output=True, text=True, timeout=30,
                env={**os.environ, "PUSHAPP_API_KEY": API_KEY})
            assert result.returncode == 0, f"{command}\n{result.stderr}"
            if kind == "http":
                _check_http(documented, result.stdout, command)
            else:
                assert sorted(result.stdout.splitlines()) == sorted(documented.splitlines()), \
                    f"{command}\n{result.stdout}"
    finally:
        alice.close()
    gateway.assert_unharmed()


def test_the_java_example_runs(gateway, tmp_path):
    java = shutil.which("java")
    assert java, "java is not on PATH: install a JDK 11 or newer; this test does not skip"
    [source] = [body for lang, body in _BLOCK.findall(DOC) if lang == "java"]
    users = [uid(), uid()]
    source = source.replace('\\"alice\\", \\"bob\\"', '\\"{}\\", \\"{}\\"'.format(*users))
    program = tmp_path / "PushappNotify.java"
    program.write_text(source)
    result = subprocess.run([java, str(program), gateway.url], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PUSHAPP_API_KEY": API_KEY})
    assert result.returncode == 0, result.stdout + result.stderr
    status, _, body = result.stdout.strip().partition(" ")
    assert status == "200"
    assert json.loads(body)["stored"] == 2
    assert [gateway.pending("notif", user) for user in users] == [
        [{"toWho": users, "needStore": True, "title": "Your order shipped"}]] * 2


def test_the_docs_and_the_openapi_document_cover_every_route(gateway: Gateway):
    document = gateway.api("GET", "/openapi.json").json()
    operations = [f"`{method.upper()} {path}`" for path, item in document["paths"].items()
                  for method in item]
    assert len(operations) == len(CATALOG.operations)
    missing = [operation for operation in operations if operation not in DOC]
    assert not missing, f"docs/http-api.md does not list {missing}"
    app = Flask("routes")
    app.url_map.converters["user"] = api.UserConverter
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    served = {rule.endpoint for rule in app.url_map.iter_rules()} - {"static"}
    assert served == {op.endpoint for op in CATALOG.operations}
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, item in document["paths"].items():
        public = path in ("/monitor", "/health/ready", "/metrics", "/api/v1/openapi.json")
        for operation in item.values():
            assert operation["security"] == ([] if public else [{"bearerAuth": []}]), path


def test_the_readmes_chat_runs_against_bin_serve(tmp_path: Path):
    """bin/serve as a newcomer runs it (no key, no Redis, no CHAT_FILTER), on a free port
    and with its data in a temporary folder, then the README's two clients."""
    readme = (ROOT / "README.md").read_text()
    try_it = readme.split("Try it:")[1].split("\n## ")[0]
    blocks = _BLOCK.findall(try_it)
    [(index, program)] = [(i, body) for i, (lang, body) in enumerate(blocks)
                          if lang == "sh" and "<<'EOF'" in body]
    script = program.split("<<'EOF'\n")[1].split("\nEOF\n")[0]
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if key not in ("AUTH_MODE", "CHAT_FILTER", "REDIS_URL") and not key.startswith("JWT_")}
    env.update(BIND=f"127.0.0.1:{port}", PUSHAPP_DATA_DIR=str(tmp_path / "var"))
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen([ROOT / "bin" / "serve"], cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)

    def up() -> bool:
        assert serve.poll() is None, log_path.read_text()
        return _answers(f"http://127.0.0.1:{port}/monitor")

    try:
        wait_for(up, timeout=90, what="bin/serve to answer")
        said = log_path.read_text()
        assert "DEVELOPMENT MODE: no JWT key is set" in said
        assert "DEVELOPMENT MODE: CHAT_FILTER=direct: chats from clients are delivered " \
               "directly, as no filter server runs" in said
        chatted = subprocess.run([sys.executable, "-"], capture_output=True, text=True,
                                 input=script.replace(DOC_URL, f"http://127.0.0.1:{port}"),
                                 timeout=60)
        assert chatted.returncode == 0, chatted.stderr
        assert chatted.stdout == blocks[index + 1][1]
        _check_the_demo_is_served(f"http://127.0.0.1:{port}", log_path.read_text())
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    assert "Traceback" not in log_path.read_text()


def _check_the_demo_is_served(base: str, said: str) -> None:
    """What the README's "Try it" opens first: / leads to the demo, whose JavaScript client
    bin/setup fetched, and the API key bin/serve printed opens the API."""
    key = re.search(r"DEVELOPMENT MODE: API_KEYS=(\S+) ", said).group(1)
    assert requests.get(base + "/", timeout=5, allow_redirects=False).headers["Location"] == \
        "/demo"
    page = requests.get(base + "/demo", timeout=5).text
    client = re.search(r'<script src="(/static/vendor/socket\.io-[\d.]+\.min\.js)"', page)
    assert client, page
    script = requests.get(base + client.group(1), timeout=5)
    assert script.status_code == 200 and script.text.startswith("/*!\n * Socket.IO v")
    assert requests.get(base + "/api/v1/stats", timeout=5,
                        headers={"Authorization": f"Bearer {key}"}).status_code == 200


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).text == "OK"
    except requests.RequestException:
        return False
