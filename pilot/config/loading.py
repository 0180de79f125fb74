"""Loading: read ``pilot.yaml`` and ``clusters/*.yaml``, validate them, and collect *every* problem of every
file into one :class:`~pilot.config.errors.ConfigError`, each with its file, field, line and fix.

YAML is read with a SafeLoader that keeps ``24:00:00`` as text (not YAML 1.1's base-60 integer) and keeps
the node tree, so problems can name their line and keys written twice are found.
"""

from __future__ import annotations

import difflib
import getpass
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pilot.config.errors import TYPE_WORDS, ConfigError, ConfigProblem, describe, format_loc, split_loc
from pilot.config.messages import error_message, model_at
from pilot.config.models_cluster import ClusterConfig
from pilot.config.models_pilot import PilotConfig, share_problems
from pilot.config.units import validate_name
from pilot.configdir import PILOT_FILE, pilot_command

__all__ = ["CLUSTERS_DIR", "PILOT_FILE", "Config", "current_user", "load_cluster", "load_config",
           "load_pilot_config"]


#: The folder of the cluster files (one NAME.yaml per cluster) in a config directory.
CLUSTERS_DIR = "clusters"


# ------------------------------------------------------------------------------------------ YAML
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers: ``walltime: 24:00:00`` stays the text "24:00:00"
    (PyYAML would read it as the integer 86400)."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in (_INT_TAG, _FLOAT_TAG)]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT_TAG, re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*"
                           r"(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _config_dir_of(path: Path) -> Path:
    """The config dir a file belongs to: ``D`` for ``D/pilot.yaml`` and ``D/clusters/NAME.yaml``."""
    return path.parent.parent if path.parent.name == CLUSTERS_DIR else path.parent


