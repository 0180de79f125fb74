"""FireWorks' worker model in a pilot: the FWorker every pull uses, and the FWorker file ``rlaunch -w`` reads.

A pilot has two names. Its own (``--name``, cluster name + job id) is the FWorker name FireWorks records in every
launch (``launches.fworker.name``): the manager finds the launches of a dead pilot by it, so it stays the name.
The configured FWorker name (the cluster file's ``fworker.name``, ``--fworker-name`` or the ``name`` of a
``-w`` FWorker file) is what users pin Fireworks to with ``spec._fworker``, as they do for ``rlaunch -w
my_fworker.yaml``. FireWorks' own :class:`~fireworks.core.fworker.FWorker` answers to one name only, so
:class:`PilotFWorker` answers to both and keeps FireWorks' rule otherwise. Its ``env`` reaches the tasks as FireWorks
puts it there: the Rocket copies ``fworker.env`` into the spec as ``_fw_env``, where ``env_chk``-style lookups
(``>>scratch_dir<<``) find it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fireworks.core.fworker import FWorker
from fireworks.utilities.fw_serializers import recursive_deserialize

#: What a FireWorks FWorker file holds, as ``rlaunch -w`` reads it (``FWorker.from_file``); for the error messages.
FWORKER_FILE_FORMAT = ("a FireWorks FWorker file (my_fworker.yaml or .json, as `rlaunch -w` reads it) with the keys "
                       "name, category (a string or a list; '' for any), query (a JSON string, e.g. '{}') and env "
                       "(a mapping)")


class PilotFWorker(FWorker):
    """FireWorks' FWorker, taking Fireworks pinned (``spec._fworker``) to its ``name`` or to its ``alias``.

    ``name`` is the pilot's own name (recorded in the launches), ``alias`` the configured FWorker name (None:
    none, or the same as ``name``). Everything else is FireWorks' query: a Firework without ``spec._fworker``
    or with null matches, the category clause as FireWorks builds it (``'__none__'``: no ``spec._category``; a
    list: any of them), and a top-level ``$or`` of the query moved into ``$and`` beside the ``_fworker`` check.
    One difference: FireWorks extends a given ``$and`` list in place at every read of ``query``; here it is
    copied, so reading the query twice gives the same query.
    """

    def __init__(self, name: str = "Automatically generated Worker", category: str | list[str] = "",
                 query: dict[str, Any] | None = None, env: dict[str, Any] | None = None,
                 alias: str | None = None) -> None:
        super().__init__(name=name, category=category, query=query, env=env)
        self.alias = alias if alias and alias != name else None

    @property
    def names(self) -> list[str]:
        """The names a pinned Firework may carry to be taken here: the pilot's own, then the configured one."""
        return [self.name] if self.alias is None else [self.name, self.alias]

    @property
    def query(self) -> dict[str, Any]:
        """FireWorks' ``FWorker.query`` (fireworks/core/fworker.py), with both names in the ``_fworker`` check."""
        q = dict(self._query)
        fworker_check: list[dict[str, Any]] = [{"spec._fworker": {"$exists": False}}, {"spec._fworker": None}]
        fworker_check += [{"spec._fworker": name} for name in self.names]
        if "$or" in q:
            q["$and"] = [*q.get("$and", []), {"$or": q.pop("$or")}, {"$or": fworker_check}]
        else:
            q["$or"] = fworker_check
        if self.category and isinstance(self.category, str):
            if self.category == "__none__":
                q["spec._category"] = {"$exists": False}
            else:
                q["spec._category"] = self.category
        elif self.category:  # a list of categories
            q["spec._category"] = {"$in": self.category}
        return q

    # to_dict is FireWorks' own: it is what every launch records, and FireWorks rewrites launches through its plain
    # FWorker.from_dict anyway (a key of ours would vanish at the first ping). A Firework child rebuilds a plain
    # FWorker from it: name and env (the Rocket's spec._fw_env) are all the child uses; the worker answers the
    # child's checkout with this object's query.

    def __getstate__(self) -> dict[str, Any]:
        """Pickled as FireWorks pickles an FWorker (its dict), with ``alias``."""
        return {**self.to_dict(), "alias": self.alias}

    @classmethod
    @recursive_deserialize
    def from_dict(cls, m_dict: dict[str, Any]) -> PilotFWorker:
        """FireWorks' ``FWorker.from_dict``, giving a PilotFWorker (with ``alias`` when the dict has one: the
        pickled state, which FireWorks' ``__setstate__`` reads through this)."""
        return cls(m_dict["name"], m_dict["category"], json.loads(m_dict["query"]), m_dict.get("env"),
                   alias=m_dict.get("alias"))


