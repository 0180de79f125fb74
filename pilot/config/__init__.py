"""The configuration: ``pilot.yaml`` and one ``clusters/NAME.yaml`` per cluster.

Everything is a pydantic model with ``extra="forbid"`` and a description on every field. Loading collects
*all* problems of all files and raises one :class:`ConfigError`; each problem names the file, the field and
what to write instead::

    ~/.pilot/clusters/stampede.yaml: pilot.wallclock: unknown field; did you mean 'walltime'? ...

The documentation of every field is ``docs/configuration.md``.

The room, from the bottom up (each module imports only the ones above it):

* :mod:`~pilot.config.errors`: :class:`ConfigProblem`, :class:`ConfigError`, the validators' error helpers;
* :mod:`~pilot.config.units`: :class:`Scheduler`, wall times, memory amounts, names and their patterns;
* :mod:`~pilot.config.models_pilot`: ``pilot.yaml`` (:class:`PilotConfig`, :class:`BackoffConfig`);
* :mod:`~pilot.config.models_route`: ``launchpad_route:`` of a cluster file (:class:`LaunchPadRoute`,
  :class:`SshRoute`);
* :mod:`~pilot.config.checks_cluster`: checks of single cluster-file fields (host, SSH settings, known_hosts,
  timezone, fworker_query), called by the model's validators;
* :mod:`~pilot.config.models_cluster`: ``clusters/NAME.yaml`` (:class:`ClusterConfig` and its sections);
* :mod:`~pilot.config.messages`: the text of each problem, with "did you mean" suggestions;
* :mod:`~pilot.config.loading`: reading the YAML files, :func:`load_config` and friends, :class:`Config`.

This package only re-exports what the other rooms use.
"""

from __future__ import annotations

from pilot.config.errors import ConfigError, ConfigProblem
from pilot.config.loading import (
    CLUSTERS_DIR,
    PILOT_FILE,
    Config,
    current_user,
    load_cluster,
    load_config,
    load_pilot_config,
)
from pilot.config.models_cluster import ClusterConfig, Limits, PilotResources
from pilot.config.models_pilot import BackoffConfig, PilotConfig
from pilot.config.models_route import LaunchPadRoute, SshRoute
from pilot.config.units import (
    Scheduler,
    format_walltime,
    parse_memory_mb,
    parse_walltime,
    validate_job_name,
    validate_name,
)

__all__ = [
    "CLUSTERS_DIR", "PILOT_FILE", "BackoffConfig", "ClusterConfig", "Config", "ConfigError", "ConfigProblem",
    "LaunchPadRoute", "Limits", "PilotConfig", "PilotResources", "Scheduler", "SshRoute", "current_user",
    "format_walltime", "load_cluster", "load_config", "load_pilot_config", "parse_memory_mb", "parse_walltime",
    "validate_job_name", "validate_name",
]
