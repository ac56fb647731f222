"""pushapp installs like a package: ``pip install .`` into a new virtual environment gives
a ``pushapp`` command whose ``serve``, ``token`` and ``check-config`` work from there, and
pyproject.toml declares exactly the pins of requirements.txt."""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import jwt
import pytest
import requests
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pushapp.config import Config
from pushapp.ops.embedded_redis import free_port
from support import ROOT, wait_for

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def _pins(requirements: list[str]) -> list[tuple]:
    """Each requirement as (name, version specifier, extras, environment marker)."""
    parsed = [Requirement(line) for line in requirements]
    return sorted((canonicalize_name(req.name), str(req.specifier), sorted(req.extras),
                   str(req.marker or "")) for req in parsed)


def test_pyproject_declares_the_pins_of_requirements_txt():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pinned = [line for line in (line.split(" #")[0].strip() for line in lines)
              if line and not line.startswith("#")]
    assert _pins(declared) == _pins(pinned)
    assert any(";" in line for line in pinned), "the markers must be compared too"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a new virtual environment where ``pip install`` put pushapp, from
    a copy of the checkout as a clone has it. The dependencies are the ones bin/setup
    installed, reached through a .pth file: nothing is downloaded but the build backend."""
    home = tmp_path_factory.mktemp("installed")
    source = home / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "node_modules", "__pycache__", ".pytest_cache", "build",
        "*.egg-info"))
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "checkout-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
                    "--no-deps", str(source)], check=True, cwd=home)
    where = subprocess.run([python, "-c", "import pushapp; print(pushapp.__file__)"], cwd=home,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(site), f"pushapp imported from {where}, not the installed one"
    return venv / "bin"


def _settings(**values: str) -> dict[str, str]:
    """An environment with these pushapp settings and no others from the caller's."""
    names = {field.metadata["env"] for field in dataclasses.fields(Config)}
    return {**{k: v for k, v in os.environ.items() if k not in names}, **values}


def _run(installed: Path, *args: str, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run([installed / "pushapp", *args], env=_settings(**settings),
                          cwd=installed.parent, capture_output=True, text=True, timeout=60)


def test_check_config_prints_the_settings_with_secrets_hidden(installed):
    checked = _run(installed, "check-config", JWT_SECRET=SECRET, API_KEYS="key-one,key-two",
                   REDIS_URL="redis://:s3cret@10.0.0.5:6379/0", PUSH_DELAY="2.5")
    assert checked.returncode == 0, checked.stderr
    printed = dict(line.split("=", 1) for line in checked.stdout.splitlines())
    assert list(printed) == [field.metadata["env"] for field in dataclasses.fields(Config)]
    assert printed["REDIS_URL"] == "redis://:********@10.0.0.5:6379/0"
    assert printed["JWT_SECRET"] == printed["API_KEYS"] == "********"
    assert (printed["PUSH_DELAY"], printed["TRANSPORTS"]) == ("2.5", "polling,websocket")
    for secret in (SECRET, "key-one", "s3cret"):
        assert secret not in checked.stdout + checked.stderr
    assert checked.stderr == ""


def test_check_config_names_every_problem_and_fails(installed):
    checked = _run(installed, "check-config", AUTH_MODE="insecure", PUSH_DELAY="soon",
                   LOG_LEVEL="loud")
    assert checked.returncode == 1
    assert checked.stdout == ""
    assert checked.stderr.splitlines() == [
        "pushapp: PUSH_DELAY='soon': could not convert string to float: 'soon'",
        "pushapp: LOG_LEVEL='loud': expected one of DEBUG, INFO, WARNING, ERROR"]
    short = _run(installed, "check-config", JWT_SECRET="short")
    assert short.returncode == 1
    assert short.stderr.startswith("pushapp: JWT_SECRET is 5 bytes")
    assert len(short.stderr.splitlines()) == 1
    missing = _run(installed, "check-config", JWT_PUBLIC_KEY_FILE="/nonexistent/key.pem")
    assert missing.returncode == 1
    assert missing.stderr.startswith("pushapp: JWT_PUBLIC_KEY_FILE='/nonexistent/key.pem'")
    unreachable = _run(installed, "check-config", JWT_JWKS_URL=f"http://127.0.0.1:{free_port()}/")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("pushapp: JWT_JWKS_URL=http://127.0.0.1:")


def test_check_config_warns_of_polling_with_several_workers(installed):
    checked = _run(installed, "check-config", AUTH_MODE="insecure", WORKERS="2")
    assert checked.returncode == 0
    assert checked.stderr.startswith("warning: WORKERS=2 with TRANSPORTS allowing long-polling")
    assert _run(installed, "check-config", AUTH_MODE="insecure", WORKERS="2",
                TRANSPORTS="websocket").stderr == ""


def test_token_mints_a_token_of_the_gateways_settings(installed):
    minted = _run(installed, "token", "alice", "--ttl", "60", JWT_SECRET=SECRET,
                  JWT_AUDIENCE="pushapp")
    assert minted.returncode == 0, minted.stderr
    claims = jwt.decode(minted.stdout.strip(), SECRET, algorithms=["HS256"], audience="pushapp")
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 60
    unkeyed = _run(installed, "token", "alice")
    assert unkeyed.returncode == 2
    assert "usage: pushapp token" in unkeyed.stderr and "set JWT_SECRET" in unkeyed.stderr


def test_serve_runs_the_gateway_until_sigterm(installed, start_redis, tmp_path):
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    serving = subprocess.Popen(
        [installed / "pushapp", "serve", "--bind", f"127.0.0.1:{port}"], cwd=tmp_path,
        env=_settings(REDIS_URL=start_redis().url, AUTH_MODE="insecure"),
        stdout=log, stderr=subprocess.STDOUT)
    log.close()

    def answers() -> bool:
        assert serving.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            return requests.get(f"http://127.0.0.1:{port}/monitor", timeout=1).text == "OK"
        except requests.RequestException:
            return False

    try:
        wait_for(answers, timeout=30, what="pushapp serve to answer /monitor")
        # The pages come with the package: templates, scripts, styles, the fetched client.
        demo = requests.get(f"http://127.0.0.1:{port}/demo", timeout=5)
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', demo.text)
        assert demo.status_code == 200 and len(assets) == 4, demo.text
        for asset in assets:
            answer = requests.get(f"http://127.0.0.1:{port}{asset}", timeout=5)
            assert answer.status_code == 200, asset
    finally:
        serving.send_signal(signal.SIGTERM)
        assert serving.wait(20) == 0
    said = (tmp_path / "serve.log").read_text()
    assert "Using worker: pushapp.wire.worker.GatewayWorker" in said
    assert "Shutting down: Master" in said and "Traceback" not in said
