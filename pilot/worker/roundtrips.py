"""The worker's LaunchPad, with fewer database round trips than FireWorks' own for the same documents.

For a no-op Firework FireWorks' Rocket costs about 32 database commands (issue 18: checkout 16, complete 12,
two pings of 2 each), and in the worker every one of them is a round trip on the critical path between two
Fireworks (profiled: 1 ms each against the embedded server, 90 % of a no-op Firework's time). Half of them read
back what the same call has just read or written. :class:`LeanLaunchPad` overrides the LaunchPad methods the
Rocket's calls go through so that they write the same documents with fewer commands:

* the reservation (``_get_a_fw_to_run``) builds the Firework from the document ``find_one_and_update`` returns
  instead of reading it again (FireWorks: 3 more reads; the launches are read only when there are any);
* the workflow lock's ``find_one_and_update`` returns the workflow document: it is not read again (1 read), the
  Firework being refreshed is read whole at once (FireWorks reads its state first, then the rest: 1 read; in
  a checkout not at all: it is the Firework the checkout has just written, 2 more reads), and
  the workflow's replacement releases the lock (FireWorks replaces it with ``locked: true``, reads it back
  first, then unsets the lock: 2 commands) -- per refresh, and each Firework has two (checkout, completion);
* the next checkout's launch id is taken while the previous Firework runs (:meth:`LeanLaunchPad.prefetch_launch_id`,
  called by the worker once a checkout is answered), not between two Fireworks;
* a checkout with a new launch id does not look for other Fireworks holding that id (nothing can hold an id
  handed out a moment ago, unless a duplicate finder steals launches: then it looks as FireWorks does);
* a ping updates the launch from the worker's copy of it (written at the checkout, kept current by the pings
  the worker writes) instead of reading it first, and a ping without checkpoint data that comes less than
  :data:`PING_COALESCE_S` after the last one written for that launch is not written (FireWorks' ping thread
  pings once more right after the last task, before the completion; ``updated_on`` then differs by
  milliseconds);
* the worker holds a child's pings until its next call (at most ``pilot.worker.calls.PING_HOLD_S``): pings
  that come together are one write (:meth:`LeanLaunchPad.ping_launches`), and when the next call is the
  completion they are applied to the launch it reads and reach the database with its write (a no-op Firework:
  the checkpoint ping before its task and the ping thread's last ping cost no command of their own).

What is written, and under which lock, is what FireWorks writes; the differences are the reads, the lock's
last step, and that sub-second ping. A worker with ``PILOT_WORKER_FIREWORKS_CALLS=1`` in its environment uses
FireWorks' methods unchanged (for comparison, and as a way back).
"""

from __future__ import annotations

import copy
import datetime
import time
import traceback
from typing import Any

from fireworks.core import launchpad as lpmod
from fireworks.core.firework import Firework, Launch, Tracker, Workflow
from fireworks.fw_config import SORT_FWS
from fireworks.utilities.exceptions import FWValueError
from pymongo import ASCENDING, DESCENDING

#: a ping without checkpoint data within this many seconds of the last ping written for its launch is not
#: written again (FireWorks pings every PING_TIME_SECS, 3600 s by default, and once more at the end)
PING_COALESCE_S = 1.0


#: FireWorks versions whose LaunchPad methods these overrides were written from and tested against
#: (tests/worker/test_roundtrips.py compares every document with FireWorks' own): another version may read or
#: write differently, so the worker then uses FireWorks' methods unchanged
TESTED_FIREWORKS = ("2.1.4",)


def lean_calls_fit() -> bool:
    """Whether the installed FireWorks is one :class:`LeanLaunchPad` was tested with (else: FireWorks' own calls,
    said once in the worker's log)."""
    import fireworks

    version = str(getattr(fireworks, "__version__", ""))
    if version in TESTED_FIREWORKS:
        return True
    from pilot.worker.logs import LOG

    LOG.info(
        "FireWorks %s: the worker uses FireWorks' own LaunchPad calls (its fewer-round-trip calls are tested "
        "with FireWorks %s)", version or "(unknown version)", ", ".join(TESTED_FIREWORKS))
    return False


