"""The libraries' private parts that pushapp relies on (pushapp/internals/) are still there.

Each name listed in a ``RELIED_ON`` of pushapp.internals is checked against the installed
versions, which must be the pinned ones: a method with the parameters pushapp calls or
overrides it with, an attribute on the class, or one its instances are given (``self.<name>``
in the class's source). An upgrade that renames or reshapes one fails here, naming it and
what pushapp does with it, instead of in production.
"""
from __future__ import annotations

import inspect
import re
from importlib import metadata
from pathlib import Path

import pytest

from pushapp.internals import (Reliance, gevent_websocket, prometheus_histograms, redis_parsers,
                               socketio_engineio)

ROOT = Path(__file__).resolve().parent.parent
RELIED_ON = [*socketio_engineio.RELIED_ON, *gevent_websocket.RELIED_ON, *redis_parsers.RELIED_ON,
             *prometheus_histograms.RELIED_ON]
# The distributions whose internals are listed (Flask-SocketIO: its construction of the
# python-socketio server, which pushapp adopts).
LIBRARIES = ("python-engineio", "python-socketio", "Flask-SocketIO", "gevent-websocket",
             "redis", "prometheus-client")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        found = re.match(r"\s*([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
        if found:
            pins[found.group(1).lower()] = found.group(2)
    return pins


@pytest.mark.parametrize("library", LIBRARIES)
def test_the_installed_versions_are_the_pinned_ones(library: str) -> None:
    pinned = _pins().get(library.lower())
    assert pinned, f"{library} is not pinned in requirements.txt"
    installed = metadata.version(library)
    assert installed == pinned, (
        f"{library} {installed} is installed, {pinned} is pinned: check pushapp/internals/ "
        "against the new version, then move the pin")


def _label(reliance: Reliance) -> str:
    owner = getattr(reliance.owner, "__qualname__", getattr(reliance.owner, "__name__", "?"))
    return f"{owner}.{reliance.name}"


def _in_source(owner: type, name: str) -> bool:
    """Whether ``self.<name>`` is assigned in the source of ``owner`` or one of its bases."""
    pattern = re.compile(rf"self\.{re.escape(name)}\s*(:[^=]*)?=[^=]")
    for cls in inspect.getmro(owner):
        try:
            if pattern.search(inspect.getsource(cls)):
                return True
        except (OSError, TypeError):
            continue
    return False


@pytest.mark.parametrize("reliance", RELIED_ON, ids=_label)
def test_each_relied_on_name_is_there(reliance: Reliance) -> None:
    where = f"{_label(reliance)} (pushapp relies on it: {reliance.why})"
    if reliance.instance:
        assert _in_source(reliance.owner, reliance.name), f"{where}: no longer set on instances"
        return
    assert hasattr(reliance.owner, reliance.name), f"{where}: gone"
    if reliance.params is None:
        return
    found = getattr(reliance.owner, reliance.name)
    assert callable(found), f"{where}: no longer a method"
    params = [name for name in inspect.signature(found).parameters if name != "self"]
    assert params[:len(reliance.params)] == list(reliance.params), (
        f"{where}: its parameters are now {params}, pushapp passes {list(reliance.params)}")


def test_the_library_classes_are_taken_from_the_fence_only() -> None:
    """Outside pushapp/internals/, no module imports the libraries' private modules or
    subclasses their classes directly, and none swaps a ``__class__``."""
    private = re.compile(r"^\s*(from (engineio|socketio|geventwebsocket|redis\._parsers)[\w.]*"
                         r" import|import (engineio|geventwebsocket))|__class__ =", re.M)
    found = [f"{path.relative_to(ROOT)}: {match.group(0).strip()}"
             for path in sorted((ROOT / "pushapp").rglob("*.py"))
             if "internals" not in path.parts
             for match in private.finditer(path.read_text())]
    assert not found, "library internals used outside pushapp/internals/:\n" + "\n".join(found)


def test_a_changed_name_would_fail() -> None:
    """The check itself: a parameter list that does not match is caught."""
    bad = Reliance(socketio_engineio.SocketServer, "_handle_ack", ("eio_sid", "nope"), "test")
    with pytest.raises(AssertionError, match="_handle_ack"):
        test_each_relied_on_name_is_there(bad)
    gone = Reliance(socketio_engineio.SocketServer, "_no_such_method", (), "test")
    with pytest.raises(AssertionError, match="gone"):
        test_each_relied_on_name_is_there(gone)


def test_internals_md_lists_exactly_what_is_relied_on() -> None:
    """pushapp/internals/INTERNALS.md, the list a reader looks at, row for row the
    ``RELIED_ON`` the tests above check: each name with what pushapp does with it."""
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| (.+) \|$",
                      (ROOT / "pushapp" / "internals" / "INTERNALS.md").read_text(), re.M)
    listed = [(name, why.replace("\\|", "|")) for name, why in rows]
    assert listed == [(_label(reliance), reliance.why) for reliance in RELIED_ON]
