"""`python -m api`: serve the API on MODELPRESS_HOST:MODELPRESS_PORT."""

import uvicorn

from core.settings import get_settings

if __name__ == "__main__":
    settings = get_settings()
    uvicorn.run("api.main:app", host=settings.host, port=settings.port, proxy_headers=True)
