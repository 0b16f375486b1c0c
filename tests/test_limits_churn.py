"""Per-user accounting under connection churn: nothing is left behind for good.

With token logins every connection without the login cookie is a new person, so a
loop of connect-and-close makes a new username each time: their rate limiters must
go with their last connection (once full again: reconnecting must not refill them).
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_chat_ext.config import ChatSettings
from jupyter_chat_ext.limits import UserLimits

from conftest import RawConnect


async def test_connection_churn_of_new_people_leaves_no_rate_limiters(
    connect: RawConnect, jp_serverapp: Any
) -> None:
    (app,) = jp_serverapp.extension_manager.extension_apps["jupyter_chat_ext"]
    limits = app.registry.limits
    names = set()
    for _ in range(30):
        client = await connect()
        names.add(client.hello["user"]["username"])
        client.close()
    assert len(names) == 30  # each a new person
    async with asyncio.timeout(10):
        while names & set(limits._connections):  # the server sees the sockets close
            await asyncio.sleep(0.01)
    assert not names & set(limits._buckets)


async def test_reconnecting_does_not_refill_a_users_rate_limiters() -> None:
    limits = UserLimits(ChatSettings(join_rate_limit=0.001, join_burst=2))
    spent = limits.buckets("mallory")
    connection: Any = object()
    limits.attach("mallory", connection)
    assert spent.joins.take() == 0 and spent.joins.take() == 0
    limits.detach("mallory", connection)
    limits.attach("mallory", connection)  # back at once: the same, spent, limiters
    assert limits.buckets("mallory") is spent and spent.joins.take() > 0
    limits.detach("mallory", connection)
    assert "mallory" in limits._buckets  # kept until full again (in ~2000 s here)
    full = limits.buckets("carol")
    limits.attach("carol", connection)
    limits.detach("carol", connection)
    assert "carol" not in limits._buckets and full.joins.full
