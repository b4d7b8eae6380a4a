"""GET /metrics: Prometheus's scrape of what every process of this machine observed and of
what the database knows, for a key with the `instance` scope (docs/observability.md)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import InstanceKey, SettingsDep
from api.middleware import METRICS_PATH
from core.db_metrics import DatabaseCollector
from core.metrics import CONTENT_TYPE, process_registry, render

router = APIRouter(tags=["health"])


@router.get(
    METRICS_PATH,
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {CONTENT_TYPE: {}}}},
)
def metrics(_: InstanceKey, settings: SettingsDep) -> Response:
    """Metrics in Prometheus's text format; scrape with `authorization: {credentials: <key>}`
    of a key with the `instance` scope."""
    registry = process_registry(settings)
    registry.register(DatabaseCollector())
    return Response(render(registry), media_type=CONTENT_TYPE)
