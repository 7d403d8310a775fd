"""virtbus-api's VM lists come in pages, so a list of any length answers within one message.

Through a real orchestrator on a real nats-server: the pages, their order and tokens, the client
that puts them back together, and what a hostile query gets (each refused with the field named).
"""

from __future__ import annotations

import asyncio

import pytest
from clusterkit import Cluster, seed_apply

from bus.client import query, query_page
from events import commands as c
from events.errors import VirtbusError
from events.names import EVENTS_STREAM
from events.protocol import Query, continue_token

NAMES = ["v0", "v1", "v2", "v3", "v4"]


async def _caught_up(cluster: Cluster) -> None:
    """Until the read model (it trails the log) holds every event appended so far."""
    end = (await cluster.nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq
    for _ in range(300):
        if (await query_page(cluster.nc, Query(what="nodes"))).position >= end:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"the read model never reached the log's end ({end})")


async def _pages(cluster: Cluster, q: Query) -> list[list[str]]:
    pages, token = [], None
    while token != "":
        page = await query_page(cluster.nc, Query(limit=q.limit, continue_=token or "",
                                                  include_deleted=q.include_deleted))  # fmt: skip
        pages.append([s.name for s in page.vms])
        token = page.continue_
    return pages


async def test_a_list_comes_in_pages_that_the_client_joins(cluster: Cluster) -> None:
    for name in [*NAMES, "gone"]:
        await cluster.send(seed_apply(name))
    await cluster.send(c.DeleteVM(name="gone"))
    await _caught_up(cluster)
    assert await _pages(cluster, Query(limit=2)) == [["v0", "v1"], ["v2", "v3"], ["v4"]]
    assert await _pages(cluster, Query(limit=3, include_deleted=True)) == [
        ["gone", "v0", "v1"], ["v2", "v3", "v4"]]  # fmt: skip
    # Exactly one page's worth left: the last page says there is no next one.
    assert await _pages(cluster, Query(limit=5)) == [NAMES]
    whole = await query(cluster.nc, Query(limit=2))
    assert ([s.name for s in whole.vms], whole.continue_) == (NAMES, "")
    assert [s.name for s in (await query(cluster.nc, Query())).vms] == NAMES
    # A page after a VM's own key starts at the next one, whatever the token's origin.
    after = await query_page(cluster.nc, Query(continue_=continue_token("default", "v2")))
    assert [s.name for s in after.vms] == ["v3", "v4"]


BAD_QUERIES = [
    (b'{"limit": -1}', "bad query: Expected `int` >= 0 - at `$.limit`"),
    (b'{"continue": "not a token!"}',
     "bad query: continue: not a continue token from a previous page of this list"),
    (b'{"continue": "WzEsMl0"}',  # base64 of [1,2]: a key of the wrong shape
     "bad query: continue: not a continue token from a previous page of this list"),
    (b'{"what": "everything"}', "bad query: Invalid enum value 'everything' - at `$.what`"),
]  # fmt: skip


async def test_a_bad_page_query_is_refused_naming_the_field(cluster: Cluster) -> None:
    said = []
    for body, _ in BAD_QUERIES:
        reply = await cluster.nc.request("virt.api.get", body, timeout=10)
        assert reply.headers is not None
        said.append((reply.headers.get("Nats-Service-Error-Code"),
                     reply.headers.get("Nats-Service-Error")))  # fmt: skip
    assert said == [("400", reason) for _, reason in BAD_QUERIES]
    with pytest.raises(VirtbusError) as refused:  # and the client says it as the API did
        await query(cluster.nc, Query(limit=1, continue_="not a token!"))
    assert str(refused.value) == (
        "bad query: continue: not a continue token from a previous page of this list"
    )
    # The API is still answering: a refused query is that query's end, not the service's.
    assert (await query(cluster.nc, Query())).vms == []
