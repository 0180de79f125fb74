"""Problems in the configuration and how they are told: :class:`ConfigProblem` (file, field, what to write
instead), :class:`ConfigError` (all problems of a load), and the pydantic errors the models' validators raise.

The validators raise :func:`field_error` / :func:`field_errors` rather than ``ValueError`` so that the text
reaches the user exactly as written (pydantic would prefix ``Value error, ``); loading turns them into
:class:`ConfigProblem` objects (``pilot.config.loading``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError

__all__ = ["TYPE_WORDS", "ConfigError", "ConfigProblem", "describe", "field_error", "field_errors", "format_loc",
           "split_loc"]


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration.

    Attributes
    ----------
    file : str
        The file (or directory) the problem is in.
    field : str
        The dotted path of the field (``pilot.walltime``, ``categories[1]``), or ``(file)`` for the file.
    message : str
        What is wrong and what to write instead.
    line : int | None
        1-based line in ``file`` when known.
    """

    file: str
    field: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.file}: {self.field}: {self.message}{where}"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for ``pilot config check --json``)."""
        return {"file": self.file, "field": self.field, "message": self.message, "line": self.line,
                "text": str(self)}


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists every one of them.

    Parameters
    ----------
    problems : list[ConfigProblem]
        All problems found (at least one).
    """

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: list[ConfigProblem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"{n} configuration problem{'s' if n != 1 else ''}:"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def field_error(message: str, **ctx: Any) -> PydanticCustomError:
    """A validation error whose text is ``message`` exactly (pydantic would prefix 'Value error, ')."""
    return PydanticCustomError("pilot_config", "{message}", {"message": message, **ctx})


def field_errors(problems: list[tuple[str, str]]) -> PydanticCustomError:
    """Several problems found by one validator: ``(sub-field, message)`` pairs, expanded on reporting."""
    return PydanticCustomError("pilot_config", "{message}",
                               {"message": "; ".join(m for _, m in problems), "problems": problems})


#: How a value's type is named in messages (a user writes YAML, not Python).
TYPE_WORDS = {str: "text", int: "a whole number", float: "a number", bool: "true or false",
              list: "a list", dict: "a mapping (key: value lines)", type(None): "nothing (null)"}


def describe(value: Any) -> str:
    """``value`` as shown in a message: its repr (cut at 60 characters) and its type in words."""
    words = TYPE_WORDS.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({words})"


def format_loc(loc: Iterable[Any]) -> str:
    """A pydantic error location as the dotted field path users see: ``pilot.walltime``, ``categories[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(file)"


def split_loc(sub: str) -> tuple[Any, ...]:
    """The inverse of :func:`format_loc`: ``extra_directives[0]`` -> ``("extra_directives", 0)``."""
    out: list[Any] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", sub):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(out)
