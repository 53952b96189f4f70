"""Short-lived JWTs exchanged for API keys, and the role check every endpoint makes.

Identity (tenant, robot, role) always comes from the verified token, never from a request
body. A token names its key (`sub`); a revoked key's tokens stop working at once, not when
they expire.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from robolake.gateway.keys import KeyRecord, KeyStore, Principal

ISSUER = "robolake-gateway"
ALGORITHM = "HS256"
_REQUIRED = ["exp", "iat", "iss", "sub", "tenant", "role", "jti"]


def issue_token(record: KeyRecord, secret: bytes, ttl_s: float) -> tuple[str, int]:
    now = int(time.time())
    expires = int(now + ttl_s)
    claims = {"iss": ISSUER, "sub": record.key_id, "iat": now, "exp": expires,
              "jti": uuid.uuid4().hex, "tenant": record.tenant, "role": record.role,
              "robot_id": record.robot_id, "robot_type": record.robot_type,
              "region": record.region}
    return jwt.encode(claims, secret, algorithm=ALGORITHM), expires


def unauthorized(reason: str) -> HTTPException:
    return HTTPException(401, detail=reason, headers={"WWW-Authenticate": "Bearer"})


def verify_token(token: str, secret: bytes, keys: KeyStore) -> Principal:
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER,
                            options={"require": _REQUIRED})
    except jwt.ExpiredSignatureError as exc:
        raise unauthorized("token expired: exchange the API key for a new one at "
                           "POST /api/v1/auth/token") from exc
    except jwt.InvalidSignatureError as exc:
        raise unauthorized("token signature is invalid (tampered or not issued here)") from exc
    except jwt.InvalidTokenError as exc:
        raise unauthorized(f"invalid token: {exc}") from exc
    record = keys.get(str(claims["sub"]))
    if record is None:
        raise unauthorized("token names an unknown key")
    if record.revoked:
        raise unauthorized("the API key behind this token was revoked")
    # the key row is the authority: a token can never carry more than its key has
    return record.principal()


_bearer = HTTPBearer(auto_error=False, description="a token from POST /api/v1/auth/token")


async def current_principal(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized("missing bearer token: send 'Authorization: Bearer <token>' "
                           "(POST /api/v1/auth/token exchanges an API key for one)")
    state = request.app.state
    principal = verify_token(credentials.credentials, state.settings.secret, state.keys)
    request.state.principal = principal  # who made the call, for the audit log
    return principal


def require_role(*roles: str):
    """A dependency admitting the given roles (admin is always admitted)."""
    allowed = set(roles) | {"admin"}

    async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if principal.role not in allowed:
            raise HTTPException(403, detail=f"role {principal.role!r} may not do this; "
                                            f"allowed: {', '.join(sorted(allowed))}")
        return principal

    return check


Authenticated = Annotated[Principal, Depends(current_principal)]


def Role(*roles: str):  # noqa: N802 - reads as a type in signatures
    """`principal: Role("robot")`: the verified principal, admitted only with these roles."""
    return Annotated[Principal, Depends(require_role(*roles))]