def _read_yaml(path: Path, shown: str) -> tuple[Any, yaml.Node | None, list[ConfigProblem]]:
    """Parse one YAML file; returns (data, node tree for line numbers, problems)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None, [ConfigProblem(shown, "(file)", "file not found; run "
                                          f"`{pilot_command(_config_dir_of(path), 'init')}` to write an "
                                          "example, or pass the right --config-dir")]
    except (OSError, UnicodeDecodeError) as e:
        return None, None, [ConfigProblem(shown, "(file)", f"cannot read the file ({e}); check its "
                                          "permissions and that it is UTF-8 text")]
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        what = " ".join(x for x in (e.context, e.problem) if x)
        hint = ("YAML does not allow tabs for indentation: use spaces" if "\\t" in what or "\t" in what
                else "check the indentation and quoting there (values with ': ' or '#' need quotes)")
        at = f"line {line}, column {col}: " if line else ""
        return None, None, [ConfigProblem(shown, "(syntax)", f"YAML syntax error at {at}{what}; {hint}")]
    except yaml.YAMLError as e:
        return None, None, [ConfigProblem(shown, "(syntax)", f"YAML error: {e}; fix the file's syntax")]
    finally:
        loader.dispose()
    return data, node, _duplicate_keys(node, shown)


def _duplicate_keys(node: yaml.Node | None, shown: str, path: str = "") -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            key = str(k.value)
            sub = f"{path}.{key}" if path else key
            if key in seen:
                out.append(ConfigProblem(shown, sub, f"written twice (first at line {seen[key]}); YAML keeps "
                                         "only the last one: remove one of them", k.start_mark.line + 1))
            seen.setdefault(key, k.start_mark.line + 1)
            out.extend(_duplicate_keys(v, shown, sub))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.extend(_duplicate_keys(v, shown, f"{path}[{i}]"))
    return out


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the value (or key) at ``loc`` in the node tree, as deep as it exists."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if str(k.value) == str(part):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


# ------------------------------------------------------------------------------------------ problems
def _problems_from(exc: ValidationError, model: type[BaseModel], shown: str,
                   node: yaml.Node | None) -> list[ConfigProblem]:
    """pydantic's errors as :class:`ConfigProblem` objects: field path, line and fix; duplicates dropped."""
    problems: list[ConfigProblem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        # a union type reports each branch; 'walltime' and 'memory' (str | int) are checked by validators
        ctx = err.get("ctx") or {}
        if err["type"] == "pilot_config" and ctx.get("problems"):
            for sub, msg in ctx["problems"]:
                full = loc + split_loc(sub)
                problems.append(ConfigProblem(shown, format_loc(full), msg, _line_of(node, full)))
            continue
        if err["type"] == "pilot_config" and ctx.get("subfield"):
            loc = loc + (ctx["subfield"],)
        name = str(loc[-1]) if loc else ""
        owner = model_at(model, loc) if loc else model
        problems.append(ConfigProblem(shown, format_loc(loc), error_message(err, owner, name, err.get("input")),
                                      _line_of(node, loc)))
    unique: dict[tuple[str, str], ConfigProblem] = {}
    for p in problems:
        unique.setdefault((p.field, p.message), p)
    return list(unique.values())


# ------------------------------------------------------------------------------------------ loading
def _shown(path: Path) -> str:
    return str(path)


def _validate_file(path: Path, model: type[BaseModel], base_dir: Path,
                   allow_empty: bool) -> tuple[BaseModel | None, list[ConfigProblem]]:
    shown = _shown(path)
    data, node, problems = _read_yaml(path, shown)
    if problems and data is None:
        return None, problems
    if data is None:
        if not allow_empty:
            init = pilot_command(_config_dir_of(path), "init")
            return None, problems + [ConfigProblem(shown, "(file)", "the file is empty; write the cluster "
                                                   f"settings (`{init}` writes a commented example)")]
        data = {}
    if not isinstance(data, dict):
        return None, problems + [ConfigProblem(shown, "(file)", f"expected a mapping of settings (key: value "
                                               f"lines), got {TYPE_WORDS.get(type(data), type(data).__name__)}; "
                                               "see docs/configuration.md for the layout")]
    bad_keys = [k for k in data if not isinstance(k, str)]
    for k in bad_keys:
        problems.append(ConfigProblem(shown, str(k), f"field names must be text, got {describe(k)}; "
                                      "see docs/configuration.md for the field names", _line_of(node, (k,))))
    if bad_keys:
        return None, problems
    try:
        obj = model.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        return None, problems + _problems_from(e, model, shown, node)
    return obj, problems


def load_pilot_config(path: Path | str) -> PilotConfig:
    """Load ``pilot.yaml`` (relative paths in it are relative to its folder).

    Raises
    ------
    ConfigError
        With every problem found.
    """
    path = Path(path)
    obj, problems = _validate_file(path, PilotConfig, path.parent, allow_empty=True)
    if problems or obj is None:
        raise ConfigError(problems)
    assert isinstance(obj, PilotConfig)
    return obj


def load_cluster(path: Path | str) -> ClusterConfig:
    """Load one cluster file; the cluster's name is the file's stem.

    Raises
    ------
    ConfigError
        With every problem found in the file (and a bad file name).
    """
    cluster, problems = _load_cluster(Path(path))
    if problems or cluster is None:
        raise ConfigError(problems)
    return cluster


def _load_cluster(path: Path) -> tuple[ClusterConfig | None, list[ConfigProblem]]:
    problems: list[ConfigProblem] = []
    try:
        validate_name(path.stem, "cluster name (the file name)")
    except ValueError as e:
        problems.append(ConfigProblem(_shown(path), "(file)", f"{e}; rename the file"))
    obj, more = _validate_file(path, ClusterConfig, path.parent, allow_empty=False)
    problems.extend(more)
    if obj is not None:
        assert isinstance(obj, ClusterConfig)
        obj._source = path
    return (obj if not problems else None), problems


@dataclass(frozen=True)
class Config:
    """The whole configuration of one config directory.

    Attributes
    ----------
    pilot : PilotConfig
        ``pilot.yaml``.
    clusters : dict[str, ClusterConfig]
        Cluster name (file stem) -> its settings, sorted by name.
    config_dir : Path
        The directory they came from.
    """

    pilot: PilotConfig
    clusters: dict[str, ClusterConfig]
    config_dir: Path
    problems: list[ConfigProblem] = field(default_factory=list, compare=False, repr=False)

    @property
    def categories(self) -> list[str]:
        """Every category some cluster serves, sorted."""
        return sorted({c for cl in self.clusters.values() for c in cl.categories})

    def cluster(self, name: str) -> ClusterConfig:
        """The cluster called ``name``.

        Raises
        ------
        KeyError
            Listing the known clusters.
        """
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(self.clusters) or "none"
            close = difflib.get_close_matches(name, list(self.clusters), n=1)
            did = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"no cluster {name!r}{did} in {self.config_dir / CLUSTERS_DIR}; "
                           f"known clusters: {known}") from None