class LeanLaunchPad(lpmod.LaunchPad):
    """FireWorks' LaunchPad with the round trips above cut; see the module docstring."""

    #: the child whose call the worker is serving (the worker's hooks record the checkout on it)
    _pilot_child: Any = None

    def _pilot_launches(self) -> dict[int, tuple[float, dict[str, Any]]]:
        """launch id -> (monotonic time of the last ping written, the launch document as last written)."""
        cache = self.__dict__.get("_pilot_launch_cache")
        if cache is None:
            cache = self.__dict__["_pilot_launch_cache"] = {}
        return cache

    def forget_launch(self, launch_id: int | None) -> None:
        """Drop the worker's copy of a launch (it is final, or someone else may have changed it)."""
        if launch_id is not None:
            self._pilot_launches().pop(launch_id, None)

    # ------------------------------------------------------------------ checkout
    def _get_a_fw_to_run(self, query: Any = None, fw_id: Any = None, checkout: bool = True) -> Any:
        if not checkout:
            return super()._get_a_fw_to_run(query=query, fw_id=fw_id, checkout=checkout)
        m_query = dict(query) if query else {}
        m_query["state"] = "READY"
        sortby = [("spec._priority", DESCENDING)]
        if SORT_FWS.upper() == "FIFO":
            sortby.append(("created_on", ASCENDING))
        elif SORT_FWS.upper() == "FILO":
            sortby.append(("created_on", DESCENDING))
        if fw_id:
            m_query = {"fw_id": fw_id, "state": {"$in": ["READY", "RESERVED"]}}
        while True:
            now = datetime.datetime.now(datetime.timezone.utc)
            doc = self.fireworks.find_one_and_update(m_query, {"$set": {"state": "RESERVED", "updated_on": now}},
                                                     sort=sortby)
            if not doc:
                return None
            if self._pilot_child is not None:
                self._pilot_child.reserved_fw = doc["fw_id"]  # before anything else can fail
            fw_dict = self._fw_dict_of_reserved(doc, now)
            try:
                m_fw = Firework.from_dict(fw_dict)
            except Exception:  # noqa: BLE001 - FireWorks' own handling of an undeserialisable Firework
                self._fizzle_undeserialisable(doc["fw_id"])
                continue
            if self._check_fw_for_uniqueness(m_fw):
                return m_fw

    def _fw_dict_of_reserved(self, doc: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
        """What ``get_fw_dict_by_id`` would read right after the reservation, from the reservation's own
        answer (the document before its update): state RESERVED, ``updated_on`` as stored, launch documents."""
        fw_dict = dict(doc)
        fw_dict["state"] = "RESERVED"
        fw_dict["updated_on"] = now.replace(microsecond=now.microsecond // 1000 * 1000, tzinfo=None)
        wanted = {key: list(doc.get(key) or []) for key in ("launches", "archived_launches")}
        ids = sorted({i for v in wanted.values() for i in v})
        found: dict[Any, dict[str, Any]] = {}
        if ids:
            for launch in self.launches.find({"launch_id": {"$in": ids}}):
                launch["action"] = lpmod.get_action_from_gridfs(launch.get("action"), self.gridfs_fallback)
                found[launch["launch_id"]] = launch
        for key, lids in wanted.items():
            fw_dict[key] = [copy.deepcopy(found[i]) for i in sorted(set(lids)) if i in found]
        return fw_dict

    def get_new_launch_id(self) -> Any:
        """The launch id taken ahead of time (:meth:`prefetch_launch_id`), else a new one as FireWorks does."""
        ahead = self.__dict__.pop("_pilot_next_launch_id", None)
        return ahead if ahead is not None else super().get_new_launch_id()

    def prefetch_launch_id(self) -> None:
        """Take the next checkout's launch id now, while a Firework runs (off the path between two Fireworks).
        An id taken ahead and never used (the worker stops) is a gap in the launch ids, as FireWorks leaves
        one for every reservation it gives up."""
        if "_pilot_next_launch_id" not in self.__dict__:
            self.__dict__["_pilot_next_launch_id"] = super().get_new_launch_id()

    def _fizzle_undeserialisable(self, fw_id: int) -> None:
        """FireWorks' ``_get_a_fw_to_run`` on a Firework that cannot be deserialised: FIZZLED, with details."""
        self.m_logger.warning(f"Failed to deserialize FireWork with fw_id={fw_id}; marking as FIZZLED and "
                              "continuing.")
        try:
            now = datetime.datetime.now(datetime.timezone.utc)
            self.fireworks.find_one_and_update({"fw_id": fw_id}, {"$set": {
                "state": "FIZZLED", "updated_on": now,
                "spec._exception_details": {"_message": "FireWork failed to deserialize",
                                            "_stacktrace": traceback.format_exc()}}})
            self._refresh_wf(fw_id)
        except Exception:  # noqa: BLE001 - as FireWorks: go on with the next Firework
            self.m_logger.debug(f"Error while refreshing workflow after fizzling fw_id={fw_id} due to "
                                f"deserialization failure.\n{traceback.format_exc()}")

    def checkout_fw(self, fworker: Any, launch_dir: Any, fw_id: Any = None, host: Any = None, ip: Any = None,
                    state: str = "RUNNING") -> Any:
        """FireWorks' ``checkout_fw``; the launch it writes is kept for the pings (:meth:`ping_launch`)."""
        m_fw = self._get_a_fw_to_run(fworker.query, fw_id=fw_id)
        if not m_fw:
            return None, None
        prev_reservations = [launch for launch in m_fw.launches if launch.state == "RESERVED"]
        reserved_launch = None if not prev_reservations else prev_reservations[0]
        state_history = reserved_launch.state_history if reserved_launch else None
        launch_id = reserved_launch.launch_id if reserved_launch else self.get_new_launch_id()
        trackers = [Tracker.from_dict(f) for f in m_fw.spec["_trackers"]] if "_trackers" in m_fw.spec else None
        m_launch = Launch(state, launch_dir, fworker, host, ip, trackers=trackers, state_history=state_history,
                          launch_id=launch_id, fw_id=m_fw.fw_id)
        launch_doc = m_launch.to_db_dict()
        self.launches.replace_one({"launch_id": m_launch.launch_id}, launch_doc, upsert=True)
        if not reserved_launch:
            m_fw.launches.append(m_launch)
        else:
            m_fw.launches = [m_launch if launch.launch_id == m_launch.launch_id else launch
                             for launch in m_fw.launches]
        m_fw.state = state
        self._upsert_fws([m_fw])
        self._refresh_wf(m_fw.fw_id, known=copy.deepcopy(m_fw))
        if state == "RUNNING" and (reserved_launch or "_dupefinder" in m_fw.spec):
            # update any duplicated runs (only a reused launch id, or launches stolen by a duplicate finder)
            for fw in self.fireworks.find(
                    {"launches": launch_id, "state": {"$in": ["WAITING", "READY", "RESERVED", "FIZZLED"]}},
                    {"fw_id": 1}):
                dup = self.get_fw_by_id(fw["fw_id"])
                dup.state = state
                self._upsert_fws([dup])
                self._refresh_wf(dup.fw_id)
        self.backup_launch_data[m_launch.launch_id] = launch_doc
        self.backup_fw_data[fw_id] = m_fw.to_db_dict()
        if state == "RUNNING":
            self._pilot_launches().clear()  # the worker runs one Firework at a time: the others are over
            self._pilot_launches()[launch_id] = (time.monotonic(), copy.deepcopy(launch_doc))
        return m_fw, launch_id

    def _upsert_fws(self, fws: list[Any], reassign_all: bool = False) -> dict[int, int]:
        """FireWorks' ``_upsert_fws``, with ``replace_one`` where FireWorks sends ``find_one_and_replace`` and
        throws the answer (the whole old document) away."""
        if reassign_all or any(fw.fw_id < 0 for fw in fws):
            return super()._upsert_fws(fws, reassign_all=reassign_all)
        fws.sort(key=lambda x: x.fw_id)
        for fw in fws:
            self.fireworks.replace_one({"fw_id": fw.fw_id}, fw.to_db_dict(), upsert=True)
        return {}

    # ------------------------------------------------------------------ pings
    #: pings the worker held back for the completion it is serving: applied to the launch that completion
    #: reads (:meth:`get_launch_by_id`), so they reach the database with its write (set by the worker)
    pings_for_completion: list[tuple[Any, Any]] | None = None

    def ping_launch(self, launch_id: int, ptime: Any = None, checkpoint: Any = None) -> None:
        """FireWorks' ``ping_launch`` on the worker's copy of the launch (see the module docstring)."""
        self.ping_launches(launch_id, [(ptime, checkpoint)])

    def ping_launches(self, launch_id: int, pings: list[tuple[Any, Any]]) -> None:
        """Several pings (ptime, checkpoint) of one launch in one write: what FireWorks' ``ping_launch`` one
        after the other leaves (each touches the last state-history entry; a later ping without checkpoint
        keeps the earlier one's)."""
        cached = self._pilot_launches().get(launch_id)
        if cached is None:
            for ptime, checkpoint in pings:
                super().ping_launch(launch_id, ptime=ptime, checkpoint=checkpoint)
            return
        last, doc = cached
        now = time.monotonic()
        if all(p is None and c is None for p, c in pings) and now - last < PING_COALESCE_S:
            return
        m_launch = Launch.from_dict(copy.deepcopy(doc))
        self._apply_pings(m_launch, pings)
        new = m_launch.to_db_dict()
        trackers = [t.to_dict() for t in m_launch.trackers]
        self.launches.update_one({"launch_id": launch_id, "state": "RUNNING"},
                                 {"$set": {"state_history": new["state_history"], "trackers": trackers}})
        self._pilot_launches()[launch_id] = (now, dict(doc, state_history=new["state_history"], trackers=trackers))

    @staticmethod
    def _apply_pings(m_launch: Any, pings: list[tuple[Any, Any]]) -> None:
        for ptime, checkpoint in pings:
            for tracker in m_launch.trackers:
                tracker.track_file(m_launch.launch_dir)
            m_launch.touch_history(ptime, checkpoint=checkpoint)

    def get_launch_by_id(self, launch_id: int) -> Any:
        """FireWorks' ``get_launch_by_id``; in a completion with held pings (:attr:`pings_for_completion`), the
        launch as those pings would have left it (they only ever change a RUNNING launch)."""
        m_launch = super().get_launch_by_id(launch_id)
        if self.pings_for_completion and m_launch.state == "RUNNING":
            self._apply_pings(m_launch, self.pings_for_completion)
        return m_launch

    def change_launch_dir(self, launch_id: int, launch_dir: Any) -> None:
        self.forget_launch(launch_id)
        super().change_launch_dir(launch_id, launch_dir)

    def complete_launch(self, launch_id: int, action: Any = None, state: str = "COMPLETED") -> Any:
        self.forget_launch(launch_id)
        return super().complete_launch(launch_id, action, state)

    def restore_backup_data(self, launch_id: int, fw_id: int) -> None:
        self.forget_launch(launch_id)
        super().restore_backup_data(launch_id, fw_id)

    # ------------------------------------------------------------------ the workflow refresh
    def _lock_wf(self, fw_id: int) -> dict[str, Any]:
        """Take the workflow lock of ``fw_id`` and return the workflow document (as it was when locked).

        The first try is FireWorks' own lock command, whose answer is the document; when the workflow is locked
        already, FireWorks' ``WFLock`` (the worker's recording one) waits as it always does, and the document is
        read once the lock is held."""
        links = self.workflows.find_one_and_update({"nodes": fw_id, "locked": {"$exists": False}},
                                                   {"$set": {"locked": True}})
        if links is not None:
            return links
        lpmod.WFLock(self, fw_id).__enter__()  # raises LockedWorkflowError when it expires
        links = self.workflows.find_one({"nodes": fw_id})
        if links is None:
            self._unlock_wf(fw_id)
            raise ValueError(f"Could not find a Workflow with {fw_id=}")
        return links

    def _unlock_wf(self, fw_id: int) -> None:
        self.workflows.find_one_and_update({"nodes": fw_id}, {"$unset": {"locked": True}})

    def _refresh_wf(self, fw_id: int, known: Any = None) -> None:
        """FireWorks' ``_refresh_wf`` (same lock, same reads of the Fireworks it needs, same writes), on the
        workflow document the lock returned, releasing the lock with the workflow's replacement.

        ``known``: the Firework ``fw_id`` as this LaunchPad has just written it (the checkout), used instead of
        reading it back (FireWorks' own checkout overwrites the Firework it reserved the same way, whatever
        changed in between)."""
        try:
            links = self._lock_wf(fw_id)
            try:
                wf = self._wf_of(links)
                lazy = wf.id_fw[fw_id]
                if known is not None and isinstance(lazy, lpmod.LazyFirework) and known.fw_id == fw_id:
                    wf.id_fw[fw_id] = known
                elif isinstance(lazy, lpmod.LazyFirework):
                    lazy.partial_fw  # noqa: B018 - one read for its state, spec and launch ids
                updated_ids = wf.refresh(fw_id)
                self._update_wf_and_unlock(wf, updated_ids)
            except BaseException:
                self._unlock_wf(fw_id)
                raise
        except lpmod.LockedWorkflowError:
            self.m_logger.info(f"{fw_id=} locked. Can't refresh!")
        except Exception as exc:  # noqa: BLE001 - FireWorks' own handling, word for word
            self.fireworks.find_one_and_update({"fw_id": fw_id}, {"$set": {"state": "FIZZLED"}})
            self.workflows.find_one_and_update({"nodes": fw_id}, {"$set": {"state": "FIZZLED"}})
            self.workflows.find_one_and_update({"nodes": fw_id}, {"$set": {f"fw_states.{fw_id}": "FIZZLED"}})
            raise RuntimeError(f"Error refreshing workflow. The full stack trace is: {traceback.format_exc()}"
                               ) from exc

    def _wf_of(self, links: dict[str, Any]) -> Workflow:
        """``get_wf_by_fw_id_lzyfw`` on a workflow document already read."""
        fws = [lpmod.LazyFirework(i, self.fireworks, self.launches, self.gridfs_fallback) for i in links["nodes"]]
        fw_states = {int(k): v for k, v in links["fw_states"].items()} if "fw_states" in links else None
        return Workflow(fws, links["links"], links["name"], links["metadata"], links["created_on"],
                        links["updated_on"], fw_states)

    def _update_wf_and_unlock(self, wf: Workflow, updated_ids: Any) -> None:
        """FireWorks' ``_update_wf`` whose replacement of the workflow document also releases its lock."""
        old_new = self._upsert_fws([wf.id_fw[fid] for fid in updated_ids])
        wf._reassign_ids(old_new)
        query_node = next((f for f in wf.id_fw if f not in old_new.values() or old_new.get(f) == f), None)
        if query_node is None:
            raise FWValueError("no Firework of the workflow kept its id")
        doc = wf.to_db_dict()
        doc.pop("locked", None)
        if self.workflows.replace_one({"nodes": query_node}, doc).matched_count == 0:
            raise FWValueError(f"BAD QUERY_NODE! {query_node}")
