"""API-key dependencies: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

A missing key is 401 (with ``WWW-Authenticate: Bearer``); a key that is unknown,
or a scoring key on an admin route, is 403. Health and ``/metrics`` take no key.

Every dependency here is ``async``: each takes microseconds, and FastAPI runs a
synchronous dependency in the thread pool — a hop that costs far more than the
check itself.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from server.rest.state import Role, ServiceState

_bearer = HTTPBearer(auto_error=False, description="the scoring or admin API key")
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="the scoring or admin API key"
)


async def get_state(request: Request) -> ServiceState:
    """The :class:`ServiceState` that :func:`server.rest.app.create_app` attached to the app."""
    return request.app.state.service


#: route parameter type that injects the app's ServiceState
State = Annotated[ServiceState, Depends(get_state)]


async def _presented_key(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> str | None:
    if bearer is not None and bearer.credentials:
        return bearer.credentials
    return api_key or None


def _authorize(state: ServiceState, presented: str | None, needed: Role) -> Role:
    if presented is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    role = state.role_for_key(presented)
    if role is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid API key")
    if role < needed:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"this route needs the {needed.name.lower()} API key"
        )
    return role


async def require_scoring(
    request: Request, presented: Annotated[str | None, Depends(_presented_key)]
) -> Role:
    """Dependency of scoring and model-metadata routes (scoring or admin key)."""
    return _authorize(request.app.state.service, presented, Role.SCORING)


async def require_admin(
    request: Request, presented: Annotated[str | None, Depends(_presented_key)]
) -> Role:
    """Dependency of job and device routes (admin key only)."""
    return _authorize(request.app.state.service, presented, Role.ADMIN)
