"""Who a socket is. The one place that decides it.

``AUTH_MODE=jwt`` (the default): a login carries a JWT that a business server issued, in
the ``login`` payload (``token``) or in the Socket.IO connect auth (``{"token": …}``). Its
``sub`` is the user; ``exp`` is required and closes the socket when reached, unless the
client sends ``refresh`` with a newer token. ``AUTH_MODE=insecure`` trusts ``myAuraId``,
as the seed did, for old clients; it has to be chosen explicitly.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from .. import payloads
from ..config import Config, ConfigError

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8192
# Seconds a JWKS fetch may take: the logins that need its keys wait for it.
JWKS_FETCH_TIMEOUT = 5.0
# Seconds the keys of JWT_JWKS_URL serve before a login fetches them again, so that a key
# the issuer withdrew stops working without a restart (PyJWKClient's own lifespan).
JWKS_MAX_AGE = 300.0
# Key types a JWKS may give: public keys. A symmetric key in a published JWKS would let
# anyone who reads it sign tokens.
ASYMMETRIC_KEY_TYPES = ("RSA", "EC", "OKP")


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


def _public_keys(keys: Iterable[jwt.PyJWK]) -> dict[str, jwt.PyJWK]:
    """The public keys among ``keys``, by ``kid``; each checks tokens with the algorithm
    of its own type, never one a token names."""
    return {jwk.key_id: jwk for jwk in keys
            if jwk.key_id and jwk.key_type in ASYMMETRIC_KEY_TYPES}


class RemoteKeys:
    """The keys an identity provider publishes at ``JWT_JWKS_URL`` (Auth0, Keycloak,
    Cognito), by ``kid``, fetched with PyJWT's ``PyJWKClient``.

    Fetched at start, and again when a token names a ``kid`` they lack (the issuer rotated
    its keys) or when they are older than ``JWKS_MAX_AGE``. A token may name any kid, so
    two fetches are ``JWT_JWKS_COOLDOWN`` apart at least, failed ones included: a flood of
    made-up kids, or an endpoint that is down, costs one request per cooldown, not one per
    token, and only logins that need a fetch wait for one. A failed fetch keeps the keys
    there were.
    """

    def __init__(self, url: str, cooldown: float) -> None:
        self.url = url
        self.cooldown = cooldown
        # Its own caches stay off: the cooldown below also spaces failed fetches, which
        # PyJWKClient would retry at every token.
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=JWKS_FETCH_TIMEOUT)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = -math.inf
        self._tried = -math.inf
        self._lock = threading.Lock()
        self.error = ""
        self._fetch()

    def __getitem__(self, kid: str) -> jwt.PyJWK:
        """The key ``kid`` names; ``KeyError`` if the issuer publishes none such, and
        ``AuthError`` if its keys could not be fetched."""
        if self._due(kid):
            with self._lock:
                if self._due(kid):  # not if another greenlet fetched while this one waited
                    self._fetch()
        if kid in self._keys:
            return self._keys[kid]
        if self.error:
            raise AuthError("signing keys unavailable, try again later")
        raise KeyError(kid)

    def _due(self, kid: str) -> bool:
        now = time.monotonic()
        stale = kid not in self._keys or now - self._fetched > JWKS_MAX_AGE
        return stale and now - self._tried >= self.cooldown

    def _fetch(self) -> None:
        self._tried = time.monotonic()
        try:
            keys = _public_keys(self._client.get_signing_keys())
        except jwt.PyJWTError as exc:
            self.error = str(exc)
            log.warning("JWT_JWKS_URL %s: keys not fetched, %d kept, next try in %gs at the "
                        "earliest: %s", self.url, len(self._keys), self.cooldown, exc)
            return
        self._keys, self._fetched, self.error = keys, self._tried, ""
        log.info("JWT_JWKS_URL %s: keys fetched, kids %s", self.url, ", ".join(keys) or "none")


class Authenticator:
    """Checks tokens with the key the configuration names, and answers who a login is."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.insecure = config.auth_mode == "insecure"
        self._key: Any = None
        self._algorithms: list[str] = []
        self._jwks: dict[str, jwt.PyJWK] | RemoteKeys | None = None
        if self.insecure:
            return
        if config.jwt_secret:
            self._key, self._algorithms = config.jwt_secret, ["HS256"]
        elif config.jwt_public_key_file:
            self._key = _read("JWT_PUBLIC_KEY_FILE", config.jwt_public_key_file,
                              serialization.load_pem_public_key)
            self._algorithms = ["ES256" if isinstance(self._key, EllipticCurvePublicKey)
                                else "RS256"]
        elif config.jwt_jwks_file:
            self._jwks = _read("JWT_JWKS_FILE", config.jwt_jwks_file, lambda data: _public_keys(
                jwt.PyJWKSet.from_dict(json.loads(data))))
        else:
            self._jwks = RemoteKeys(config.jwt_jwks_url, config.jwt_jwks_cooldown)
        self._allowed = set(config.jwt_algorithms)

    @property
    def remote_error(self) -> str:
        """Why the keys of ``JWT_JWKS_URL`` were last not fetched; empty if they were."""
        return self._jwks.error if isinstance(self._jwks, RemoteKeys) else ""

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
        except AuthError:
            raise
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


def _read(variable: str, path: str, load: Callable[[bytes], Any]) -> Any:
    """The key in the file a setting names, or ``ConfigError`` naming the setting."""
    try:
        return load(Path(path).read_bytes())
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise ConfigError(f"{variable}={path!r}: no usable key: {exc}") from None


def _reason(exc: Exception) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid token"
