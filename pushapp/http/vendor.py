"""The official Socket.IO JavaScript client the pages use, fetched by the project's setup.

The browser pages (pushapp.http.pages) load socket.io-client from the gateway itself: a page
that loaded it from a CDN would fail on networks that block third parties, and a
hand-written client would test nothing. The file is not kept in git: ``bin/setup`` (or
``python -m pushapp.http.vendor``) downloads the pinned npm tarball with the standard library,
checks it against the sha512 integrity npm records for it (the same as in
tests/js/package-lock.json), and extracts ``dist/socket.io.min.js`` into
``pushapp/static/vendor/``. Only Python is needed, no node.
"""
from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "4.8.4"
TARBALL = f"https://registry.npmjs.org/socket.io-client/-/socket.io-client-{VERSION}.tgz"
# npm's "integrity" of the tarball: sha512, base64.
INTEGRITY = ("sha512-7wjKAvVXYOJsbmUgkWbnhPD4bFpkqrUR0++XOjpGFmqDqsqV1CI93VTraeExLxpjxEqrWgFoSRZu"
             "1ihjLWfkAA==")
MEMBER = "package/dist/socket.io.min.js"
# pushapp/static, beside the pages' templates (a folder above this module).
STATIC = Path(__file__).resolve().parent.parent / "static"
# The version is in the name, so that a new pin is fetched anew and never mixed up.
CLIENT = STATIC / "vendor" / f"socket.io-{VERSION}.min.js"
CLIENT_URL_PATH = CLIENT.relative_to(STATIC).as_posix()
FETCH_COMMAND = "bin/setup (or: python -m pushapp.http.vendor)"


class VendorError(Exception):
    """The client could not be fetched or did not match its pin."""


def present() -> bool:
    return CLIENT.is_file()


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def extract(tarball: bytes) -> bytes:
    """The client out of npm's tarball, once the tarball matches ``INTEGRITY``."""
    found = integrity_of(tarball)
    if found != INTEGRITY:
        raise VendorError(f"socket.io-client {VERSION}: the tarball's integrity is {found}, "
                          f"not the pinned {INTEGRITY}")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            raise VendorError(f"{MEMBER} is not a file in {TARBALL}")
        return member.read()


def fetch(timeout: float = 60.0) -> Path:
    """Download, check and install the client; a no-op when it is there already."""
    if present():
        return CLIENT
    try:
        with urllib.request.urlopen(TARBALL, timeout=timeout) as answer:
            tarball = answer.read()
    except OSError as exc:
        raise VendorError(f"could not download {TARBALL}: {exc}") from None
    client = extract(tarball)
    CLIENT.parent.mkdir(parents=True, exist_ok=True)
    partial = CLIENT.with_suffix(".part")
    partial.write_bytes(client)
    partial.replace(CLIENT)
    return CLIENT


def main() -> int:
    """Fetch the client unless it is there; on failure say why, and what works without it
    (exit status 1)."""
    if present():
        return 0
    try:
        path = fetch()
    except VendorError as exc:
        print(f"pushapp: {exc}\npushapp: the /demo page will not work until {FETCH_COMMAND} "
              "succeeds; the gateway itself does not need the file", file=sys.stderr)
        return 1
    print(f"installed socket.io-client {VERSION} (checked against its pinned sha512) in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
