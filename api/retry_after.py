"""`Retry-After` on answers that ask the client to come back: 202 (accepted, poll for the
outcome), 429 and 503. Routes that know better set their own value; this fills in the rest."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Seconds a client waits before polling an accepted job, or retrying a refused request.
DEFAULT_RETRY_AFTER = {202: "2", 429: "1", 503: "1"}


class RetryAfter:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start":
                seconds = DEFAULT_RETRY_AFTER.get(message["status"])
                headers = list(message.get("headers", []))
                if seconds and not any(name.lower() == b"retry-after" for name, _ in headers):
                    headers.append((b"retry-after", seconds.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)
