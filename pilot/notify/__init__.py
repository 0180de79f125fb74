"""Notifications: a person hears when something needs one (docs/notifications.md).

The room, from the bottom up: :mod:`~pilot.notify.events` (an event and the message one or several make, pure),
:mod:`~pilot.notify.detect` (documents -> events, pure), :mod:`~pilot.notify.outbox` (dedup and digests in the
LaunchPad's ``pilot_notifications``), :mod:`~pilot.notify.email` and :mod:`~pilot.notify.webhook` (the channels),
:mod:`~pilot.notify.notifier` (once per manager cycle: detect -> outbox -> send).

Imports the config, the leaves and nothing of the manager: the manager calls it.
"""
