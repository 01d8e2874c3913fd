"""lock_until_commit names a key's lock by its repr: every instance, old code or new, must
take the same lock for the same key."""

from uuid import UUID, uuid4

from services.kit.db import _text


def test_a_key_names_its_lock_as_its_repr_does():
    keys = [uuid4() for _ in range(200)] + [UUID(int=0), UUID(int=2**128 - 1), "S-1", ("d1", "S-1"), 42]
    assert [_text(k) for k in keys] == [repr(k) for k in keys]
