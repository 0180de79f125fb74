"""``fworker:`` of a cluster file: the FireWorks FWorker its pilots are, as ``rlaunch -w my_fworker.yaml`` reads it.

People who ran ``rlaunch -w my_fworker.yaml`` on a cluster keep what that file said there:

* ``name``: Fireworks pinned with ``spec._fworker: NAME`` go to this cluster's pilots (each pilot also keeps
  its own name, ``CLUSTER-JOBID``, which its launches record and pins work too);
* ``query``: a MongoDB filter ANDed into every pull (what ``fworker_query`` was; that field stays as a synonym);
* ``env``: the FWorker's ``env``, which FireWorks hands to every Firework as ``_fw_env``, so ``env_chk``
  substitutes ``>>scratch_dir<<`` with this cluster's value.

The values travel to the worker as JSON arguments on the job script's command line (quoted there), so they must
be JSON-clean, and the query must not hold ``$where`` (:func:`pilot.config.checks_cluster.check_fworker_query`).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pilot.config.checks_cluster import check_fworker_query
from pilot.config.errors import field_error
from pilot.config.units import one_line

__all__ = ["FWorkerSettings"]


class FWorkerSettings(BaseModel):
    """The FWorker of a cluster's pilots: the fields of FireWorks' ``my_fworker.yaml`` (less ``category``: a
    pilot pulls the category it was submitted for)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="FWorker name: Fireworks with spec._fworker equal to it are taken "
                             "by this cluster's pilots (and count as its demand); _preserve_fworker pins a "
                             "Firework's children to it. null: the cluster's name (its file's stem).",
                             examples=["stampede"])
    query: dict[str, Any] = Field(default_factory=dict, description="FWorker query: a MongoDB filter on the "
                                  "fireworks collection ANDed into every pull, as in my_fworker.yaml; only "
                                  "Fireworks it matches count as demand for this cluster.",
                                  examples=[{"spec.needs_gpu": {"$ne": True}}])
    env: dict[str, Any] = Field(default_factory=dict, description="FWorker env: values FireWorks gives every "
                                "Firework as _fw_env, read by env_chk (>>scratch_dir<< in a task's parameters).",
                                examples=[{"scratch_dir": "/scratch/alice"}])

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None:
            one_line(v, "name")
            if not v.strip():
                raise field_error("empty: write the FWorker name your Fireworks pin to (spec._fworker), or null")
        return v

    @field_validator("query")
    @classmethod
    def _query(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_fworker_query(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise field_error(f"not plain values ({e}): write strings, numbers, booleans, lists and mappings, "
                              "e.g. {scratch_dir: /scratch/alice}") from None
        return v
