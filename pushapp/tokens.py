"""Mint a login token for testing: ``pushapp token USER`` or ``python -m pushapp.tokens USER``.

Business servers issue tokens in production; this does the same with the gateway's own
settings (``JWT_SECRET``, ``JWT_AUDIENCE``, ``JWT_ISSUER``), or with a private key for
RS256/ES256 (``--private-key``).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jwt


def mint(user: str, key: str, algorithm: str = "HS256", ttl: float = 3600,
         audience: str = "", issuer: str = "", kid: str = "") -> str:
    """A token whose ``sub`` is ``user``, valid for ``ttl`` seconds."""
    now = int(time.time())
    claims: dict = {"sub": user, "iat": now, "exp": now + int(ttl)}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def main(argv: list[str] | None = None, prog: str = "python -m pushapp.tokens") -> None:
    """Print a token for the user named in ``argv``; ``prog`` is how the usage names it."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("user")
    parser.add_argument("--ttl", type=float, default=3600, help="seconds (default 3600)")
    parser.add_argument("--private-key", help="PEM file; default: sign with $JWT_SECRET")
    parser.add_argument("--algorithm", default="", help="default HS256, or RS256 with a key")
    parser.add_argument("--kid", default="", help="key id header, for JWKS")
    args = parser.parse_args(argv)
    if args.private_key:
        key, algorithm = Path(args.private_key).read_text(), args.algorithm or "RS256"
    elif os.environ.get("JWT_SECRET"):
        key, algorithm = os.environ["JWT_SECRET"], args.algorithm or "HS256"
    else:
        parser.error("set JWT_SECRET or pass --private-key")
    print(mint(args.user, key, algorithm, args.ttl, os.environ.get("JWT_AUDIENCE", ""),
               os.environ.get("JWT_ISSUER", ""), args.kid))


if __name__ == "__main__":
    main()
