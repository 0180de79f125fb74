"""The manager's notifier: once per cycle, detect -> record in the outbox -> send what is due, per channel.

:meth:`Notifier.cycle` never raises into the manager's cycle: whatever goes wrong is logged (with its traceback)
and the manager goes on. The channels are independent (e-mail down does not stop the webhook), and the time a
cycle spends sending is bounded: each send runs in a worker thread that the cycle stops waiting for after twice
its channel's timeout (a server that trickles its answer, a DNS lookup that hangs: the socket timeouts alone bound
neither) and never past :data:`SEND_BUDGET`; a channel whose connection failed is not tried again before the next
cycle, and a channel whose last send has not returned yet is skipped until it has. A message the server refuses
for good (:attr:`SendError.permanent`) is given up alone: the channel goes on with the next one.

FIZZLED Fireworks are found by their ``updated_on`` (FireWorks writes it when the state changes, as ISO text of a
UTC time; ``lpad pause``-like paths write a BSON date: both are asked for). The pilots that write it run on other
hosts whose clocks may differ, so each cycle looks back :data:`FIZZLE_LOOKBACK` seconds before the last one (the
outbox's keys keep what was seen once from being sent again). On the very first cycle the cursor starts now:
configuring notifications on an old LaunchPad tells nobody of its old fizzles (how many were skipped is logged).
A cycle reads at most :data:`MAX_FIZZLES`; after a full page the next cycle goes on from its last one.
The cursor is saved only once the events read are recorded: a cycle that fails in between reads them again.
"""

from __future__ import annotations

import datetime as dt
import logging
import shlex
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pilot.configdir import pilot_command
from pilot.isotime import epoch_seconds, iso_utc
from pilot.notify.detect import budget_events, cluster_events, fizzle_events, refusal_events
from pilot.notify.email import SendError, send_email
from pilot.notify.events import Event, Message, message
from pilot.notify.outbox import Outbox
from pilot.notify.webhook import send_webhook

if TYPE_CHECKING:
    from pilot.config import Config
    from pilot.config.models_notify import NotifyConfig

__all__ = ["FIZZLE_LOOKBACK", "MAX_FIZZLES", "Notifier", "Sender", "sample_message", "send_test", "send_within",
           "senders_of"]

log = logging.getLogger("pilot.notify")

#: Seconds before the last cycle that each cycle looks for FIZZLED Fireworks (clock differences of the hosts).
FIZZLE_LOOKBACK = 3600.0
#: At most this many FIZZLED Fireworks are read per cycle (the rest next cycle).
MAX_FIZZLES = 2000
#: How often sent events past their keeping time are pruned.
PRUNE_EVERY = 3600.0
#: Seconds one cycle may spend sending (past it, what is due waits for the next cycle): the manager's cycle is
#: never held up long by a slow mail server, whatever the number of messages due.
SEND_BUDGET = 60.0
#: A send is waited for at most this many times its channel's timeout (connect, TLS, login, data: each its own
#: socket timeout, and DNS none).
SEND_DEADLINE_FACTOR = 2.0
#: The timeout of a channel whose settings name none (senders given to :class:`Notifier` directly).
DEFAULT_TIMEOUT = 15.0

Sender = Callable[[Message], None]


def sample_message(config_dir: str) -> Message:
    """The message ``pilot notify test`` sends."""
    import socket

    host = socket.gethostname()
    return Message("[pilot] test message", f"A test message from fireworks-pilot on {host} (config {config_dir}).\n"
                   "If you read this, notifications reach you.\n", ("test",))


