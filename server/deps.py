"""FastAPI dependencies, as named `Annotated` aliases so route signatures read as prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from server.services import Services

# documents fal's `Authorization: Key <key>` scheme in the OpenAPI schema
authorization_header = APIKeyHeader(
    name="Authorization", auto_error=False, description="`Key <your Kiln API key>`, as fal's clients send it"
)


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_owner(request: Request, authorization: Annotated[str | None, Security(authorization_header)]) -> str:
    return get_services(request).keys.owner(authorization)


ServicesDep = Annotated[Services, Depends(get_services)]
OwnerDep = Annotated[str, Depends(get_owner)]
