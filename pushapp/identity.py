"""Who a login is. The one place that decides it, so that authentication has one seam."""
from __future__ import annotations

from typing import NamedTuple

from . import payloads
from .config import Config


class Identity(NamedTuple):
    user: str
    device: str


def identify(userinfo: dict, config: Config) -> Identity:
    """The user and device a ``login`` payload speaks for.

    ``AUTH_MODE=insecure`` trusts ``myAuraId`` as the seed did; every later event of the
    socket then acts as this user, whatever ids it carries.
    """
    limit = config.max_user_id_length
    return Identity(
        user=payloads.user_id(userinfo.get("myAuraId"), "myAuraId", limit),
        device=payloads.optional_text(userinfo.get("deviceId"), "deviceId", limit),
    )
