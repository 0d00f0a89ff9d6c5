"""Which filesystem events wake the daemon: changes to registry files, never reads."""

from __future__ import annotations

import queue

import pytest
from watchdog.events import (
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
)

from lbsync.daemon import RegistryWatch
from lbsync.loop import TOUCHED


def woke(event: FileSystemEvent) -> bool:
    q: queue.Queue[object] = queue.Queue()
    RegistryWatch(q).on_any_event(event)
    return not q.empty() and q.get() is TOUCHED


@pytest.mark.parametrize("event", [
    FileCreatedEvent("/nodes/n1.json"),
    FileModifiedEvent("/nodes/n1.json"),
    FileDeletedEvent("/nodes/n1.json"),
    FileClosedEvent("/nodes/n1.json"),
    # lbsync handle writes atomically: a temp file renamed onto the member's file.
    FileMovedEvent("/nodes/.n1.json.abc.tmp", "/nodes/n1.json"),
])
def test_changes_to_registry_files_wake_the_daemon(event: FileSystemEvent) -> None:
    assert woke(event)


@pytest.mark.parametrize("event", [
    FileOpenedEvent("/nodes/n1.json"),  # the daemon's own reads must not wake it
    FileClosedNoWriteEvent("/nodes/n1.json"),
    FileCreatedEvent("/nodes/.n1.json.abc.tmp"),
    FileModifiedEvent("/nodes/notes.txt"),
])
def test_reads_and_other_files_do_not(event: FileSystemEvent) -> None:
    assert not woke(event)
