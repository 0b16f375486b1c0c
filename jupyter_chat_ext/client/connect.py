"""Opening one WebSocket to a chat server, and what a failed attempt means.

The credentials (token, delegation, the server's login cookie) go in the headers;
a plain-http server given an ``https://`` URL is recognised quickly rather than by
a handshake timeout; each failure becomes a :class:`ChatError` that says what to
do and never contains the token. Its frames go to an :class:`Inbox`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from http.cookies import SimpleCookie

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketError, websocket_connect

from .. import protocol as p
from .errors import ChatError

PLAIN_HTTP_PROBE_AFTER = 1.0  # seconds of TLS handshake before asking in plain http
MAX_FRAME = 64 * 1024 * 1024


def credential_headers(
    token: str | None, delegation: str | None, cookies: dict[str, str]
) -> dict[str, str]:
    """The headers that authenticate a request as the client: its WebSocket and its HTTP."""
    headers = {}
    if token:
        headers["Authorization"] = f"token {token}"
    if delegation:
        headers[p.DELEGATION_HEADER] = delegation
    if cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return headers


class Inbox:
    """The frames of one connection, as tornado reads them (its ``on_message_callback``).

    Once :meth:`serve` has been called, each frame is handled right in the callback,
    on the loop's thread: not through ``read_message()``, whose one-slot queue costs a
    loop turn per frame (a third of a live value's cost to the client). Tornado reads
    the next frame only after the callback returns, so a client slower than what it is
    sent still leaves the rest unread in its socket (for the server, a slow reader
    whose values it conflates), never in memory here. Frames that arrive before that
    (``hello``, the unread mentions) wait in order.
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._early: deque[str | bytes | None] = deque()
        self._arrived: asyncio.Future[None] = loop.create_future()
        self._handle: Callable[[str | bytes], None] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()

    def __call__(self, data: str | bytes | None) -> None:
        """Tornado's callback: a frame, or ``None`` once the connection is closed."""
        if data is None:
            if not self.closed.done():
                self.closed.set_result(None)
        elif self._handle is not None and not self.closed.done():
            self._handle(data)
            return
        self._early.append(data)
        if not self._arrived.done():
            self._arrived.set_result(None)

    async def first(self) -> str | bytes | None:
        """The first frame (``hello``), or ``None`` if the connection closed before it."""
        await self._arrived
        return self._early.popleft()

    def serve(self, handle: Callable[[str | bytes], None]) -> None:
        """Hand the frames waiting, then every later one, to ``handle`` (which must not raise)."""
        while self._early:
            data = self._early.popleft()
            if data is None:
                return
            handle(data)
        self._handle = handle


async def open_websocket(
    url: str,
    *,
    token: str | None,
    delegation: str | None,
    cookies: dict[str, str],
    timeout: float,
    inbox: Inbox | None = None,
) -> WebSocketClientConnection:
    """Connect to the chat endpoint of the server at base URL ``url``.

    ``cookies`` go with the request, and the cookies the server sets are added to
    it: jupyter_server names a token-authenticated user in a login cookie, and
    sending it back keeps the same identity across reconnects. With ``inbox``,
    frames go to it (read them with ``inbox.first()`` and ``inbox.serve()``), not to
    ``read_message()``.
    """
    headers = credential_headers(token, delegation, cookies)
    ws_url = url.replace("http", "ws", 1) + p.WS_PATH
    request = HTTPRequest(ws_url, headers=headers, connect_timeout=timeout)
    connecting = asyncio.ensure_future(
        websocket_connect(request, max_message_size=MAX_FRAME, on_message_callback=inbox)
    )
    if url.startswith("https://"):
        # A plain-http server never answers a TLS handshake: it waits for a request
        # line, and the handshake would only time out. Ask it in plain http instead.
        done, _ = await asyncio.wait([connecting], timeout=PLAIN_HTTP_PROBE_AFTER)
        if not done and await speaks_plain_http(url, timeout):
            connecting.cancel()
            plain = "http://" + url.removeprefix("https://")
            raise ChatError("no_server", f"{url} speaks plain http, not https: use {plain}")
    ws = await connecting
    for header in ws.headers.get_list("Set-Cookie") if ws.headers else []:
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        cookies.update({k: m.value for k, m in cookie.items()})
    return ws


async def speaks_plain_http(url: str, timeout: float) -> bool:
    """Whether the host and port of an ``https://`` URL answer an http request.

    No credential goes with it. A TLS server that answers plain http at all says
    400 or redirects to https, so neither counts.
    """
    plain = "http://" + url.removeprefix("https://")
    response = await AsyncHTTPClient().fetch(
        plain, raise_error=False, follow_redirects=False, request_timeout=timeout
    )
    location = response.headers.get("Location", "") if response.headers else ""
    return response.code not in (400, 599) and not location.startswith("https://")


def connect_error(url: str, exc: Exception) -> ChatError:
    """What a failed connection attempt to ``url`` means, and what to do; never the token."""
    if isinstance(exc, ChatError):
        return exc
    if isinstance(exc, HTTPClientError) and exc.code == 599:  # no HTTP response at all
        return ChatError(
            "no_server",
            f"could not connect to {url}: {exc.message}; is the server running "
            "and reachable at that address?",
        )
    if isinstance(exc, HTTPClientError) and exc.code in (301, 302, 303, 307, 308):
        return ChatError(
            "refused",
            f"{url} sent the chat connection to a login page (HTTP {exc.code}): the "
            "token is missing or wrong, or this is not the server's base URL (the part "
            "of a Jupyter page's address before /lab or /tree)",
        )
    if isinstance(exc, HTTPClientError) and exc.code == 404:
        return ChatError(
            "no_server",
            f"{url} has no chat endpoint (HTTP 404): give the server's base URL "
            "(the part of a Jupyter page's address before /lab or /tree), and check "
            "that the chat extension is enabled there (jupyter server extension list)",
        )
    if isinstance(exc, HTTPClientError):
        return ChatError(
            "refused",
            f"{url} refused the connection (HTTP {exc.code}); check the token "
            "(or that the chat extension is enabled on that server)",
        )
    if isinstance(exc, WebSocketError):  # a 200 page where the WebSocket should be
        return ChatError(
            "no_server",
            f"{url} answered with a web page, not the chat WebSocket: give the "
            "server's base URL (the part of a Jupyter page's address before /lab or "
            "/tree), and check that the chat extension is enabled there",
        )
    if isinstance(exc, ssl.SSLError) and exc.reason == "WRONG_VERSION_NUMBER":
        plain = "http://" + url.removeprefix("https://")
        return ChatError("no_server", f"{url} speaks plain http, not https: use {plain}")
    return ChatError("no_server", f"cannot reach {url}: {exc}; is it running?")
