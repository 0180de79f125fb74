"""Embedded LaunchPad server: the MongoDB wire protocol over mongomock, journaled to disk."""
