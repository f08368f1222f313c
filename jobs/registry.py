"""Where the job finds generator families: the `synthaug.generators` entry-point group.

The built-in families are declared in this package's own `pyproject.toml` exactly as a
user's package declares its own:

    [project.entry-points."synthaug.generators"]
    my_family = "my_package.family:MyFamily"

`register` adds a class at run time (tests, notebooks). Ray workers are other processes:
the job hands them `family_ref(cls)` ("module:QualName") and they `resolve` it, so a
registered class must live in an importable module.
"""

from __future__ import annotations

import importlib
from importlib import metadata

from augment.generators.family import Family, check_family

GROUP = "synthaug.generators"

_registered: dict[str, type[Family]] = {}
_from_entry_points: dict[str, type[Family]] | None = None


def _load_entry_points() -> dict[str, type[Family]]:
    global _from_entry_points
    if _from_entry_points is None:
        found: dict[str, type[Family]] = {}
        for point in metadata.entry_points(group=GROUP):
            try:
                family = point.load()
            except (ImportError, AttributeError) as error:
                raise ValueError(f"entry point {GROUP}:{point.name} = {point.value!r} does not load: {error}") from None
            check_family(family)
            if family.name != point.name:
                raise ValueError(f"entry point {GROUP}:{point.name} names a family called {family.name!r}; "
                                 "the entry point's name must be the family's name")
            found[point.name] = family
        _from_entry_points = found
    return _from_entry_points


def register(family: type[Family]) -> type[Family]:
    """Add `family` (usable as a class decorator); its name must not be taken by another class."""
    check_family(family)
    existing = families().get(family.name)
    if existing is not None and existing is not family:
        raise ValueError(f"a family named {family.name!r} is registered already ({family_ref(existing)})")
    _registered[family.name] = family
    return family


def unregister(name: str) -> None:
    """Forget a family added by `register` (tests clean up with it)."""
    _registered.pop(name, None)


def families() -> dict[str, type[Family]]:
    """Every family by name: entry points, then registered ones."""
    return {**_load_entry_points(), **_registered}


def get_family(kind: str) -> type[Family]:
    """The family called `kind`; an unknown one is a ValueError that lists the known ones."""
    known = families()
    if kind not in known:
        raise ValueError(f"unknown generator kind {kind!r}; registered: {', '.join(sorted(known)) or 'none'}")
    return known[kind]


def family_ref(family: type[Family]) -> str:
    return f"{family.__module__}:{family.__qualname__}"


def resolve(ref: str) -> type[Family]:
    """The class behind `family_ref` (in a Ray worker)."""
    module, _, qualname = ref.partition(":")
    target: object = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    check_family(target)  # type: ignore[arg-type]
    return target  # type: ignore[return-value]
