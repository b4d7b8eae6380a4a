"""What the OpenAPI document adds for clients: the Bearer scheme (so `/docs` can authorize and
try requests) and operation ids a generated client turns into readable method names."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.middleware import is_protected

BEARER = "bearerAuth"


def operation_id(route: APIRoute) -> str:
    """The route function's name (`create_job`, `list_models`): stable while the code keeps
    its names, and what a generated client calls the method."""
    return route.name


def install_security_scheme(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        if BEARER not in schemes:
            schemes[BEARER] = {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key: `Authorization: Bearer <key>`.",
            }
            schema["security"] = [{BEARER: []}]
            for path, item in schema.get("paths", {}).items():
                if not is_protected(path):  # health and docs take no key
                    for operation in item.values():
                        operation["security"] = []
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
