"""Who is calling: a signed bearer token (JWT) naming the user (email) and district, and
optionally their roles and schools. Development signs with a local secret (HS256);
production verifies against the identity provider's public key (RS256/ES256). Missing,
expired or tampered: 401.

What the caller may do is the union of the token's roles (each at the token's schools)
and the access levels the caseload service granted them (services/kit/access.py), read
per request from this service's own projection: an identity-only token (Google,
Microsoft, Clever SSO) works once an admin or the district's roster default gave access."""

from __future__ import annotations

import time
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from contracts.envelope import not_an_id, unstorable
from services.kit import access
from services.kit.identity import ROLES, Identity, from_token
from services.kit.settings import AuthSettings

__all__ = ["ROLES", "Caller", "Identity", "TokenCaller", "TokenVerifier", "current_identity", "mint", "not_found",
           "token_identity"]


class TokenVerifier:
    def __init__(self, auth: AuthSettings) -> None:
        if auth.public_key:
            self._key, self._algorithms = auth.public_key, ["RS256", "ES256"]
        elif auth.secret:
            self._key, self._algorithms = auth.secret, ["HS256"]
        else:
            raise RuntimeError("no token key: set CASEFLOW_JWT_PUBLIC_KEY (production) or CASEFLOW_JWT_SECRET (development)")
        self._issuer = auth.issuer
        self._audience = auth.audience
        self._verified: dict[str, tuple[Identity, int]] = {}

    # A client sends the same token with every call for hours: its signature is checked and
    # its claims read once per process (a quarter of a cached caseload page's CPU). The
    # token's exact text is the key, so a token altered in any byte is verified afresh (and
    # refused); only verified tokens are kept. What time changes is checked on every call:
    # a kept token answers only until its `exp`, then is verified again (and refused as
    # expired); `nbf` and `iat` were already in the past when it was kept and stay there.
    VERIFIED_KEPT = 10_000

    def verify(self, token: str) -> Identity:
        kept = self._verified.get(token)
        if kept is not None:
            identity, expires = kept
            if time.time() < expires:  # PyJWT's rule: expired once exp <= now
                return identity
            del self._verified[token]
        identity, expires = self._verify(token)
        if len(self._verified) >= self.VERIFIED_KEPT:
            del self._verified[next(iter(self._verified))]  # the oldest kept
        self._verified[token] = (identity, expires)
        return identity

    def _verify(self, token: str) -> tuple[Identity, int]:
        claims = jwt.decode(
            token,
            self._key,
            algorithms=self._algorithms,
            audience=self._audience,
            issuer=self._issuer,
            options={"require": ["exp", "iss", "aud", "sub", "district_id"]},
        )
        roles = frozenset(claims.get("roles", []))
        unknown = roles - ROLES
        if unknown:
            raise jwt.InvalidTokenError(f"unknown roles: {sorted(unknown)}")
        email, district_id = str(claims.get("email") or claims["sub"]), str(claims["district_id"])
        schools = [str(s) for s in claims.get("schools", [])]
        _check_claims(email, district_id, schools)
        return Identity(email=email, district_id=district_id, holdings=from_token(roles, schools)), int(claims["exp"])


def _check_claims(email: str, district_id: str, schools: list[str]) -> None:
    """Claims are stored and sent in events like any input: text a database holds, of the
    lengths the events allow (a district id of 1 to 64 characters, an email up to 320, a
    school id of 1 to 128), the district and school ids holding no control character (as
    every id: contracts.envelope.not_an_id)."""
    claims = [("district_id", district_id, 64, True), ("email", email, 320, False)]
    claims += [("schools", school, 128, True) for school in schools]
    for name, value, longest, an_id in claims:
        if not value or len(value) > longest:
            raise jwt.InvalidTokenError(f"the {name} claim must have 1 to {longest} characters")
        if problem := unstorable(value) or (an_id and not_an_id(value)):
            raise jwt.InvalidTokenError(f"the {name} claim {problem}")


def mint(secret: str, *, email: str, district_id: str, schools: list[str] | None = None,
         roles: list[str] | None = None, ttl_seconds: int = 8 * 3600, issuer: str = "caseflow",
         audience: str = "caseflow") -> str:
    """A development token signed with the local secret (`caseflow token`). Without roles
    and schools it names only the person and district, as an SSO identity provider does."""
    now = int(time.time())
    claims = {"sub": email, "email": email, "district_id": district_id,
              "iat": now, "exp": now + ttl_seconds, "iss": issuer, "aud": audience}
    if schools:
        claims["schools"] = schools
    if roles:
        claims["roles"] = roles
    return jwt.encode(claims, secret, algorithm="HS256")


# Declared in each route's OpenAPI entry (Swagger UI's Authorize button); the header is read
# and checked below, with Caseflow's own messages.
_BEARER = HTTPBearer(auto_error=False, bearerFormat="JWT",
                     description="A signed token: `caseflow token` mints a development one.")


def _token_identity(request: Request) -> Identity:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        return request.app.state.verifier.verify(token)
    except jwt.InvalidSignatureError:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid token: its signature does not verify",
                            headers={"WWW-Authenticate": "Bearer"}) from None
    except jwt.DecodeError:  # the library's text quotes decoding internals: say what it is
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid token: not a well-formed signed token (JWT); "
                            "mint one with `caseflow token` or sign in again",
                            headers={"WWW-Authenticate": "Bearer"}) from None
    except jwt.ExpiredSignatureError:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "token expired", headers={"WWW-Authenticate": "Bearer"}) from None
    except jwt.InvalidTokenError as e:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"invalid token: {e}", headers={"WWW-Authenticate": "Bearer"}) from None


async def current_identity(request: Request,
                           _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None
                           ) -> Identity:
    identity = _token_identity(request)
    return access.with_grants(identity, await access.held_by(request.app.state.pool, identity.district_id,
                                                             identity.email))


async def token_identity(request: Request,
                         _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None
                         ) -> Identity:
    """The caller as their signed token names them (401 without a valid one), before the
    grants this service keeps for them: for a route that reads those in its own query, in
    the same round trip as what it serves (access.held_array, access.with_grants), and
    authorises only after that."""
    return _token_identity(request)


Caller = Annotated[Identity, Depends(current_identity)]
TokenCaller = Annotated[Identity, Depends(token_identity)]  # grants not read yet: see token_identity


def not_found(what: str = "not found") -> HTTPException:
    """Outside the caller's scope and absent look the same: never reveal existence."""
    return HTTPException(status.HTTP_404_NOT_FOUND, what)