class Notifier:
    """Notifications of one config directory (``notify:`` in pilot.yaml), kept in ``db`` (the LaunchPad's)."""

    def __init__(self, config: Config, db: Any, senders: Mapping[str, Sender] | None = None) -> None:
        notify = config.pilot.notify
        if notify is None:
            raise ValueError("pilot.yaml has no notify: section")
        self.cfg: NotifyConfig = notify
        self.db = db
        self.clusters = sorted(config.clusters)
        self.config_dir = config.config_dir
        self.lp_file = config.pilot.launchpad_file
        self.outbox = Outbox(db)
        self._indexed = False
        self._ensure_indexes()   # a database that refuses: the manager starts anyway, and the next cycle tries again
        self.senders: dict[str, Sender] = dict(senders) if senders is not None else senders_of(notify)
        self.timeouts = {"email": notify.email.timeout if notify.email else DEFAULT_TIMEOUT,
                         "webhook": notify.webhook.timeout if notify.webhook else DEFAULT_TIMEOUT}
        #: per channel, the worker thread of a send the cycle stopped waiting for (still running)
        self._busy: dict[str, threading.Thread] = {}
        #: the FIZZLED cursor to save once this cycle's events are recorded (:meth:`_fizzles`)
        self._cursor: dict[str, Any] = {}
        self._pruned = 0.0

    def _ensure_indexes(self) -> None:
        from pymongo.errors import PyMongoError

        if self._indexed:
            return
        try:
            self.outbox.ensure_indexes()
            self._indexed = True
        except PyMongoError as e:   # no createIndex right, the database away: it works without them, slower
            log.warning("notify: cannot create the indexes of %s (%s: %s); tried again next cycle",
                        self.outbox.coll.name, type(e).__name__, str(e)[:200])

    def where(self, channel: str) -> str:
        """What a log line names of a channel: the SMTP server and recipients, or the webhook's scheme and host."""
        if channel == "email" and self.cfg.email is not None:
            return f"{self.cfg.email.where()} to {', '.join(self.cfg.email.to)}"
        if channel == "webhook" and self.cfg.webhook is not None:
            return self.cfg.webhook.where()
        return channel

    # ------------------------------------------------------------------ commands in messages
    def pilot_cmd(self, args: str) -> str:
        return pilot_command(self.config_dir, args)

    def lpad_cmd(self, args: str) -> str:
        return f"lpad -l {shlex.quote(str(self.lp_file))} {args}"

    # ------------------------------------------------------------------ the cycle
    def cycle(self, now: float | None = None, budget_states: Mapping[str, Iterable[Any]] | None = None) -> None:
        """Detect, record, send. Never raises: a failure is logged and the manager's cycle goes on."""
        now = time.time() if now is None else float(now)
        try:
            self._ensure_indexes()
            self._cursor = {}
            self.record(self.detect(now, budget_states), now)
            if self._cursor:   # only now: a failure before this point reads the same fizzles again next cycle
                self.outbox.set_state(**self._cursor)
        except Exception:   # the database, a bug: the manager must not stop for a notification
            log.exception("notify: finding events failed; trying again next cycle")
        try:
            self.flush(now)
            if now - self._pruned >= PRUNE_EVERY:
                self._pruned = now
                self.outbox.prune(now)
        except Exception:
            log.exception("notify: sending failed; trying again next cycle")

    def detect(self, now: float, budget_states: Mapping[str, Iterable[Any]] | None = None) -> list[Event]:
        """This cycle's events of the kinds ``notify.events`` names (known ones included: the outbox dedups)."""
        kinds = set(self.cfg.events)
        events: list[Event] = []
        if "fizzled" in kinds:
            events += self._fizzles(now)
        if kinds & {"unreachable", "recovered", "held", "login", "refusing"}:
            events += self._clusters(now)
        if "budget" in kinds and budget_states:
            states = [s for group in budget_states.values() for s in group]
            events += budget_events(states, self.cfg.budget_warn, now, self.pilot_cmd)
        return [e for e in events if e.kind in kinds]

    def record(self, events: list[Event], now: float) -> list[Event]:
        return self.outbox.record(events, list(self.senders), now)

    # ------------------------------------------------------------------ FIZZLED
    def _fizzles(self, now: float) -> list[Event]:
        state = self.outbox.state()
        since, cursor = state.get("fizzled_since"), state.get("fizzled_cursor")
        fws = self.db["fireworks"]
        if not isinstance(since, (int, float)):
            old = fws.count_documents({"state": "FIZZLED"})
            self.outbox.set_state(fizzled_since=now, fizzled_cursor=now)
            log.info("notify: first run: %d FIZZLED Firework(s) from before now are not notified; FIZZLED ones "
                     "from now on are", old)
            return []
        page = state.get("fizzled_page")
        if isinstance(page, (int, float)):   # the last cycle read a full page: go on from its last Firework
            lower = max(float(since), float(page))
        else:
            lower = max(float(since), float(cursor if isinstance(cursor, (int, float)) else since) - FIZZLE_LOOKBACK)
        when = dt.datetime.fromtimestamp(lower, dt.timezone.utc).replace(tzinfo=None)
        query = {"state": "FIZZLED", "$or": [{"updated_on": {"$gte": iso_utc(lower)}},
                                             {"updated_on": {"$gte": when}}]}
        docs = list(fws.find(query, {"fw_id": 1, "name": 1, "launches": 1, "spec._category": 1, "updated_on": 1})
                    .sort("updated_on", 1).limit(MAX_FIZZLES))
        last = epoch_seconds(docs[-1].get("updated_on")) if docs else None
        full = len(docs) >= MAX_FIZZLES and last is not None and last > lower
        self._cursor = {"fizzled_cursor": now, "fizzled_page": last if full else None}   # saved once recorded
        keys = {int(d["fw_id"]): f"fizzled:fw {int(d['fw_id'])}:launch {_last_launch(d)}" for d in docs}
        known = self.outbox.known(keys.values())
        docs = [d for d in docs if keys[int(d["fw_id"])] not in known]
        if not docs:
            return []
        ids = [lid for d in docs if (lid := _last_launch(d)) is not None]
        launches = {int(x["launch_id"]): x for x in self.db["launches"].find(
            {"launch_id": {"$in": ids}}, {"launch_id": 1, "fworker.name": 1, "host": 1, "launch_dir": 1,
                                         "action.stored_data._message": 1,
                                         "action.stored_data._exception._stacktrace": 1})} if ids else {}
        names = sorted({n for x in launches.values() if (n := (x.get("fworker") or {}).get("name"))})
        pilots = {str(p["fworker"]): str(p.get("cluster")) for p in self.db["pilots"].find(
            {"fworker": {"$in": names}}, {"fworker": 1, "cluster": 1})} if names else {}
        return fizzle_events(docs, launches, pilots, self.clusters, self.pilot_cmd, self.lpad_cmd, now)

    # ------------------------------------------------------------------ clusters
    def _clusters(self, now: float) -> list[Event]:
        records = list(self.db["pilot_clusters"].find({"_id": {"$in": self.clusters}}))
        recovered = "recovered" in self.cfg.events
        events = cluster_events(records, now, self.cfg.unreachable_after, self.outbox.open_outages(),
                                self.pilot_cmd, login_notice="login" in self.cfg.events, recovered_notice=recovered)
        events += refusal_events(records, now, self.cfg.unreachable_after, self.outbox.open_refusals(),
                                 self.pilot_cmd, recovered_notice=recovered)
        out = []
        for e in events:
            if e.kind == "recovered":   # recovered:CLUSTER:DOWN_SINCE, or accepting:CLUSTER:REFUSING_SINCE
                since = e.key.rsplit(":", 1)[1]
                told_as = ("refusing",) if e.key.startswith("accepting:") else ("unreachable", "login")
                notices = [f"{kind}:{e.where}:{since}" for kind in told_as]
                dropped = [key for key in notices if self.outbox.drop_unsent(key, now)]   # stale now
                if dropped and not self.outbox.told(notices):
                    log.info("notify: %s answers again before anyone was told it was down: no message", e.where)
                    continue
            out.append(e)
        return out

    # ------------------------------------------------------------------ sending
    def flush(self, now: float) -> int:
        """Send what is due on each channel (see :mod:`pilot.notify.outbox`); returns the messages sent."""
        sent = 0
        self.outbox.forget_channels(list(self.senders))
        end = time.monotonic() + SEND_BUDGET
        for channel, send in self.senders.items():
            busy = self._busy.get(channel)
            if busy is not None and busy.is_alive():
                log.warning("notify: %s (%s): its last send has not returned yet; this channel waits for the next "
                            "cycle", channel, self.where(channel))
                continue
            for group in self.outbox.due(channel, now, self.cfg.batch):
                left = end - time.monotonic()
                if left <= 0:
                    log.warning("notify: %s: this cycle's time for sending is spent; the rest goes next cycle", channel)
                    break
                msg = message(group)
                try:
                    self._send(channel, send, msg, min(self.timeouts.get(channel, DEFAULT_TIMEOUT)
                                                       * SEND_DEADLINE_FACTOR, left))
                except SendError as e:
                    if e.permanent:   # this message, for good: give it up, the next ones go on
                        self._refused(channel, msg, now, str(e))
                        continue
                    self._failed(channel, msg, now, str(e))
                    break   # this channel is down: the next cycle tries again; the other channels go on
                except Exception as e:  # noqa: BLE001 - a bug: its type and where, never its text (a secret?)
                    frames = "".join(traceback.format_tb(e.__traceback__))
                    log.error("notify: %s: unexpected %s while sending (its text is not shown: it may hold a "
                              "secret); at:\n%s", channel, type(e).__name__, frames)
                    self._failed(channel, msg, now, f"unexpected {type(e).__name__} (see the manager's log)")
                    continue
                self.outbox.sent(channel, list(msg.keys), now, msg.subject)
                sent += 1
                log.info("notify: %s (%s): sent %r (%d event(s))", channel, self.where(channel), msg.subject,
                         len(msg.keys))
        return sent

    def _send(self, channel: str, send: Sender, msg: Message, limit: float) -> None:
        """:func:`send_within`; a send still running is remembered: its channel is skipped until it returned."""
        worker = send_within(send, msg, limit, channel, self.where(channel))
        if worker is not None:
            self._busy[channel] = worker
            raise SendError(f"{channel} {self.where(channel)}: timed out after {limit:.3g} s (retried next cycle)")


    def _failed(self, channel: str, msg: Message, now: float, error: str) -> None:
        keys = list(msg.keys)
        gave_up = self.outbox.failed(channel, keys, now, error)
        log.warning("notify: %s (%s): sending %r failed: %s; %d event(s) stay pending, tried again next cycle",
                    channel, self.where(channel), msg.subject, error, len(keys) - len(gave_up))
        if gave_up:
            log.error("notify: %s: gave up on %d event(s) after a day of failures: %s", channel,
                      len(gave_up), ", ".join(gave_up[:20]))

    def _refused(self, channel: str, msg: Message, now: float, error: str) -> None:
        self.outbox.refused(channel, list(msg.keys), now, error)
        log.error("notify: %s (%s): %r was refused for good, not sent again: %s (%d event(s): %s)", channel,
                  self.where(channel), msg.subject, error, len(msg.keys), ", ".join(msg.keys[:20]))


