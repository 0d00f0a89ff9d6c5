"""lbsync.registry: one JSON file per member, written atomically and only on change."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from lbsync import registry as registry_mod
from lbsync.model import EventKind, Member, MemberEvent, MemberStatus
from lbsync.registry import Registry, from_json, to_json
from lbsync.serf.handler import parse_handler_input


def _m(name: str, addr: str = "10.0.0.1", time: float = 1.0, **tags: str) -> Member:
    return Member(name, addr, dict(tags) or {"role": "edge"}, time=time)


def _ev(kind: EventKind, *members: Member) -> MemberEvent:
    return MemberEvent(kind, members)


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def _read(root: Path, name: str) -> dict[str, object]:
    data = json.loads((root / f"{name}.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# --- apply_event -------------------------------------------------------------------------


def test_join_creates_one_file_per_member(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    changed, refused = reg.apply_event(
        _ev(EventKind.JOIN, _m("n1", port="9000"), _m("n2", "10.0.0.2")))
    assert changed == ["n1", "n2"]
    assert refused == []
    assert _files(tmp_path) == ["n1.json", "n2.json"]
    data = _read(tmp_path, "n1")
    assert data == {"name": "n1", "address": "10.0.0.1", "port": 9000,
                    "tags": {"port": "9000"}, "status": "alive",
                    "last_event": "member-join", "time": 1.0}
    assert _read(tmp_path, "n2")["port"] is None


@pytest.mark.parametrize(
    ("kind", "status"),
    [(EventKind.LEAVE, MemberStatus.LEFT), (EventKind.FAILED, MemberStatus.FAILED),
     (EventKind.UPDATE, MemberStatus.ALIVE)],
)
def test_event_kind_sets_status_and_last_event(
    tmp_path: Path, kind: EventKind, status: MemberStatus
) -> None:
    reg = Registry(tmp_path)
    reg.apply_event(_ev(EventKind.JOIN, _m("n1")))
    # Serf sends a member-update when tags change; make the update a real change.
    changed, _ = reg.apply_event(_ev(kind, _m("n1", role="edge", weight="5")))
    assert changed == ["n1"]
    stored = reg.get("n1")
    assert stored is not None
    assert stored.status == status
    assert stored.last_event == kind.value
    assert stored.tags == {"role": "edge", "weight": "5"}


def test_leave_then_failed_then_join_round_trip(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.apply_event(_ev(EventKind.JOIN, _m("n1")))
    assert reg.apply_event(_ev(EventKind.LEAVE, _m("n1")))[0] == ["n1"]
    assert reg.load()["n1"].status == MemberStatus.LEFT
    assert reg.apply_event(_ev(EventKind.FAILED, _m("n1")))[0] == ["n1"]
    assert reg.load()["n1"].status == MemberStatus.FAILED
    assert reg.apply_event(_ev(EventKind.JOIN, _m("n1")))[0] == ["n1"]
    assert reg.load()["n1"].status == MemberStatus.ALIVE


def test_reap_deletes_the_file(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.apply_event(_ev(EventKind.JOIN, _m("n1"), _m("n2")))
    changed, refused = reg.apply_event(_ev(EventKind.REAP, _m("n1"), _m("ghost")))
    assert changed == ["n1"]  # ghost had no file: nothing changed
    assert refused == []
    assert _files(tmp_path) == ["n2.json"]


# What an event means (lbsync.model.EVENT_STATUS), as `lbsync handle` and the daemon see it.
_LINE = "n1\t10.0.0.1\tedge\trole=edge,port=8080,ready=1\n"


@pytest.mark.parametrize("before", [EventKind.LEAVE, EventKind.FAILED])
def test_a_reaped_member_is_gone(tmp_path: Path, before: EventKind) -> None:
    """member-reap: Serf forgot a member that left or failed long enough ago, and lbsync
    forgets it too: no file is left, so no server stands for it (not even a left one)."""
    reg = Registry(tmp_path)
    for kind in (EventKind.JOIN, before, EventKind.REAP):
        event, refused = parse_handler_input(kind.value, _LINE, 1.0)
        assert event is not None and refused == []
        reg.apply_event(event)
    assert reg.load() == {}
    assert _files(tmp_path) == []
    # The daemon's stream hands the member over with the status Serf last had for it.
    reg.apply_event(_ev(EventKind.JOIN, _m("n2")))
    reaped = Member("n2", "10.0.0.1", {"role": "edge"}, MemberStatus.FAILED, "", 2.0)
    assert reg.apply_event(_ev(EventKind.REAP, reaped), revive=False) == (["n2"], [])
    assert _files(tmp_path) == []


@pytest.mark.parametrize("kind", list(EventKind))
def test_the_handler_and_the_registry_read_an_event_alike(tmp_path: Path,
                                                          kind: EventKind) -> None:
    event, _ = parse_handler_input(kind.value, _LINE, 1.0)
    assert event is not None
    said = event.members[0].status
    reg = Registry(tmp_path)
    reg.apply_event(_ev(EventKind.JOIN, _m("n1")))
    reg.apply_event(event)
    stored = reg.get("n1")
    assert (stored.status if stored is not None else MemberStatus.NONE) is said


def test_repeated_event_changes_nothing(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.apply_event(_ev(EventKind.JOIN, _m("n1")))
    assert reg.apply_event(_ev(EventKind.JOIN, _m("n1", time=99.0))) == ([], [])
    assert _read(tmp_path, "n1")["time"] == 1.0


@pytest.mark.parametrize(
    "name",
    ["../x", "../../etc/passwd", "a/b", "/abs", ".", "..", ".hidden", "a b", "a;b",
     "caf\u00e9", "", "x" * 64],
)
def test_refused_name_never_creates_a_file(tmp_path: Path, name: str) -> None:
    root = tmp_path / "nodes"
    root.mkdir()
    reg = Registry(root)
    changed, refused = reg.apply_event(_ev(EventKind.JOIN, Member(name, "10.0.0.1")))
    assert changed == []
    assert [r.member for r in refused] == [name]
    assert refused[0].reason
    assert list(tmp_path.rglob("*")) == [root]  # nothing inside nor beside the registry


def test_refused_name_on_reap_does_not_delete_outside(tmp_path: Path) -> None:
    root = tmp_path / "nodes"
    root.mkdir()
    victim = tmp_path / "x.json"
    victim.write_text("{}", encoding="utf-8")
    changed, refused = Registry(root).apply_event(_ev(EventKind.REAP, Member("../x", "")))
    assert changed == []
    assert len(refused) == 1
    assert victim.exists()


def test_one_refused_member_does_not_stop_the_others(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    changed, refused = reg.apply_event(
        _ev(EventKind.JOIN, _m("good1"), Member("bad name", "10.0.0.9"), _m("good2")))
    assert changed == ["good1", "good2"]
    assert [r.member for r in refused] == ["bad name"]


def test_member_with_unicode_digit_port_tag_does_not_crash_the_registry(tmp_path: Path) -> None:
    # The RPC stream passes tags through unvalidated. "²".isdigit() is True but int("²")
    # raises, so to_json() must not trust isdigit(); the member should be stored (desired
    # refuses it later) or refused, never blow up the loop.
    reg = Registry(tmp_path)
    changed, _ = reg.apply_event(_ev(EventKind.JOIN, _m("n1", role="edge", port="\u00b2")))
    assert changed == ["n1"]
    assert _read(tmp_path, "n1")["port"] is None


# --- put ---------------------------------------------------------------------------------


def test_put_skips_rewrite_when_only_time_changes(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    assert reg.put(_m("n1", time=1.0)) is True
    path = reg.path("n1")
    before = path.stat()
    content = path.read_bytes()
    assert reg.put(_m("n1", time=500.0)) is False
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert path.read_bytes() == content


def test_put_skips_rewrite_when_only_last_event_changes(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.put(Member("n1", "10.0.0.1", {"role": "edge"}, last_event="member-join"))
    assert reg.put(Member("n1", "10.0.0.1", {"role": "edge"}, last_event="member-update")) is False
    assert _read(tmp_path, "n1")["last_event"] == "member-join"


@pytest.mark.parametrize(
    "changed_member",
    [
        Member("n1", "10.0.0.2", {"role": "edge"}),
        Member("n1", "10.0.0.1", {"role": "edge", "weight": "7"}),
        Member("n1", "10.0.0.1", {}),
        Member("n1", "10.0.0.1", {"role": "edge"}, MemberStatus.LEAVING),
    ],
)
def test_put_rewrites_when_a_fact_changes(tmp_path: Path, changed_member: Member) -> None:
    reg = Registry(tmp_path)
    reg.put(Member("n1", "10.0.0.1", {"role": "edge"}))
    before = reg.path("n1").stat().st_ino
    assert reg.put(changed_member) is True
    assert reg.get("n1") == changed_member
    assert reg.path("n1").stat().st_ino != before  # replaced by rename, not edited in place


def test_put_tag_order_does_not_count_as_a_change(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.put(Member("n1", "10.0.0.1", {"role": "edge", "port": "80"}))
    assert reg.put(Member("n1", "10.0.0.1", {"port": "80", "role": "edge"})) is False


def test_put_creates_missing_registry_dir(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "a" / "b")
    assert reg.put(_m("n1")) is True
    assert (tmp_path / "a" / "b" / "n1.json").is_file()


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for i in range(5):
        reg.put(Member("n1", f"10.0.0.{i}", {"role": "edge"}))
        reg.put(Member(f"m{i}", "10.0.0.1", {}))
    assert _files(tmp_path) == sorted(["n1.json"] + [f"m{i}.json" for i in range(5)])
    assert json.loads((tmp_path / "n1.json").read_text())["address"] == "10.0.0.4"


def test_written_file_is_world_readable(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.put(_m("n1"))
    assert reg.path("n1").stat().st_mode & 0o777 == 0o644


# --- get / delete ------------------------------------------------------------------------


def test_get_missing_and_damaged(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    assert reg.get("nobody") is None
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    assert reg.get("broken") is None


def test_delete(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.put(_m("n1"))
    assert reg.delete("n1") is True
    assert reg.delete("n1") is False
    assert _files(tmp_path) == []


# --- sync --------------------------------------------------------------------------------


def test_sync_upserts_and_deletes_members_serf_no_longer_lists(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.apply_event(_ev(EventKind.JOIN, _m("keep"), _m("gone"), _m("moved")))
    changed, refused = reg.sync(
        [_m("keep"), _m("moved", "10.0.0.99"), _m("new")], now=50.0)
    assert sorted(changed) == ["gone", "moved", "new"]
    assert refused == []
    assert _files(tmp_path) == ["keep.json", "moved.json", "new.json"]
    members = reg.load()
    assert members["moved"].addr == "10.0.0.99"
    assert members["moved"].last_event == "member-update"
    assert members["moved"].time == 50.0
    assert members["new"].last_event == "member-join"
    assert members["new"].time == 50.0
    # Untouched: same facts, so neither the time nor the event moved.
    assert members["keep"].last_event == "member-join"
    assert members["keep"].time == 1.0


def test_sync_is_idempotent(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    listing = [_m("a"), _m("b", "10.0.0.2")]
    reg.sync(listing, now=1.0)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert reg.sync(listing, now=2.0) == ([], [])
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes


@pytest.mark.parametrize(
    ("status", "event"),
    [(MemberStatus.LEAVING, "member-leaving"), (MemberStatus.LEFT, "member-leave"),
     (MemberStatus.FAILED, "member-failed"), (MemberStatus.NONE, "member-unknown")],
)
def test_sync_names_a_status_change_as_an_event(
    tmp_path: Path, status: MemberStatus, event: str
) -> None:
    reg = Registry(tmp_path)
    reg.sync([_m("a")], now=1.0)
    changed, _ = reg.sync([Member("a", "10.0.0.1", {"role": "edge"}, status)], now=2.0)
    assert changed == ["a"]
    stored = reg.get("a")
    assert stored is not None
    assert (stored.status, stored.last_event, stored.time) == (status, event, 2.0)


def test_sync_status_change_with_tag_change_is_named_by_status(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.sync([_m("a")], now=1.0)
    reg.sync([Member("a", "10.0.0.1", {"role": "x"}, MemberStatus.FAILED)], now=2.0)
    stored = reg.get("a")
    assert stored is not None
    assert stored.last_event == "member-failed"


def test_sync_refuses_bad_names_without_files(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    changed, refused = reg.sync([_m("ok"), Member("../evil", "10.0.0.1"),
                                 Member("a\nb", "10.0.0.1")], now=1.0)
    assert changed == ["ok"]
    assert sorted(r.member for r in refused) == ["../evil", "a\nb"]
    assert _files(tmp_path) == ["ok.json"]
    assert not (tmp_path.parent / "evil.json").exists()


def test_sync_with_empty_listing_empties_the_registry(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.sync([_m("a"), _m("b")], now=1.0)
    changed, _ = reg.sync([], now=2.0)
    assert sorted(changed) == ["a", "b"]
    assert _files(tmp_path) == []


def test_sync_leaves_damaged_files_alone(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    reg.sync([_m("a")], now=1.0)
    assert (tmp_path / "broken.json").read_text(encoding="utf-8") == "{"


def test_sync_rewrites_a_listed_member_whose_file_was_left_empty(tmp_path: Path) -> None:
    # Registry files are not fsynced: a power cut can leave one empty. It reads as damaged
    # until the next sync, which rewrites it from Serf's listing.
    reg = Registry(tmp_path)
    reg.sync([_m("a")], now=1.0)
    reg.path("a").write_text("", encoding="utf-8")
    assert reg.load() == {} and reg.damaged == frozenset({"a"})
    changed, _ = reg.sync([_m("a")], now=2.0)
    assert changed == ["a"]
    assert reg.load()["a"].addr == "10.0.0.1" and reg.damaged == frozenset()


def test_load_parses_a_file_again_only_when_it_changed(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path)
    reg.sync([_m("a"), _m("b", "10.0.0.2")], now=1.0)
    parsed: list[object] = []
    real = registry_mod.from_json
    monkeypatch.setattr(registry_mod, "from_json", lambda d: parsed.append(d) or real(d))
    assert set(reg.load()) == {"a", "b"} and parsed == [], "written by this registry: cached"
    # A person edits b in place (same inode, new size), another tool rewrites a atomically.
    reg.path("b").write_text(reg.path("b").read_text().replace("10.0.0.2", "10.0.0.22"))
    Registry(tmp_path).put(_m("a", "10.0.0.9"))
    parsed.clear()
    members = reg.load()
    assert (members["a"].addr, members["b"].addr) == ("10.0.0.9", "10.0.0.22")
    assert len(parsed) == 2
    reg.path("a").unlink()
    assert set(reg.load()) == {"b"} and reg.get("a") is None


# --- load --------------------------------------------------------------------------------


def test_load_missing_dir_is_empty(tmp_path: Path) -> None:
    assert Registry(tmp_path / "nope").load() == {}


@pytest.mark.parametrize(
    "content",
    ["{not json", "", "null", "[]", '"text"', '{"name": "bad"}',
     '{"name": "bad", "address": "10.0.0.1", "status": "zombie"}',
     '{"name": "bad", "address": "10.0.0.1", "tags": {"a": 1}}',
     '{"name": "bad", "address": "10.0.0.1", "tags": "role=edge"}',
     '{"name": "bad", "address": "10.0.0.1", "time": "soon"}'],
)
def test_load_skips_a_damaged_file_without_deleting_it(tmp_path: Path, content: str) -> None:
    reg = Registry(tmp_path)
    reg.put(_m("good"))
    (tmp_path / "bad.json").write_text(content, encoding="utf-8")
    assert list(reg.load()) == ["good"]
    assert (tmp_path / "bad.json").read_text(encoding="utf-8") == content


def test_load_skips_non_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe{}")
    assert Registry(tmp_path).load() == {}
    assert (tmp_path / "bin.json").exists()


def test_load_skips_a_file_whose_name_does_not_match(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.put(_m("good"))
    text = json.dumps(to_json(_m("someone-else")))
    (tmp_path / "impostor.json").write_text(text, encoding="utf-8")
    assert list(reg.load()) == ["good"]
    assert (tmp_path / "impostor.json").read_text(encoding="utf-8") == text


def test_load_skips_a_file_whose_name_is_invalid(tmp_path: Path) -> None:
    # The file name matches, but a hand-made file must not smuggle in a bad name either.
    (tmp_path / "a b.json").write_text(json.dumps(to_json(Member("a b", "10.0.0.1"))),
                                       encoding="utf-8")
    assert Registry(tmp_path).load() == {}
    assert (tmp_path / "a b.json").exists()


def test_load_ignores_other_files_and_directories(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.put(_m("good"))
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    (tmp_path / ".good.json.abc.tmp").write_text("{", encoding="utf-8")
    (tmp_path / ".hidden.json").write_text("{", encoding="utf-8")  # as glob's "*.json"
    (tmp_path / "dir.json").mkdir()
    assert list(reg.load()) == ["good"]
    assert reg.damaged == frozenset({"dir"})


def test_load_round_trips_what_put_wrote(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    m = Member("n1", "2001:db8::1", {"role": "edge", "port": "9000"}, MemberStatus.LEAVING,
               "member-leaving", 12.3456)
    reg.put(m)
    loaded = reg.load()["n1"]
    assert loaded == Member("n1", "2001:db8::1", {"port": "9000", "role": "edge"},
                            MemberStatus.LEAVING, "member-leaving", 12.346)


def test_from_json_defaults() -> None:
    m = from_json({"name": "n1", "address": "10.0.0.1"})
    assert (m.tags, m.status, m.last_event, m.time) == ({}, MemberStatus.NONE, "", 0.0)


def test_registry_is_readable_by_a_person(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.put(_m("n1"))
    text = (tmp_path / "n1.json").read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert "\n  \"name\": \"n1\"," in text
    assert os.path.getsize(tmp_path / "n1.json") == len(text.encode())


def test_a_damaged_file_is_reported_once_per_change(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry(tmp_path)
    bad = tmp_path / "node1.json"
    bad.write_text("{not json")
    caplog.set_level(logging.WARNING, "lbsync.registry")
    for _ in range(3):  # three resyncs
        assert reg.load() == {}
    assert caplog.text.count("skipping unreadable") == 1
    bad.write_text("{still not json, but another}")  # changed: news again
    reg.load()
    assert caplog.text.count("skipping unreadable") == 2
    bad.write_text(json.dumps(to_json(Member("node1", "10.0.0.1", {"role": "edge"}))))
    assert set(reg.load()) == {"node1"}  # mended
    bad.write_text("{not json")  # the first fault again, after a repair: reported again
    os.utime(bad, ns=(1, 1))
    reg.load()
    assert caplog.text.count("skipping unreadable") == 3


def test_a_late_join_does_not_bring_back_a_member_the_poll_saw_leave(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    alive = Member("node2", "10.0.0.2", {"role": "edge"})
    reg.sync([alive], 1.0)
    reg.sync([Member("node2", "10.0.0.2", {"role": "edge"}, MemberStatus.LEAVING)], 2.0)
    late = MemberEvent(EventKind.JOIN, (alive,))  # Serf's join, a second late
    assert reg.apply_event(late, revive=False) == ([], [])
    assert reg.load()["node2"].status == MemberStatus.LEAVING
    update = MemberEvent(EventKind.UPDATE, (alive,))
    assert reg.apply_event(update, revive=False) == ([], [])
    # Departures still count at once, and a member that is alive takes its updates.
    reg.sync([alive], 3.0)
    tagged = Member("node2", "10.0.0.2", {"role": "edge", "weight": "5"})
    assert reg.apply_event(MemberEvent(EventKind.UPDATE, (tagged,)), revive=False)[0] == [
        "node2"]
    assert reg.apply_event(MemberEvent(EventKind.LEAVE, (tagged,)), revive=False)[0] == [
        "node2"]
    # The classic event handler has no poll: there, the join is the news.
    assert reg.apply_event(late)[0] == ["node2"]
    assert reg.load()["node2"].status == MemberStatus.ALIVE
