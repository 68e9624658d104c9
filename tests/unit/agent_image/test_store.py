"""Group commit against a real SQLite file: who commits a write, what shares a commit, what a failure undoes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from agent_image import Store
from agent_image._errors import RuntimeStorageError
from agent_image._watchers import Watchers


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(str(tmp_path / "agent.db"))
    yield opened
    opened.close()


def _hold_the_connection(store: Store) -> tuple[threading.Event, threading.Thread]:
    """A write that keeps the write connection busy until the returned event is set (so later writes queue)."""
    inside, release = threading.Event(), threading.Event()

    def slow(conn: apsw.Connection) -> None:
        inside.set()
        release.wait(10)

    holder = threading.Thread(target=store.write, args=(slow,))
    holder.start()
    assert inside.wait(5)
    return release, holder


def _wait_queued(store: Store, count: int) -> None:
    """Until `count` writes wait for the writer thread (which may already hold the first of them)."""
    deadline = time.monotonic() + 5
    while store._queue.qsize() < count - 1:
        assert time.monotonic() < deadline, f"only {store._queue.qsize()} of {count} writes queued"
        time.sleep(0.001)
    time.sleep(0.2)  # the last one too


def test_an_uncontended_write_is_committed_by_its_callers_thread(store: Store) -> None:
    before = store.commits
    ran_on = store.write(lambda conn: (conn.execute("INSERT INTO counters VALUES ('c', 1)"), threading.get_ident()))
    assert ran_on[1] == threading.get_ident()  # no hand-off to the writer thread and back
    assert store.commits == before + 1
    assert store.counter("c") == 1


def test_writes_queued_behind_a_busy_connection_share_one_commit_on_the_writer_thread(store: Store) -> None:
    release, holder = _hold_the_connection(store)
    before = store.commits
    ran_on: list[int] = []

    def bump(conn: apsw.Connection) -> None:
        ran_on.append(threading.get_ident())
        conn.execute("INSERT INTO counters VALUES ('c', 1) ON CONFLICT(name) DO UPDATE SET value = value + 1")

    writers = [threading.Thread(target=store.write, args=(bump,)) for _ in range(8)]
    for writer in writers:
        writer.start()
    _wait_queued(store, 8)
    release.set()
    for thread in [holder, *writers]:
        thread.join(10)
    assert store.counter("c") == 8
    assert store.commits == before + 2  # the held write, then the eight queued behind it in one transaction
    assert set(ran_on) == {store._writer.ident}


def test_a_failing_write_alone_runs_once_commits_nothing_and_leaves_the_store_usable(store: Store) -> None:
    calls: list[int] = []

    def half_done(conn: apsw.Connection) -> None:
        calls.append(1)
        conn.execute("INSERT INTO counters VALUES ('c', 1)")
        raise ValueError("changed my mind")

    before = store.commits
    with pytest.raises(ValueError, match="changed my mind"):
        store.write(half_done)
    assert calls == [1]
    assert store.commits == before
    assert store.counter("c") == 0
    assert store.bump_counter("c") == 1


def test_a_failing_write_in_a_batch_undoes_only_itself(store: Store) -> None:
    release, holder = _hold_the_connection(store)
    errors: list[BaseException] = []

    def bad(conn: apsw.Connection) -> None:
        conn.execute("INSERT INTO counters VALUES ('bad', 1)")
        raise ValueError("no")

    def write_bad() -> None:
        try:
            store.write(bad)
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write_bad)] + [
        threading.Thread(target=store.bump_counter, args=("good",)) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    _wait_queued(store, 4)
    release.set()
    for thread in [holder, *threads]:
        thread.join(10)
    assert len(errors) == 1
    assert store.counter("good") == 3
    assert store.counter("bad") == 0


def test_a_write_after_close_is_refused(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "agent.db"))
    store.close()
    with pytest.raises(RuntimeStorageError, match="is closed"):
        store.bump_counter("c")
    store.close()  # twice is harmless


def test_close_waits_for_a_write_its_caller_is_committing(store: Store) -> None:
    release, holder = _hold_the_connection(store)
    closer = threading.Thread(target=store.close)
    closer.start()
    time.sleep(0.05)
    assert closer.is_alive()  # the connection is not closed under the write
    release.set()
    holder.join(10)
    closer.join(10)
    assert not closer.is_alive()


def test_a_waiter_answers_with_what_fire_hands_it_without_looking() -> None:
    watchers, looked = Watchers(), []

    def look() -> tuple[bool, str]:
        looked.append(1)
        return False, "not yet"

    answer: list[str] = []
    waiter = threading.Thread(
        target=lambda: answer.append(
            watchers.wait_for(("settled", "w"), 5, look, stopping=lambda: False, idle=lambda: True)
        )
    )
    waiter.start()
    deadline = time.monotonic() + 5
    while not watchers._events:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    watchers.fire(("settled", "w"), "the committed row")
    waiter.join(5)
    assert answer == ["the committed row"]
    assert looked == []
