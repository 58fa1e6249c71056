"""Records read from the daemon are checked: entry hash, header seq, chain links."""

from __future__ import annotations

import pytest

import tally
from tally.types import check_chain, record_from_pb
from tally.v1 import tally_pb2 as pb


def stored_records(daemon, n):
    """The daemon's StoredRecord messages, as they came off the wire."""
    from tally._conn import Connection

    with tally.Client(daemon.socket) as client:
        client.append_many(tally.Event("r", subject=str(i)) for i in range(n))
    conn = Connection(daemon.socket, 10)
    reply = conn.call(pb.Request(read=pb.ReadRequest(from_seq=0, max_records=n)))
    conn.close()
    return list(reply.records.records)


def test_untouched_records_decode_and_chain(daemon):
    records = [record_from_pb(s, pb.RecordBody) for s in stored_records(daemon, 3)]
    check_chain(records)
    assert [r.subject for r in records] == ["0", "1", "2"]


def test_a_changed_byte_fails_the_entry_hash(daemon):
    stored = stored_records(daemon, 1)[0]
    tampered = pb.StoredRecord(
        seq=stored.seq, record=stored.record[:-1] + bytes([stored.record[-1] ^ 1]), entry_hash=stored.entry_hash
    )
    with pytest.raises(tally.IntegrityError, match="entry hash"):
        record_from_pb(tampered, pb.RecordBody)


def test_a_record_under_another_seq_is_refused(daemon):
    stored = stored_records(daemon, 2)[1]
    moved = pb.StoredRecord(seq=5, record=stored.record, entry_hash=stored.entry_hash)
    with pytest.raises(tally.IntegrityError, match="seq"):
        record_from_pb(moved, pb.RecordBody)


def test_a_broken_link_is_refused(daemon):
    first, _, third = [record_from_pb(s, pb.RecordBody) for s in stored_records(daemon, 3)]
    # Records 0 and 2 are each valid, but 2's prev_hash is not 0's entry hash;
    # presented as consecutive (seq 0 then seq 1) the check must fail.
    import dataclasses

    fake_second = dataclasses.replace(third, seq=1)
    with pytest.raises(tally.IntegrityError, match="prev_hash"):
        check_chain([first, fake_second])


def test_content_is_joined_back_and_checked_against_its_commitment(daemon):
    """The payload lives beside the record (docs/DESIGN.md section 3b): the
    client joins the served opening back in, refuses one that does not open
    the commitment, and says "erased" when a committed record comes without."""
    from tally._conn import Connection

    with tally.Client(daemon.socket) as client:
        client.append("prompt", subject="u-1", payload=b"a prompt of the data subject")
        [record] = client.read(0, 1)
    assert (record.payload, record.content) == (b"a prompt of the data subject", "present")
    body = pb.RecordBody.FromString(record.raw[41:])
    assert len(body.content_commitment) == 32 and body.event.payload == b"", "the payload is not in the record"

    conn = Connection(daemon.socket, 10)
    stored = conn.call(pb.Request(read=pb.ReadRequest(from_seq=0, max_records=1))).records.records[0]
    conn.close()
    flipped = pb.StoredRecord()
    flipped.CopyFrom(stored)
    flipped.content = stored.content[:-1] + bytes([stored.content[-1] ^ 1])
    with pytest.raises(tally.IntegrityError, match="commitment"):
        record_from_pb(flipped, pb.RecordBody, pb.Content)
    without = pb.StoredRecord(seq=stored.seq, record=stored.record, entry_hash=stored.entry_hash)
    erased = record_from_pb(without, pb.RecordBody, pb.Content)
    assert (erased.payload, erased.content) == (b"", "erased")
