"""When a READY Firework fits a pilot: the rule, written once, in both the languages that evaluate it.

A pilot with ``usable`` seconds (the time it has left minus its margin) takes a Firework when

* it gives no duration: ``spec._pilot.walltime`` missing or null ("fits anything");
* its ``spec._pilot.walltime`` is a number at most ``usable``; or
* its ``spec._pilot.min_walltime`` is a number at most ``usable``: it sizes itself to the time it gets (an MD
  segment with ``-maxh``), so it fits once its minimum does.

Three parts of the pilot ask this and must agree: the worker's pull (:mod:`pilot.worker.supervisor`,
``Worker.fworker``: the database answers :func:`fits_clause`), the manager's demand (:mod:`pilot.manager.demand`:
the database for a cluster with its own ``fworker_query``, :func:`fits` over the groups of one aggregation
otherwise) and ``pilot status`` (work too long for every pilot, :func:`not_fits_clause`). Were they to differ,
the manager would submit pilots for work no pilot takes (they idle out, cycle after cycle: issue 16), or no
pilot for work a pilot would take. So the query and the predicate stand here side by side, and a test holds
the predicate to what the database answers for the same documents (tests/test_fit.py).

The predicate follows the database, not intuition: ``$lte`` compares numbers with numbers only (int, long,
double, decimal), so a boolean or a string duration is no number, and being no null either it does not fit; NaN
is never ``$lte`` anything; an array matches when one of its elements does (MongoDB looks one level into
arrays: ``{"f": null}`` matches an array holding null, ``$lte`` an array holding a small enough number).

Standard library only, no ``pilot`` import: the worker, which must start cheaply on a compute node and may import
nothing heavy of ``pilot``, uses it too (tests/project/test_layout.py).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

#: the Firework's expected duration in seconds (missing or null: "fits anything")
WALLTIME = "spec._pilot.walltime"
#: the least time a Firework that sizes itself to the time it gets can use, in seconds
MIN_WALLTIME = "spec._pilot.min_walltime"
#: CPU cores a Firework asks for (missing or null: 1)
CORES = "spec._pilot.cores"
#: GPUs a Firework asks for (missing or null: 0)
GPUS = "spec._pilot.gpus"
#: memory a Firework asks for, in MiB (missing or null: any)
MEMORY = "spec._pilot.memory"


def fits_clause(usable: float) -> dict[str, Any]:
    """The MongoDB filter for "fits a pilot with ``usable`` seconds": a new dict at every call (FireWorks'
    ``FWorker.query`` moves a top-level ``$or`` into a ``$and`` list it extends in place).

    ``{WALLTIME: None}`` matches a missing field and an explicit null alike."""
    return {"$or": [{WALLTIME: None}, {WALLTIME: {"$lte": usable}}, {MIN_WALLTIME: {"$lte": usable}}]}


def not_fits_clause(usable: float) -> dict[str, Any]:
    """The MongoDB filter for "does not fit a pilot with ``usable`` seconds": exactly the documents
    :func:`fits_clause` leaves out (work for which a pilot of that size is sent in vain)."""
    return {"$nor": [fits_clause(usable)]}


def number(value: Any) -> float | None:
    """A duration as the database compares it: a float for an int, float or decimal (bson's ``Decimal128``
    too, read through its ``to_decimal()``, so this module needs no bson), None for anything else: null, a
    boolean or a string (``$lte`` compares numbers only) and NaN (never ``$lte`` anything)."""
    to_decimal = getattr(value, "to_decimal", None)
    if callable(to_decimal):
        value = to_decimal()
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    if isinstance(value, Decimal) and value.is_nan():
        return None  # float() of a signalling NaN raises
    out = float(value)
    return None if math.isnan(out) else out


def elements(value: Any) -> list[Any]:
    """What a query on a field compares: its value, or each element of an array (one level, as MongoDB)."""
    return list(value) if isinstance(value, list) else [value]


def fits(walltime: Any, min_walltime: Any, usable: float) -> bool:
    """Does a Firework with these ``spec._pilot`` values (None: missing or null) fit a pilot with ``usable``
    seconds? The same answer as :func:`fits_clause` from the database, for the same values."""
    if walltime is None or (isinstance(walltime, list) and any(v is None for v in walltime)):
        return True
    for value in (*elements(walltime), *elements(min_walltime)):
        secs = number(value)
        if secs is not None and secs <= usable:
            return True
    return False


# ---------------------------------------------------------------------------------------------- resources
# A pilot (or one of its free slots) with ``cores`` cores, ``gpus`` GPUs and ``memory`` MiB takes a Firework
# whose ``spec._pilot.cores`` / ``gpus`` / ``memory`` is missing, null, or a number at most that. Missing cores
# count as 1 and missing GPUs as 0, so a pilot without GPUs takes none that asks for one. A pilot *with* GPUs
# takes, when ``gpu_work_only`` (a GPU profile's pilots: their GPUs are the point), only Fireworks asking for
# at least one: a GPU allocation spent on CPU work is the waste the queue profiles exist to avoid.


def resources_clause(cores: float, gpus: float, memory: float | None = None,
                     gpu_work_only: bool = False) -> dict[str, Any]:
    """The MongoDB filter for "a Firework whose resource asks fit ``cores``/``gpus``/``memory``" (a new dict
    at every call). ``memory`` None: the pilot states none, so no memory ask is refused."""
    clauses: list[dict[str, Any]] = [{"$or": [{CORES: None}, {CORES: {"$lte": cores}}]}]
    if gpu_work_only and gpus >= 1:
        clauses.append({GPUS: {"$gte": 1}})
        clauses.append({GPUS: {"$lte": gpus}})
    else:
        clauses.append({"$or": [{GPUS: None}, {GPUS: {"$lte": gpus}}]})
    if memory is not None:
        clauses.append({"$or": [{MEMORY: None}, {MEMORY: {"$lte": memory}}]})
    return {"$and": clauses}


def _at_most(value: Any, limit: float) -> bool:
    """``{f: null}`` or ``{f: {"$lte": limit}}``, as the database answers it (one level into arrays)."""
    if value is None or (isinstance(value, list) and any(v is None for v in value)):
        return True
    return any((secs := number(v)) is not None and secs <= limit for v in elements(value))


def _at_least(value: Any, least: float) -> bool:
    """``{f: {"$gte": least}}`` as the database answers it (null and missing never match)."""
    return any((n := number(v)) is not None and n >= least for v in elements(value))


def fits_resources(asks: tuple[Any, Any, Any], cores: float, gpus: float, memory: float | None = None,
                   gpu_work_only: bool = False) -> bool:
    """Do a Firework's ``(cores, gpus, memory)`` asks (None: missing or null) fit? The answer of
    :func:`resources_clause` from the database, for the same values."""
    want_cores, want_gpus, want_memory = asks
    if not _at_most(want_cores, cores):
        return False
    if gpu_work_only and gpus >= 1:
        if not (_at_least(want_gpus, 1) and _at_most_number(want_gpus, gpus)):
            return False
    elif not _at_most(want_gpus, gpus):
        return False
    return memory is None or _at_most(want_memory, memory)


def _at_most_number(value: Any, limit: float) -> bool:
    """``{f: {"$lte": limit}}`` alone (null does not match)."""
    return any((n := number(v)) is not None and n <= limit for v in elements(value))


def asked(value: Any, default: int) -> int:
    """How many of a resource a Firework holds while it runs: its number rounded up, ``default`` when it gives
    none (missing, null, no number). What the worker reserves and the manager counts slots with."""
    n = None if isinstance(value, list) else number(value)
    return default if n is None or n < 0 else int(math.ceil(n)) if math.isfinite(n) else default


__all__ = ["CORES", "GPUS", "MEMORY", "MIN_WALLTIME", "WALLTIME", "asked", "elements", "fits", "fits_clause",
           "fits_resources", "not_fits_clause", "number", "resources_clause"]
