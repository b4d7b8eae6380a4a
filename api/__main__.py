"""`python -m api`: serve the API on MODELPRESS_HOST:MODELPRESS_PORT."""

import uvicorn

from core.logs import configure_logging
from core.settings import get_settings

if __name__ == "__main__":
    settings = get_settings()
    configure_logging(settings)
    uvicorn.run(
        "api.main:app",
        host=settings.host,
        port=settings.port,
        proxy_headers=True,
        # Logging is configured above (MODELPRESS_LOG_FORMAT); api.request_context writes one
        # access line per request with its id, route and duration instead of uvicorn's.
        log_config=None,
        access_log=False,
    )