def load_config(config_dir: Path | str) -> Config:
    """Load ``pilot.yaml`` and every ``clusters/*.yaml`` of ``config_dir``.

    Parameters
    ----------
    config_dir : Path | str
        The configuration directory ('~' is expanded).

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        Listing every problem in every file (all files are checked before raising).
    """
    config_dir = Path(os.path.expanduser(str(config_dir)))
    problems: list[ConfigProblem] = []
    if not config_dir.is_dir():
        raise ConfigError([ConfigProblem(str(config_dir), "(dir)", "configuration directory not found; run "
                                         f"`{pilot_command(config_dir, 'init')}` to create it, or pass "
                                         "--config-dir / set PILOT_CONFIG_DIR to an existing one")])
    pilot_path = config_dir / PILOT_FILE
    pilot_obj, more = _validate_file(pilot_path, PilotConfig, config_dir, allow_empty=True)
    problems.extend(more)

    clusters: dict[str, ClusterConfig] = {}
    cdir = config_dir / CLUSTERS_DIR
    files = sorted([*cdir.glob("*.yaml"), *cdir.glob("*.yml")]) if cdir.is_dir() else []
    if not files:
        problems.append(ConfigProblem(str(cdir), "(dir)", "no cluster files: add one clusters/NAME.yaml per "
                                      f"cluster (`{pilot_command(config_dir, 'init')}` writes "
                                      "clusters/example.yaml)"))
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            problems.append(ConfigProblem(_shown(path), "(file)", f"cluster {path.stem!r} is also defined in "
                                          f"{stems[path.stem].name}: keep one of the two files"))
            continue
        stems[path.stem] = path
        cluster, more = _load_cluster(path)
        problems.extend(more)
        if cluster is not None:
            clusters[path.stem] = cluster

    if isinstance(pilot_obj, PilotConfig) and not problems:   # fair share names served categories only
        served = sorted({c for cl in clusters.values() for p in cl.pilot_profiles for c in cl.profile_categories(p)})
        problems += [ConfigProblem(_shown(pilot_path), f, m) for f, m in share_problems(pilot_obj.share, served)]
    problems += [ConfigProblem(_shown(stems[n]), "control_path", m) for n, m in shared_control_paths(clusters)]
    if problems:
        raise ConfigError(problems)
    assert isinstance(pilot_obj, PilotConfig)
    return Config(pilot=pilot_obj, clusters=dict(sorted(clusters.items())), config_dir=config_dir)


def shared_control_paths(clusters: dict[str, ClusterConfig]) -> list[tuple[str, str]]:
    """(cluster, message) for each cluster whose ``control_path`` names the socket of another cluster's login:
    a command sent through a socket reaches whichever host its master logged in to, so two clusters on one
    socket would run each other's ``sbatch`` and ``squeue``. The same host, port and user may share one."""
    seen: dict[str, tuple[str, tuple[object, ...]]] = {}
    out = []
    for name, c in sorted(clusters.items()):
        if not c.control_path:
            continue
        who = (c.host, c.port, c.user)
        # the tokens that stand for the destination, filled in: what is left is the file both would use
        filled = "\0".join(map(str, who)).replace("\\", "\\\\")
        key = re.sub(r"(%[Chprn])", filled + r"\1", os.path.expanduser(c.control_path))
        if key in seen and seen[key][1] != who:
            out.append((name, f"{c.control_path!r} is also the control_path of cluster {seen[key][0]}, which logs "
                              "in elsewhere: commands would reach whichever host the socket's login went to. Give "
                              "each cluster its own (put %C in the name: ~/.ssh/pilot-%C)"))
        seen.setdefault(key, (name, who))
    return out


def current_user() -> str:
    """The local user name (what SSH uses when ``user`` is null and ~/.ssh/config says nothing)."""
    return getpass.getuser()
