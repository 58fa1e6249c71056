"""AsyncClient against a real tallyd: the same methods as Client, awaited."""

from __future__ import annotations

import asyncio

import pytest

import tally


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_async_append_read_status_and_errors(daemon):
    async def main():
        async with tally.AsyncClient(daemon.socket) as client:
            ack = await client.append("async.event", subject="s", attributes={"n": 3, "xs": [1.5]}, payload="p")
            acks = await client.append_many(tally.Event("many", subject=str(i)) for i in range(3))
            records = await client.read(0)
            status = await client.status()
            with pytest.raises(tally.OutOfRange):
                await client.read(10)
            with pytest.raises(tally.TpmUnavailable):
                await client.attest(b"n")
            # Still usable after daemon errors, and calls from many tasks are serialised.
            more = await asyncio.gather(*(client.append("gathered", subject=str(i)) for i in range(10)))
            return ack, acks, records, status, more

    ack, acks, records, status, more = run(main())
    assert ack.seq == 0 and [a.seq for a in acks] == [1, 2, 3]
    assert records[0].attributes == {"n": 3, "xs": [1.5]} and records[0].payload == b"p"
    assert records[0].entry_hash == ack.entry_hash
    assert status.size == 4 and status.head_hash == acks[-1].entry_hash
    assert sorted(a.seq for a in more) == list(range(4, 14))


def test_async_follow_yields_stored_then_new_records(daemon):
    async def main():
        client = tally.AsyncClient(daemon.socket)
        await client.append("old")
        seen = []
        follow = client.follow(0, idle_timeout=10)

        async def writer():
            async with tally.AsyncClient(daemon.socket) as other:
                await other.append("new", subject="1")
                await other.append("new", subject="2")

        task = None
        async for record in follow:
            seen.append((record.seq, record.kind, record.subject))
            if len(seen) == 1:
                task = asyncio.ensure_future(writer())
            if len(seen) == 3:
                break
        await follow.aclose()
        await task
        await client.close()
        return seen

    assert run(main()) == [(0, "old", ""), (1, "new", "1"), (2, "new", "2")]


def test_async_missing_socket_is_daemon_unavailable(tmp_path):
    path = str(tmp_path / "none.sock")

    async def main():
        await tally.AsyncClient(path).status()

    with pytest.raises(tally.DaemonUnavailable, match="is tallyd running"):
        run(main())


def test_async_event_too_large(daemon_factory):
    daemon = daemon_factory("max_frame_bytes = 4096")

    async def main():
        async with tally.AsyncClient(daemon.socket) as client:
            with pytest.raises(tally.EventTooLarge):
                await client.append("big", payload=bytes(5000))
            return (await client.status()).size

    assert run(main()) == 0
