"""``pilot.yaml``: the settings of the manager itself (one file per config directory)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pilot.config.errors import field_error, field_errors
from pilot.config.models_notify import NotifyConfig
from pilot.config.units import PREFIX_RE, base_dir_of, expand_path

__all__ = ["BackoffConfig", "PilotConfig", "share_problems", "share_text"]


class BackoffConfig(BaseModel):
    """How long the manager leaves a failing cluster alone (doubling from ``initial`` up to ``max``)."""

    model_config = ConfigDict(extra="forbid")

    initial: float = Field(60.0, gt=0, description="Seconds to wait after the first failure talking to a "
                           "cluster (SSH or scheduler command) before trying it again.", examples=[60])
    max: float = Field(1800.0, gt=0, description="Upper bound of the wait in seconds; the wait doubles after "
                       "every further failure until it reaches this.", examples=[1800])
    factor: float = Field(2.0, ge=1.0, description="Multiplier applied to the wait after every further "
                          "failure (1 = constant wait).", examples=[2])

    @model_validator(mode="after")
    def _order(self) -> BackoffConfig:
        if self.initial > self.max:
            raise field_error(f"initial ({self.initial:g} s) is larger than max ({self.max:g} s): "
                              f"write max: {self.initial:g} or more, or a smaller initial", subfield="max")
        return self


class PilotConfig(BaseModel):
    """``pilot.yaml``: settings of the manager itself (one per config directory)."""

    model_config = ConfigDict(extra="forbid")

    launchpad_file: Path = Field(Path("my_launchpad.yaml"), validate_default=True,
                                 description="Where the commands of this config directory find the FireWorks "
                                 "LaunchPad file. '~' is expanded; a relative path is relative to the config "
                                 "directory (the default is the file `pilot launchpad init` writes there).",
                                 examples=["my_launchpad.yaml"])
    poll_interval: float = Field(60.0, ge=1, description="Seconds between two manager cycles "
                                 "(gather -> decide -> act).", examples=[60])
    log_dir: Path = Field(Path("logs"), validate_default=True,
                          description="Directory for the manager's log files. '~' is expanded; a relative "
                          "path is relative to the config directory (so two config directories never share "
                          "a manager.log).", examples=["logs"])
    backoff: BackoffConfig = Field(default_factory=lambda: BackoffConfig.model_validate({}),
                                   description="Retry delays for a cluster whose commands fail.")
    max_reruns: int = Field(3, ge=0, description="How many times a Firework whose pilot died under it "
                            "(lost run) is put back to READY before it is left FIZZLED.", examples=[3])
    failed_starts_before_hold: int = Field(3, ge=1, description="How many pilots of one cluster in a row may "
                                           "end before running any Firework (the job failed to start the "
                                           "worker, exited non-zero, or was killed at once) before the manager "
                                           "holds the cluster back. While held, one probe pilot is tried after "
                                           "a delay (twice poll_interval, doubling after each failed probe, at "
                                           "most failed_start_hold_max); the hold ends when a pilot of the "
                                           "cluster runs a Firework or exits normally, or when its cluster file "
                                           "changes.", examples=[3])
    failed_start_hold_max: float = Field(3600.0, gt=0, description="Upper bound, in seconds, of the wait "
                                         "between two probe pilots of a held cluster (see "
                                         "failed_starts_before_hold).", examples=[3600])
    job_name_prefix: str = Field("fwp", description="First part of every pilot job name "
                                 "(PREFIX.CATEGORY.ID): how the manager recognises its own jobs in the queue. "
                                 "A letter, then up to 7 letters or digits.", examples=["fwp"])

    share: dict[str, float] = Field(default_factory=dict, description="Fair share between categories: category "
                                    "-> weight (a positive number); a category not listed weighs 1. When "
                                    "categories compete for a cluster's room (max_queued, max_running), the "
                                    "next pilot goes to the category whose live cores over its weight are "
                                    "lowest, so pilots and core-hours follow the weights over time "
                                    "(docs/campaign.md, \"Fair share between categories\").",
                                    examples=[{"md": 3, "analysis": 1}])

    share_window: float = Field(86400.0, ge=0, description="Seconds of history fair share counts: a "
                                "category's pilots that ended within this time count toward what it had, with "
                                "its live ones (0: live pilots only).", examples=[86400])

    notify: NotifyConfig | None = Field(None, description="Messages to a person (e-mail, chat webhook) when a "
                                        "Firework FIZZLED, a cluster stays unreachable, a budget is nearly spent, "
                                        "a login lapsed (docs/notifications.md); null: none.")

    @field_validator("share", mode="before")
    @classmethod
    def _share(cls, v: Any) -> Any:
        """Each weight a positive, finite number, told with the value as written (before pydantic's coercion)."""
        if not isinstance(v, dict):
            return v   # pydantic says a mapping is expected
        bad = []
        for cat, w in v.items():
            if not isinstance(cat, str):
                bad.append((str(cat), f"{cat!r} is not a category name: write a category the clusters serve as "
                            f"text (quote it, '{cat}': {w}, if that is its name)"))
                continue
            number = isinstance(w, (int, float)) and not isinstance(w, bool)
            if not (number and math.isfinite(w) and w > 0):
                bad.append((str(cat), f"{w!r} is not a usable weight: write a positive number (e.g. {cat}: 1; a "
                            f"larger weight gets a larger share), or remove {cat} to give it weight 1"))
        if bad:
            raise field_errors(bad)
        return v

    @field_validator("launchpad_file", "log_dir")
    @classmethod
    def _paths(cls, v: Path, info: ValidationInfo) -> Path:
        return expand_path(v, base_dir_of(info))

    @field_validator("job_name_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not PREFIX_RE.match(v):
            raise field_error(f"{v!r} is not a usable job-name prefix: write a letter followed by up to 7 letters "
                              "or digits (no '.', '-' or '_'), e.g. fwp")
        return v


def share_problems(share: dict[str, float], served: list[str]) -> list[tuple[str, str]]:
    """``share`` entries naming a category no cluster serves, as ``(field, fix)``: a typo there would silently
    give the real category weight 1 (checked once all cluster files are loaded)."""
    import difflib

    out = []
    for cat in share:
        if cat in served:
            continue
        close = difflib.get_close_matches(cat, served, n=1)
        did = f" (did you mean {close[0]!r}?)" if close else ""
        out.append((f"share.{cat}", f"no cluster serves category {cat!r}{did}; the clusters serve: "
                    f"{', '.join(served) or 'none'}: write one of them, or add {cat} to a cluster's categories"))
    return out


def share_text(share: dict[str, float], served: list[str]) -> str:
    """The weights in words, for ``pilot config check``: ``md 3, analysis 1 (others 1)``."""
    named = [f"{cat} {share[cat]:g}" for cat in share]
    others = [c for c in served if c not in share]
    return ", ".join(named) + (" (others 1)" if others else "") if named else "all 1"
