"""The test tree itself: pytest imports test files by basename (tests/ has no packages), so
two test files with the same name in different folders stop the whole run at collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_file_names_are_unique_across_folders() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert len(names) > 10  # the tree was found
    assert [n for n, k in names.items() if k > 1] == []
