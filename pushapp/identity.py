"""Who a socket is. The one place that decides it.

``AUTH_MODE=jwt`` (the default): a login carries a JWT that a business server issued, in
the ``login`` payload (``token``) or in the Socket.IO connect auth (``{"token": …}``). Its
``sub`` is the user; ``exp`` is required and closes the socket when reached, unless the
client sends ``refresh`` with a newer token. ``AUTH_MODE=insecure`` trusts ``myAuraId``,
as the seed did, for old clients; it has to be chosen explicitly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from . import payloads
from .config import Config

MAX_TOKEN_LENGTH = 8192


class AuthError(payloads.PayloadError):
    """A refused login or refresh: the socket is told why, then closed."""


class Identity(NamedTuple):
    user: str
    device: str
    expires: float | None = None


class Claims(NamedTuple):
    user: str
    expires: float


_REASONS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.exceptions.InvalidSubjectError, "sub must be a string"),
]


class Authenticator:
    """Checks tokens with the key the configuration names, and answers who a login is."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.insecure = config.auth_mode == "insecure"
        self._key: Any = None
        self._algorithms: list[str] = []
        self._jwks: jwt.PyJWKSet | None = None
        if self.insecure:
            return
        if config.jwt_secret:
            self._key, self._algorithms = config.jwt_secret, ["HS256"]
        elif config.jwt_public_key_file:
            self._key = serialization.load_pem_public_key(
                Path(config.jwt_public_key_file).read_bytes())
            self._algorithms = ["ES256" if isinstance(self._key, EllipticCurvePublicKey)
                                else "RS256"]
        else:
            self._jwks = jwt.PyJWKSet.from_dict(json.loads(Path(config.jwt_jwks_file).read_text()))
        self._allowed = set(config.jwt_algorithms)

    def verify(self, token: Any) -> Claims:
        """The user and expiry a token proves, or ``AuthError`` with a short reason."""
        if not token:
            raise AuthError("token missing")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("invalid token")
        try:
            key, algorithms = self._key_for(token)
            claims = jwt.decode(
                token, key, algorithms=algorithms,
                audience=self.config.jwt_audience or None,
                issuer=self.config.jwt_issuer or None,
                leeway=self.config.jwt_leeway,
                options={"require": ["exp", "sub"], "verify_aud": bool(self.config.jwt_audience)},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks {exc.claim}") from None
        except jwt.PyJWTError as exc:
            raise AuthError(_reason(exc)) from None
        except (TypeError, ValueError):
            raise AuthError("invalid token") from None
        user = payloads.user_id(claims["sub"], "sub", self.config.max_user_id_length)
        return Claims(user, float(claims["exp"]))

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        """The key to check ``token`` with, and the algorithms that key may sign with: one
        per key type, so a token can never choose how it is checked (``alg=none``, or an
        RSA public key used as an HMAC secret). ``JWT_ALGORITHMS`` narrows them further."""
        if self._jwks is None:
            key, algorithms = self._key, self._algorithms
        else:
            try:
                jwk = self._jwks[jwt.get_unverified_header(token).get("kid")]
            except KeyError:
                raise jwt.InvalidSignatureError from None
            key, algorithms = jwk.key, [jwk.algorithm_name]
        if self._allowed:
            algorithms = [name for name in algorithms if name in self._allowed]
        return key, algorithms

    def identify(self, userinfo: dict, connected_as: Claims | None) -> Identity:
        """The user and device a ``login`` speaks for: from its token, else from the token
        the socket connected with. ``myAuraId``, if sent, must be that user."""
        limit = self.config.max_user_id_length
        device = payloads.optional_text(userinfo.get("deviceId"), "deviceId", limit)
        if self.insecure:
            return Identity(payloads.user_id(userinfo.get("myAuraId"), "myAuraId", limit), device)
        token = userinfo.get("token")
        claims = self.verify(token) if token or connected_as is None else connected_as
        if "myAuraId" in userinfo and str(userinfo["myAuraId"]) != claims.user:
            raise AuthError("user mismatch")
        return Identity(claims.user, device, claims.expires)


def _reason(exc: Exception) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid token"
