"""Request filters on catalogue attributes: what a query string asks, and which items pass.

The syntax is the same on ``/v1/recommendations``, ``/v1/items/{id}/similar`` and
``/v1/popular``. Every query parameter that is not one of the endpoint's own (``user_id``,
``k``, ``source``) is a filter on the item's ``attributes`` (the ``items`` topic's
``attributes`` object: the ``metadata`` the API shows for each item):

- ``name=value``: the attribute ``name`` equals ``value`` or, for a list attribute,
  holds it. Numbers compare as numbers (``year=1995`` matches ``1995`` and ``1995.0``),
  text exactly (case-sensitive). A singular name also reads the plural list attribute:
  ``genre=Comedy`` matches ``{"genres": ["Comedy", "Drama"]}``. Repeating a parameter
  accepts any of its values (``genre=Comedy&genre=Drama``).
- ``name_min=number``, ``name_max=number``: the attribute is a number within the bound
  (inclusive); ``year_min=1990&year_max=1999`` is the 1990s.
- Different names must all hold. An item without metadata, or without the attribute,
  never passes a filter: a filtered answer never holds an item nobody could check.

Limits (400 otherwise): at most :data:`MAX_FILTERS` parameters, names of 1-64 characters
from ``[A-Za-z0-9_.-]``, values of at most :data:`MAX_VALUE_LEN` characters, bounds that
are finite numbers with ``min <= max``.

Why in the API and over-fetched, not inside the FAISS search: the API is the only service
that reads item metadata (the FAISS service holds vectors and ids); the API asks FAISS for
:func:`overfetch` candidates when a filter is set and says ``"partial": true`` when fewer
than ``k`` pass instead of padding with items that do not match.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Most filter parameters one request may carry (each value of a repeated name counts).
MAX_FILTERS = 16
#: Longest filter value.
MAX_VALUE_LEN = 200
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class BadFilter(ValueError):
    """A filter parameter that cannot be read (the API answers 400 with this text)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _number(value: object) -> float | None:
    """``value`` as a finite float if it is a number (bools are not), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _same(stored: object, wanted: str, wanted_num: float | None) -> bool:
    if isinstance(stored, str):
        return stored == wanted
    num = _number(stored)
    return num is not None and wanted_num is not None and num == wanted_num


@dataclass(frozen=True)
class AttributeFilter:
    """Equality/membership and numeric range conditions on item attributes (module doc).

    >>> f = parse_filters({"genre": ["Comedy", "Drama"], "year_min": "1990"}, set())
    >>> f.matches({"genres": ["Drama"], "year": 1995})
    True
    >>> f.matches({"genres": ["Horror"], "year": 1995})
    False
    >>> f.matches({"genres": ["Comedy"], "year": 1989})
    False
    >>> f.matches(None), AttributeFilter().matches(None)
    (False, True)
    """

    #: attribute name -> accepted values (any of them)
    equals: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: attribute name -> (lowest, highest), inclusive; ``-inf``/``inf`` when unbounded
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: ``equals`` with each value's number parsed once (``None``: not a number)
    _wanted: tuple[tuple[str, tuple[tuple[str, float | None], ...]], ...] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_wanted", tuple(
            (name, tuple((v, _parse_number(v)) for v in values))
            for name, values in self.equals.items()))

    def __bool__(self) -> bool:
        return bool(self.equals or self.ranges)

    @property
    def key(self) -> tuple[object, ...]:
        """A hashable identity of the conditions (what the API keeps pass rates by)."""
        return (tuple(sorted((n, tuple(sorted(v))) for n, v in self.equals.items())),
                tuple(sorted(self.ranges.items())))

    def matches(self, attrs: Mapping[str, object] | None) -> bool:
        """Whether an item with these attributes (its metadata; ``None``: unknown) passes
        every condition."""
        if not self:
            return True
        if attrs is None:
            return False
        for name, wanted in self._wanted:
            if not _holds_any(_lookup(attrs, name), wanted):
                return False
        for name, (lo, hi) in self.ranges.items():
            num = _number(attrs.get(name))
            if num is None or not lo <= num <= hi:
                return False
        return True

    def describe(self) -> dict[str, object]:
        """The conditions as the response echoes them (``filters``)."""
        out: dict[str, object] = {name: list(v) for name, v in self.equals.items()}
        for name, (lo, hi) in self.ranges.items():
            if lo > -math.inf:
                out[f"{name}_min"] = lo
            if hi < math.inf:
                out[f"{name}_max"] = hi
        return out


def _lookup(attrs: Mapping[str, object], name: str) -> object:
    """The attribute ``name``, or its plural list (``genre`` -> ``genres``)."""
    if name in attrs:
        return attrs[name]
    return attrs.get(f"{name}s")


def _holds_any(stored: object, wanted: tuple[tuple[str, float | None], ...]) -> bool:
    values = stored if isinstance(stored, list) else [stored]
    for w, w_num in wanted:
        if any(_same(v, w, w_num) for v in values):
            return True
    return False


def _parse_number(text: str) -> float | None:
    try:
        f = float(text)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def parse_filters(params: Mapping[str, str | list[str]],
                  reserved: Iterable[str]) -> AttributeFilter:
    """The filter a request's query parameters ask for (``reserved``: the endpoint's own
    parameters, never filters). Raises :class:`BadFilter` for a parameter it cannot read.

    >>> parse_filters({"k": "5", "year_min": "1990", "year_max": "1999"}, {"k"}).describe()
    {'year_min': 1990.0, 'year_max': 1999.0}
    >>> parse_filters({"year_min": "soon"}, set())
    Traceback (most recent call last):
    ...
    recommender_server.filters.BadFilter: year_min must be a finite number, got 'soon'
    """
    skip = set(reserved)
    equals: dict[str, tuple[str, ...]] = {}
    bounds: dict[str, list[float]] = {}
    count = 0
    for param, raw in params.items():
        if param in skip:
            continue
        values = raw if isinstance(raw, list) else [raw]
        count += len(values)
        if count > MAX_FILTERS:
            raise BadFilter(f"at most {MAX_FILTERS} filter parameters per request", param)
        if not _NAME.fullmatch(param):
            raise BadFilter("filter names are 1-64 characters of letters, digits, '_', "
                            f"'.' and '-', got {param[:64]!r}", param[:64])
        for v in values:
            if len(v) > MAX_VALUE_LEN:
                raise BadFilter(f"{param}: values are at most {MAX_VALUE_LEN} characters",
                                param)
        name, _, side = param.rpartition("_")
        if side in ("min", "max") and name:
            if len(values) != 1:
                raise BadFilter(f"{param} may be given once", param)
            num = _parse_number(values[0])
            if num is None:
                raise BadFilter(f"{param} must be a finite number, got {values[0]!r}", param)
            lo_hi = bounds.setdefault(name, [-math.inf, math.inf])
            lo_hi[0 if side == "min" else 1] = num
        else:
            equals[param] = tuple(dict.fromkeys(values))
    for name, (lo, hi) in bounds.items():
        if lo > hi:
            raise BadFilter(f"{name}_min ({lo:g}) is above {name}_max ({hi:g})", f"{name}_min")
    return AttributeFilter(equals, {n: (lo, hi) for n, (lo, hi) in bounds.items()})


def overfetch(k: int, slack: int, factor: float, cap: int) -> int:
    """Candidates to ask for when a filter is set: ``factor`` times the usual ``k +
    slack``, at most ``cap`` (and never fewer than the usual).

    >>> overfetch(10, 20, 10, 500), overfetch(100, 20, 10, 500), overfetch(10, 20, 1, 500)
    (300, 500, 30)
    """
    usual = k + slack
    return max(usual, min(cap, math.ceil(usual * factor)))


class PassRates:
    """The share of candidates each filter lets through, as recently observed (an
    exponential average per filter, at most ``max_filters`` remembered): how many to
    over-fetch. A filter half the catalogue passes needs ~2× the usual candidates, not
    the configured worst case; one never seen gets the worst case.

    >>> rates = PassRates(max_factor=10)
    >>> f = parse_filters({"genre": "Drama"}, set())
    >>> rates.factor(f)
    10.0
    >>> for _ in range(30):
    ...     rates.observe(f, kept=50, examined=100)
    >>> round(rates.factor(f), 2)
    4.0
    """

    def __init__(self, max_factor: float, margin: float = 2.0, weight: float = 0.2,
                 max_filters: int = 1024) -> None:
        self.max_factor = max_factor
        self.margin = margin  # candidates asked for / candidates expected to pass
        self.weight = weight
        self.max_filters = max_filters
        self._rates: dict[tuple[object, ...], float] = {}

    def factor(self, flt: AttributeFilter) -> float:
        """Over-fetch factor for ``flt``: ``margin / pass rate``, at most ``max_factor``."""
        rate = self._rates.get(flt.key)
        if not rate:
            return float(self.max_factor)
        return min(float(self.max_factor), max(1.0, self.margin / rate))

    def observe(self, flt: AttributeFilter, kept: int, examined: int) -> None:
        if examined <= 0:
            return
        key, seen = flt.key, kept / examined
        if key not in self._rates and len(self._rates) >= self.max_filters:
            self._rates.clear()  # bounded: a burst of one-off filters starts over
        old = self._rates.get(key)
        self._rates[key] = seen if old is None else old + self.weight * (seen - old)
