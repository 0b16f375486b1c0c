"""The python-socketio (aiohttp) room server benchmarks/fanout.py compares against.

Clients "join" a room and every "message" goes to everyone in it, the sender included.
Usage: python benchmarks/psio_server.py <port>
"""

from __future__ import annotations

import sys
from typing import Any

import socketio  # type: ignore[import-not-found]
from aiohttp import web  # type: ignore[import-not-found]

sio = socketio.AsyncServer(async_mode="aiohttp", transports=["websocket"])
app = web.Application()
sio.attach(app)
rooms: dict[str, str] = {}


@sio.on("join")  # type: ignore[misc]
async def join(sid: str, room: str) -> None:
    await sio.enter_room(sid, room)
    rooms[sid] = room
    await sio.emit("joined", room, to=sid)


@sio.on("message")  # type: ignore[misc]
async def message(sid: str, body: Any) -> None:
    await sio.emit("message", body, room=rooms[sid])


if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *_: print("listening"))
