"""One ``Kind`` (pushapp/kinds.py) for every name a message kind goes by: the stream keys
in Redis must never change, and the API and metrics show the public names."""
from __future__ import annotations

import typing

from pushapp import kinds
from pushapp.http import schemas
from pushapp.kinds import Kind
from pushapp.store.store import user_key


def test_the_key_parts_are_the_stored_keys_of_every_release() -> None:
    """Renaming a key part would orphan every stored message."""
    assert [kind.key for kind in Kind] == ["chat", "notif"]
    assert user_key("p:", "u", Kind.CHAT.key) == "p:{u}:chat"
    assert user_key("p:", "u", Kind.NOTIFICATION.key) == "p:{u}:notif"


def test_the_public_names_are_the_apis() -> None:
    shown = typing.get_args(schemas.PendingMessage.model_fields["kind"].annotation)
    asked = schemas.KIND.core_schema["expected"]  # the ?kind= of DELETE .../pending
    assert set(kinds.LABELS.values()) == set(shown) == set(asked) == {"chat", "notification"}


def test_the_lookups_agree_with_kind() -> None:
    assert (kinds.CHAT, kinds.NOTIF) == (1, 2)
    assert kinds.CHAT & kinds.NOTIF == 0  # bits of one mask
    for kind in Kind:
        assert kinds.KEY_OF_FLAG[kind.flag] == kind.key
        assert kinds.KEY_OF_LABEL[kind.label] == kind.key
        assert kinds.LABELS[kind.key] == kind.label
