"""The dashboard: server-rendered pages (Jinja2) under `/`, enhanced with htmx, for people
who are not at a terminal. It signs in with an API key and then sees exactly what that key
may see through the same lookups the `/v1` routes use (`api.owned`, `api.deps`)."""