class FWorkerFileError(ValueError):
    """A FWorker file (``-w``) that cannot be used; the message names the file and what to fix."""


@dataclass(frozen=True)
class FWorkerFile:
    """What a FireWorks FWorker file says (``FWorker.from_file``, as ``rlaunch -w`` reads it)."""

    path: Path
    name: str | None
    #: the categories to pull: empty for FireWorks' '' (any category)
    categories: tuple[str, ...]
    query: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)


def read_fworker_file(path: Path) -> FWorkerFile:
    """Read ``path`` with FireWorks' own ``FWorker.from_file`` (YAML or JSON by its extension, as ``rlaunch -w``
    does), so that a file works here exactly when it works there; raise :class:`FWorkerFileError` otherwise."""
    from fireworks.utilities.exceptions import FWError, FWFormatError
    from ruamel.yaml.error import YAMLError

    where = f"FWorker file {path}"
    try:
        fw = FWorker.from_file(str(path))
    except FileNotFoundError:
        raise FWorkerFileError(f"{where}: no such file; pass the path of {FWORKER_FILE_FORMAT}") from None
    except OSError as exc:
        raise FWorkerFileError(f"{where}: cannot be read ({exc.strerror or exc}); check the path and its "
                               "permissions") from None
    except KeyError as exc:
        raise FWorkerFileError(f"{where}: the key {exc} is missing; FireWorks needs {FWORKER_FILE_FORMAT}") from None
    except (TypeError, json.JSONDecodeError) as exc:
        raise FWorkerFileError(f"{where}: its query is not a JSON string ({exc}); write it as FireWorks does, "
                               "e.g. query: '{\"spec.site\": \"here\"}' ('{}' for none)") from None
    except FWFormatError:
        raise FWorkerFileError(f"{where}: FireWorks reads an FWorker file by its extension, .yaml or .json; rename "
                               "it (e.g. my_fworker.yaml)") from None
    except (FWError, YAMLError, ValueError) as exc:
        raise FWorkerFileError(f"{where}: cannot be parsed ({type(exc).__name__}: {exc}); it must be "
                               f"{FWORKER_FILE_FORMAT}") from None
    return _checked(path, fw)


def _checked(path: Path, fw: FWorker) -> FWorkerFile:
    """The file's values, refused where they are not of the types FireWorks works with."""
    where = f"FWorker file {path}"
    name, category, query, env = fw.name, fw.category, fw._query, fw.env
    if name is not None and not isinstance(name, str):
        raise FWorkerFileError(f"{where}: name must be a string, got {name!r}; quote it")
    if category is None or category == "":
        categories: tuple[str, ...] = ()
    elif isinstance(category, str):
        categories = (category,)
    elif isinstance(category, list) and all(isinstance(c, str) and c for c in category):
        categories = tuple(category)
    else:
        raise FWorkerFileError(f"{where}: category must be a string or a list of strings, got {category!r}")
    if not isinstance(query, dict):
        raise FWorkerFileError(f"{where}: query must be a JSON object in a string, e.g. '{{}}', got {query!r}")
    if not isinstance(env, dict):
        raise FWorkerFileError(f"{where}: env must be a mapping (key: value), got {env!r}")
    return FWorkerFile(path=path, name=name or None, categories=categories, query=dict(query), env=dict(env))


__all__ = ["FWORKER_FILE_FORMAT", "FWorkerFile", "FWorkerFileError", "PilotFWorker", "read_fworker_file"]
