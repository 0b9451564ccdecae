"""API-key dependencies: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

A missing key is 401 (with ``WWW-Authenticate: Bearer``); a key that is unknown,
or a scoring key on an admin route, is 403. Health and ``/metrics`` take no key.

Every dependency here is ``async``: each takes microseconds, and FastAPI runs a
synchronous dependency in the thread pool — a hop that costs far more than the
check itself.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.routing import APIRoute

from server.rest.state import Role, ServiceState

KEY_DESCRIPTION = "the scoring or admin API key"
#: the two ways to present a key, as OpenAPI security schemes (create_app puts them in /docs)
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "HTTPBearer": {"type": "http", "scheme": "bearer", "description": KEY_DESCRIPTION},
    "APIKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": KEY_DESCRIPTION,
    },
}


async def get_state(request: Request) -> ServiceState:
    """The :class:`ServiceState` that :func:`server.rest.app.create_app` attached to the app."""
    return request.app.state.service


#: route parameter type that injects the app's ServiceState
State = Annotated[ServiceState, Depends(get_state)]


def presented_key(request: Request) -> str | None:
    """The key of ``Authorization: Bearer <key>``, else of ``X-API-Key``; None if neither.

    Read straight from the headers: FastAPI's security classes as sub-dependencies
    cost more to resolve than the whole check.
    """
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials
    return request.headers.get("x-api-key") or None


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


async def require_scoring(request: Request) -> Role:
    """Dependency of scoring and model-metadata routes (scoring or admin key)."""
    return _authorize(request.app.state.service, presented_key(request), Role.SCORING)


async def require_admin(request: Request) -> Role:
    """Dependency of job and device routes (admin key only)."""
    return _authorize(request.app.state.service, presented_key(request), Role.ADMIN)


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """The API routes of ``routes``, including those of included routers.

    Newer FastAPI releases keep an included router as one lazy entry (with its
    ``original_router``) instead of copying its routes into the app's list.
    """
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += _api_routes(route.original_router.routes)
    return found


def document_security(app: FastAPI) -> None:
    """List :data:`SECURITY_SCHEMES` in the app's OpenAPI, required by every keyed route."""
    generate = app.openapi
    keyed = {require_scoring, require_admin}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for route in _api_routes(app.routes):
            if not any(dep.call in keyed for dep in route.dependant.dependencies):
                continue
            for method in route.methods:
                operation = schema["paths"].get(route.path_format, {}).get(method.lower())
                if operation is not None:
                    operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
