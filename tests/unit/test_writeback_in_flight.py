"""Write batches in flight together: each journalled before it leaves and after it comes back,
never more at once than the client allows, a record's operations never split across batches, and
a batch failing as a whole does not lose the outcomes of the ones in flight beside it."""

from __future__ import annotations

import threading
import time

import pytest

from trueup.writeback import WriteOp, WriteResult, _batches, _send


def _ops(keys: list[str]) -> list[WriteOp]:
    return [WriteOp(key=k, key_values={"id": k}, action="update", change_ids=[f"c-{k}-{i}"])
            for i, k in enumerate(keys)]


class _Client:
    """Answers every batch `applied` after a short wait, and fails the batch holding `fail_on`.
    The first `together` batches wait for each other: they must all be out at once."""

    def __init__(self, fail_on: str | None = None, together: int = 1):
        self.fail_on = fail_on
        self.first_wave = threading.Barrier(together, timeout=10)
        self.lock = threading.Lock()
        self.active = self.most_active = 0
        self.sent: list[list[str]] = []

    def write(self, entity: str, ops: list[WriteOp]) -> list[WriteResult]:
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.sent.append([c for op in ops for c in op.change_ids])
            first_wave = len(self.sent) <= self.first_wave.parties
        try:
            if first_wave:  # broken (an error) if fewer than `together` are ever out at once
                self.first_wave.wait()
            time.sleep(0.01)
            if self.fail_on and any(op.key == self.fail_on for op in ops):
                raise ConnectionError("the system went away")
            return [WriteResult("applied") for _ in ops]
        finally:
            with self.lock:
                self.active -= 1


def test_a_records_operations_stay_in_one_batch():
    ops = _ops(["a", "b", "b", "b", "c", "d", "d", "e"])
    batches = _batches(ops, 2)
    assert [[op.key for op in b] for b in batches] == [["a", "b", "b", "b"], ["c", "d", "d"], ["e"]]
    assert [op for b in batches for op in b] == ops  # nothing lost, the order kept


@pytest.mark.parametrize("in_flight", [1, 3])
def test_every_batch_is_journalled_before_it_leaves_and_after_it_returns(in_flight):
    client = _Client(together=in_flight)
    events: list[tuple[str, tuple[str, ...]]] = []

    def journal(ids, results):
        if results is None:
            assert list(ids) not in client.sent  # not sent yet
            events.append(("before", tuple(ids)))
        else:
            assert all(r.status == "applied" for r in results)
            events.append(("after", tuple(ids)))

    outcomes: dict[str, WriteResult] = {}
    ops = _ops([f"k{n:03d}" for n in range(40)])
    _send(client, "customer", _batches(ops, 4), in_flight, outcomes, journal)
    assert set(outcomes) == {c for op in ops for c in op.change_ids}
    assert client.most_active == in_flight  # as many at once as allowed, never more
    for batch in client.sent:
        key = tuple(batch)
        assert events.index(("before", key)) < events.index(("after", key))
    assert len(events) == 2 * len(client.sent) == 20


def test_a_failed_batch_still_has_the_batches_in_flight_beside_it_journalled():
    client = _Client(fail_on="k005", together=3)  # the second batch of four fails as a whole
    journalled: dict[tuple[str, ...], str] = {}

    def journal(ids, results):
        journalled[tuple(ids)] = "attempting" if results is None else results[0].status

    outcomes: dict[str, WriteResult] = {}
    ops = _ops([f"k{n:03d}" for n in range(40)])
    with pytest.raises(ConnectionError):
        _send(client, "customer", _batches(ops, 4), 3, outcomes, journal)
    failed = next(tuple(b) for b in client.sent if "c-k005-5" in b)
    assert journalled[failed] == "attempting"  # its outcome is unknown: the next run settles it
    sent_ok = [tuple(b) for b in client.sent if tuple(b) != failed]
    assert len(sent_ok) >= 2  # the first batch and one sent beside the failing one
    assert all(journalled[b] == "applied" for b in sent_ok)
    # sends stop once the failure is seen: the first three, and at most one more per batch that
    # came back before it (they all take as long), not the ten the plan holds
    assert len(client.sent) <= 6
    assert set(outcomes) == {c for b in sent_ok for c in b}
