"""Who is calling and what they may do: the identity a signed token names (email,
district), and the access levels they hold, each at a school or district-wide.

Access comes from two places, and what a caller may do is their union:
- the token's own `roles` and `schools` claims (an identity provider that sends them):
  each role is held at each of the token's schools, district_admin district-wide, a role
  with no schools is held at no school in particular (it still counts on the caller's own
  caseload);
- the grants the caseload service publishes on caseload.access.v1 (an admin's grant, the
  district's roster default, configuration), which every service keeps in its own
  projection (services/kit/access.py).

No I/O here: the rules of each service read an Identity; services/kit/auth.py builds it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

# Seeds 000 (Caseload Viewer, Caseload Editor, admins), 001 (providers, supervisors) and
# 003 (Manage Cases).
LEVELS = ("caseload_viewer", "caseload_editor", "manage_cases", "provider", "supervisor", "school_admin",
          "district_admin")
ROLES = frozenset(LEVELS)


@dataclass(frozen=True)
class Holding:
    """One access level held at one place, on one basis.

    school_id: the SIS org id; None: the whole district; "" : no school in particular (a
    token role without schools). basis: token, granted, roster_default or configuration."""

    level: str
    school_id: str | None
    basis: str
    granted_by: str | None = None
    since: datetime | None = None

    @property
    def district_wide(self) -> bool:
        return self.school_id is None


def from_token(roles: Iterable[str], schools: Iterable[str]) -> tuple[Holding, ...]:
    """A token's claims as holdings: each role at each of its schools; district_admin, and
    any role of a token with no schools but district_admin, as they always read."""
    schools = sorted(set(schools))
    out = []
    for role in sorted(set(roles)):
        if role == "district_admin":
            out.append(Holding(role, None, "token"))
        elif schools:
            out += [Holding(role, school, "token") for school in schools]
        else:
            out.append(Holding(role, "", "token"))
    return tuple(out)


@dataclass(frozen=True)
class Identity:
    """The caller: email and district from the token; holdings from the token and the
    access projection. Every check a service makes reads one of the methods below."""

    email: str
    district_id: str
    holdings: tuple[Holding, ...] = ()
    _by_level: dict[str, frozenset[str | None]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_level: dict[str, set[str | None]] = {}
        for h in self.holdings:
            by_level.setdefault(h.level, set()).add(h.school_id)
        object.__setattr__(self, "_by_level", {k: frozenset(v) for k, v in by_level.items()})

    @property
    def roles(self) -> frozenset[str]:
        """Every access level held anywhere (at a school, district-wide or at none)."""
        return frozenset(self._by_level)

    def has(self, level: str) -> bool:
        return level in self._by_level

    @property
    def district_wide(self) -> bool:
        """A district admin: sees and acts on the whole district."""
        return "district_admin" in self._by_level

    def holds(self, level: str, school_id: str) -> bool:
        """Holds `level` at this school: there, or district-wide; a district admin holds each
        level they hold anywhere at every school of the district (their scope is the district)."""
        places = self._by_level.get(level)
        return places is not None and (self.district_wide or None in places or school_id in places)

    def holds_any(self, levels: Iterable[str], school_id: str) -> bool:
        return any(self.holds(level, school_id) for level in levels)

    def schools_for(self, *levels: str) -> frozenset[str] | None:
        """The schools where the caller holds any of these levels (any level when none are
        named); None: the whole district (a district admin, whose scope is the district, or
        one of the levels held district-wide). The caller checks the level is held at all."""
        if self.district_wide:
            return None
        wanted = levels or tuple(self._by_level)
        places: set[str | None] = set()
        for level in wanted:
            places |= self._by_level.get(level, frozenset())
        if None in places:
            return None
        return frozenset(places - {""})

    def scope(self, *levels: str) -> list[str] | None:
        """schools_for() as the stores take it: a sorted list, or None for the whole district."""
        schools = self.schools_for(*levels)
        return None if schools is None else sorted(schools)

    def may_see_school(self, school_id: str) -> bool:
        """Holds some level at this school (or district-wide)."""
        return self.district_wide or any(None in p or school_id in p for p in self._by_level.values())