def send_within(send: Sender, msg: Message, limit: float, channel: str, where: str) -> threading.Thread | None:
    """``send(msg)`` in a daemon worker thread, waited for ``limit`` seconds at most: None when it returned (its
    exception raised here), else the thread, still running (it ends at its own socket timeouts; the caller stops
    waiting). The socket timeouts alone do not bound a send: a server may trickle its answer, DNS has none."""
    box: list[BaseException] = []

    def run() -> None:
        try:
            send(msg)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            box.append(e)

    worker = threading.Thread(target=run, name=f"notify-{channel}", daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        log.debug("notify: %s (%s): still sending after %.3g s; not waited for", channel, where, limit)
        return worker
    if box:
        raise box[0]
    return None

def senders_of(cfg: NotifyConfig) -> dict[str, Sender]:
    """One sender per configured channel: ``email``, ``webhook``."""
    out: dict[str, Sender] = {}
    email, hook = cfg.email, cfg.webhook
    if email is not None:
        out["email"] = lambda m: send_email(email, m)
    if hook is not None:
        out["webhook"] = lambda m: send_webhook(hook, m)
    return out


def send_test(cfg: NotifyConfig, config_dir: str) -> dict[str, str | None]:
    """Send :func:`sample_message` through each channel now (not through the outbox): channel -> None (ok) or why
    it failed (``pilot notify test``)."""
    out: dict[str, str | None] = {}
    msg = sample_message(config_dir)
    timeouts = {"email": cfg.email.timeout if cfg.email else DEFAULT_TIMEOUT,
                "webhook": cfg.webhook.timeout if cfg.webhook else DEFAULT_TIMEOUT}
    for channel, send in senders_of(cfg).items():
        limit = timeouts[channel] * SEND_DEADLINE_FACTOR
        try:
            if send_within(send, msg, limit, channel, channel) is not None:
                raise SendError(f"{channel}: timed out after {limit:.3g} s")
            out[channel] = None
        except SendError as e:
            out[channel] = str(e)
        except Exception as e:  # noqa: BLE001 - a bug: its type only (its text may quote a secret)
            out[channel] = f"unexpected {type(e).__name__} (a bug: please report it)"
    return out


def _last_launch(fw: dict[str, Any]) -> int | None:
    ids = [x for x in (fw.get("launches") or []) if isinstance(x, int)]
    return ids[-1] if ids else None
