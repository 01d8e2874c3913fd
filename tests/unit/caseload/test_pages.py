"""The caseload service's kept pages in memory (services/caseload/pages.py): under their
whole key, least recently used first out beyond the size, none past its time."""

from __future__ import annotations

from uuid import uuid4

from services.caseload.pages import PageCache, PageKey


def key(owner: str = "t@d.org", district: str = "d1", **kw) -> PageKey:
    fields = dict(school_id=None, grade=None, reason=None, after=None, limit=100, schools=None) | kw
    return PageKey(district, owner, **fields)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_page_is_kept_under_everything_it_was_read_with():
    cache = PageCache()
    cache.put(key(), b"mine", "1:1:")
    assert cache.get(key()).body == b"mine" and cache.get(key()).snapshot == "1:1:"
    for other in (key(district="d2"), key(owner="u@d.org"), key(grade="03"), key(school_id="E1"), key(limit=500),
                  key(after=uuid4()), key(reason="support"), key(schools=("E1",)), key(schools=())):
        assert cache.get(other) is None, other


def test_a_page_expires_and_the_least_recently_used_goes_first_beyond_the_size():
    clock = Clock()
    cache = PageCache(max_bytes=10, keep_seconds=60, clock=clock)
    cache.put(key("a"), b"aaaa", "s")
    cache.put(key("b"), b"bbbb", "s")
    assert cache.get(key("a")) is not None  # a is now the most recently used
    cache.put(key("c"), b"cccc", "s")
    assert cache.get(key("b")) is None and cache.get(key("a")) and cache.get(key("c"))
    cache.put(key("a"), b"a2", "t")  # replaced, not added
    assert cache.get(key("a")).body == b"a2" and len(cache) == 2
    cache.put(key("huge"), b"x" * 11, "s")  # larger than the whole: not kept
    assert cache.get(key("huge")) is None and len(cache) == 2
    clock.now = 60
    assert cache.get(key("a")) is None and cache.get(key("c")) is None and len(cache) == 0
