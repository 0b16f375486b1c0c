"""Attachments over HTTP: upload one, fetch one, and what a refusal means.

Both go to the server the client's WebSocket uses, with the same credentials
(:func:`~.connect.credential_headers`), on the client's loop: the caller's thread
waits, the loop never does. A refusal becomes a :class:`ChatError` with the
server's code (docs/protocol.md, "Attachments") and a message that says what to do.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import msgspec
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from .. import protocol as p
from .errors import ChatError
from .share import Prepared, invalid

NAME_HEADER = "X-Chat-Name"

# What to do about each refusal, after the server's own words.
_ADVICE = {
    "attachment_too_large": "share less, or ask the server's admin to raise max_attachment_size",
    "forbidden": "only members of a private room may share or take its attachments",
    "not_found": "check the message's seq; a deleted message's attachment is gone",
    "rate_limited": "wait a moment, then share again",
    "unavailable": "the server's store cannot be reached; try again in a moment",
    "invalid_field": "the server refused the attachment's bytes or description",
}
_CODE_OF_STATUS = {
    400: "invalid_field",
    403: "forbidden",
    404: "not_found",
    411: "invalid_field",
    413: "attachment_too_large",
    429: "rate_limited",
    503: "unavailable",
}


def refusal(response: HTTPResponse, what: str, body: bytes | None = None) -> ChatError:
    """The :class:`ChatError` for a refused attachment request (``what``: "upload", ...).

    ``body`` is the response's body when it was streamed rather than kept in ``response``.
    """
    status = response.code
    if status in (301, 302, 303, 307, 308, 401):
        return ChatError(
            "refused",
            f"the server refused the {what} (HTTP {status}): the client's credentials are "
            "not accepted any more; create a new ChatClient (or show the Chat widget "
            "again to renew your delegation)",
        )
    try:
        said = msgspec.json.decode((response.body if body is None else body) or b"{}")
    except (msgspec.DecodeError, UnicodeDecodeError):
        said = {}
    said = said if isinstance(said, dict) else {}
    code = said.get("code") if isinstance(said.get("code"), str) else None
    code = code or _CODE_OF_STATUS.get(status, "internal")
    message = said.get("message") if isinstance(said.get("message"), str) else ""
    advice = _ADVICE.get(code, "try again; if it keeps failing, tell the server's admin")
    retry = response.headers.get("Retry-After") if response.headers else None
    if code == "rate_limited" and retry:
        advice = f"wait {retry} s, then share again"
    detail = f": {message[:300]}" if message else ""
    return ChatError(
        code, f"the {what} was refused (HTTP {status}){detail}. {advice.capitalize()}."
    )


def _failure(url: str, exc: Exception, what: str) -> ChatError:
    if isinstance(exc, HTTPClientError) and exc.response is not None:
        return refusal(exc.response, what)
    reason = exc.message if isinstance(exc, HTTPClientError) else str(exc)
    return ChatError(
        "no_server",
        f"the {what} could not reach {url.split('?', 1)[0]}: {reason}; try again when "
        "the server is reachable",
    )


async def upload(
    base_url: str, room: str, prepared: Prepared, headers: dict[str, str], timeout: float
) -> dict[str, Any]:
    """``POST`` the bytes for ``room``; returns the server's answer (``upload``, ``sha256``...)."""
    url = f"{base_url}{p.ATTACHMENTS_PATH}?room={quote(room, safe='')}"
    request = HTTPRequest(
        url,
        method="POST",
        body=prepared.data,
        headers={
            **headers,
            "Content-Type": prepared.mime,
            NAME_HEADER: quote(prepared.name, safe=""),
        },
        follow_redirects=False,
        request_timeout=timeout,
    )
    try:
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
    except Exception as exc:
        raise _failure(url, exc, "upload") from None
    if response.code != 201:
        raise refusal(response, "upload")
    try:
        answer = msgspec.json.decode(response.body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("upload"), str):
        raise ChatError("internal", "the server's answer to the upload has no upload id")
    return answer


async def download(url: str, headers: dict[str, str], max_size: int, timeout: float) -> bytes:
    """``GET`` an attachment's bytes; more than ``max_size`` of them is refused.

    Past ``max_size`` nothing more is kept (the transfer itself is bounded by
    ``timeout`` and the HTTP client's own body limit).
    """
    received = bytearray()
    over = False

    def collect(chunk: bytes) -> None:
        nonlocal over
        if over or len(received) + len(chunk) > max_size:
            over = True
            return
        received.extend(chunk)

    request = HTTPRequest(
        url,
        headers=headers,
        follow_redirects=False,
        request_timeout=timeout,
        streaming_callback=collect,
    )
    try:
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
    except Exception as exc:
        raise _failure(url, exc, "download") from None
    if response.code != 200:
        raise refusal(response, "download", bytes(received))  # its JSON came through collect()
    if over:
        raise invalid(f"more than the {max_size} bytes it may have arrived")
    return bytes(received)
