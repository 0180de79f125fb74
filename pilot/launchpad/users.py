"""Users, roles and who may run what: authentication and authorization of the embedded LaunchPad server.

Why it exists: the server listens where clusters reach it, so anyone who can open a TCP connection to it
could otherwise read every Firework, insert one with a ``ScriptTask`` that the owner's pilots then run as
the owner, or drop the database. So every connection authenticates first (SCRAM-SHA-256,
:mod:`pilot.launchpad.scram`), and every command is checked against the user's roles before it touches
anything.

Everything here follows MongoDB, so that drivers, ``mongosh`` and ``pilot launchpad user`` work the same
against a real MongoDB:

* users are documents of ``admin.system.users`` in MongoDB's shape (``_id: "DB.USER"``, ``user``, ``db``,
  ``credentials: {"SCRAM-SHA-256": {iterationCount, salt, storedKey, serverKey}}``, ``roles``): ordinary
  journaled documents, so they survive restarts and a changed password applies to the next login at once;
* they are managed with ``createUser``, ``updateUser``, ``dropUser`` and ``usersInfo`` (same arguments);
* the roles are MongoDB's built-in ones that a LaunchPad needs: ``root`` (everything, users, server
  statistics), ``readWrite``/``read`` on one database, ``readWriteAnyDatabase``/``readAnyDatabase``, and
  ``dbOwner`` on one database (MongoDB's readWrite + dbAdmin + userAdmin there: scripts and FireWorks' own
  tests create LaunchPad users with it). On this server ``dbOwner`` reads and writes its database like
  ``readWrite`` (which already covers the indexes and dropDatabase that dbAdmin adds) but does not manage users:
  that stays ``root``'s, so no user can hand itself more than it was given. The ``admin`` database and every
  ``system.*`` collection are ``root``'s alone;
* the errors are MongoDB's: code 13 ``Unauthorized`` ("command find requires authentication" before
  logging in, "not authorized on DB to execute command ..." after), 18 ``AuthenticationFailed``.

Authentication belongs to a connection (MongoDB's rule): a connection that closes or sends ``logout`` forgets
it. An authenticated connection keeps its identity when the password changes (as in MongoDB); its roles are
re-read whenever ``admin.system.users`` changed, so a removed user's open connections lose every privilege at
their next command.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import bson

from pilot.launchpad.commands import Command, CommandBase, CommandError, Reply, Sequences, error_reply
from pilot.launchpad.rwlock import RWLock
from pilot.launchpad.scram import MECHANISM, ScramError, ScramKeys, ScramServer, derive_keys

log = logging.getLogger(__name__)

USERS_DB = "admin"
USERS_COLL = "system.users"
#: The built-in roles the server knows (MongoDB's names), and the databases they may be granted on.
ROOT, READ_WRITE, READ, DB_OWNER = "root", "readWrite", "read", "dbOwner"
READ_WRITE_ANY, READ_ANY = "readWriteAnyDatabase", "readAnyDatabase"
ROLES = (ROOT, READ_WRITE, READ, DB_OWNER, READ_WRITE_ANY, READ_ANY)
#: Roles on one (non-admin) database.
_DB_ROLES = frozenset({READ_WRITE, READ, DB_OWNER})
_ADMIN_ONLY_ROLES = frozenset({ROOT, READ_WRITE_ANY, READ_ANY})
#: Databases only ``root`` may touch (MongoDB's readWrite*/read* roles do not reach them either).
_PRIVILEGED_DBS = frozenset({"admin", "local", "config"})

#: Commands anyone may send before authenticating: the handshake and the login itself.
PUBLIC = frozenset({"hello", "ismaster", "ping", "buildinfo", "saslstart", "saslcontinue", "logout",
                    "connectionstatus", "endsessions", "authenticate"})
#: Commands any authenticated user may send (what they show is the user's own, or is checked in the command).
ANY_USER = frozenset({"whatsmyuri", "getlasterror", "getfreemonitoringstatus", "listdatabases", "killcursors",
                      "usersinfo"})
READS = frozenset({"find", "count", "distinct", "aggregate", "listindexes", "listcollections", "dbstats",
                   "collstats", "getmore"})
WRITES = frozenset({"insert", "update", "delete", "findandmodify", "create", "drop", "dropdatabase",
                    "createindexes", "dropindexes", "deleteindexes", "renamecollection"})
#: Everything else the server implements is ``root``'s: server statistics, logs, options, user management.
ROOT_ONLY = frozenset({"pilotstats", "serverstatus", "getlog", "hostinfo", "getcmdlineopts", "getparameter",
                       "createuser", "updateuser", "dropuser"})


@dataclass(frozen=True)
class Principal:
    """An authenticated user and the roles it holds now (``{(role, db)}``)."""

    user: str
    db: str
    roles: frozenset[tuple[str, str]] = frozenset()

    @property
    def key(self) -> str:
        """``DB.USER``: the ``_id`` of its document, and what its cursors are bound to."""
        return f"{self.db}.{self.user}"

    @property
    def is_root(self) -> bool:
        return (ROOT, USERS_DB) in self.roles

    def can_read(self, db: str) -> bool:
        if self.is_root:
            return True
        if db in _PRIVILEGED_DBS:
            return False
        r = self.roles
        return bool({(READ, db), (READ_WRITE, db), (DB_OWNER, db), (READ_ANY, USERS_DB), (READ_WRITE_ANY, USERS_DB)}
                    & r)

    def can_write(self, db: str) -> bool:
        if self.is_root:
            return True
        return db not in _PRIVILEGED_DBS and bool({(READ_WRITE, db), (DB_OWNER, db), (READ_WRITE_ANY, USERS_DB)}
                                                  & self.roles)

    def role_docs(self) -> list[dict[str, str]]:
        return [{"role": r, "db": d} for r, d in sorted(self.roles)]


def _roles_of(doc: dict[str, Any]) -> frozenset[tuple[str, str]]:
    out = set()
    for r in doc.get("roles") or []:
        if isinstance(r, dict) and isinstance(r.get("role"), str) and isinstance(r.get("db"), str):
            out.add((r["role"], r["db"]))
    return frozenset(out)


def parse_roles(value: Any, default_db: str) -> list[dict[str, str]]:
    """createUser/updateUser ``roles``: ``"readWrite"`` (on the command's database) or ``{role, db}``.

    Raises CommandError 31 (RoleNotFound) for a role the server does not have, 2 for a role on a database it
    cannot be granted on (``read``/``readWrite``/``dbOwner`` on ``admin``: the admin database is ``root``'s).
    """
    if not isinstance(value, list):
        raise CommandError("\"roles\" must be an array of roles (a role name or {role: NAME, db: DB})", 14)
    out: list[dict[str, str]] = []
    for item in value:
        if isinstance(item, str):
            role, db = item, default_db
        elif isinstance(item, dict) and isinstance(item.get("role"), str) and isinstance(item.get("db"), str):
            role, db = item["role"], item["db"]
        else:
            raise CommandError(f"a role must be a role name or {{role: NAME, db: DB}}, not {item!r}", 14)
        if role not in ROLES or (role in _ADMIN_ONLY_ROLES and db != USERS_DB):
            raise CommandError(f"Could not find role: {role}@{db} (the embedded LaunchPad server has "
                               f"{', '.join(ROLES)}; root and the *AnyDatabase roles live in admin)", 31)
        if role in _DB_ROLES and db in _PRIVILEGED_DBS:
            raise CommandError(f"role {role}@{db}: the {db} database is root's alone on the embedded LaunchPad "
                               "server; grant root, or read/readWrite on the LaunchPad's database", 2)
        if {"role": role, "db": db} not in out:
            out.append({"role": role, "db": db})
    return out


def user_doc(user: str, db: str, keys: ScramKeys, roles: list[dict[str, str]],
             user_id: Any = None) -> dict[str, Any]:
    """A user as MongoDB stores it in ``admin.system.users``: salted keys, never the password."""
    return {"_id": f"{db}.{user}", "userId": user_id or bson.Binary(uuid.uuid4().bytes, 4), "user": user, "db": db,
            "credentials": {MECHANISM: keys.to_doc()}, "roles": roles}


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    """What ``usersInfo`` shows of a user: everything but the credentials (they are secrets too)."""
    out: dict[str, Any] = {k: doc[k] for k in ("_id", "userId", "user", "db", "roles", "customData") if k in doc}
    out["mechanisms"] = sorted(doc.get("credentials") or {})
    return out


def _namespaces(lname: str, name: str, db: str, cmd: Command) -> list[tuple[str, str | None]]:
    """``(db, collection or None)`` a read or write command works on."""
    target = cmd.get(name)
    if lname == "renamecollection":
        out = []
        for ns in (target, cmd.get("to")):
            d, _, c = str(ns or "").partition(".")
            out.append((d, c or None))
        return out
    if lname == "getmore":
        target = cmd.get("collection")
    if lname in ("listcollections", "dbstats", "dropdatabase") or not isinstance(target, str):
        return [(db, None)]
    return [(db, target)]


def _denied(name: str, db: str, cmd: Command) -> Reply:
    target = cmd.get(name)
    shown = f'"{target}"' if isinstance(target, str) else str(target)[:40]
    return error_reply(f"not authorized on {db} to execute command {{ {name}: {shown}, $db: \"{db}\" }}", 13)


def authorize(principal: Principal | None, lname: str, name: str, db: str, cmd: Command) -> Reply | None:
    """The Unauthorized reply for a command this connection may not run now; None when it may.

    Commands the server does not know pass (their dispatch answers CommandNotFound without touching data).
    """
    if lname in PUBLIC:
        return None
    known = lname in ANY_USER or lname in READS or lname in WRITES or lname in ROOT_ONLY
    if principal is None:
        return error_reply(f"command {name} requires authentication", 13) if known else None
    if principal.is_root or not known or lname in ANY_USER:
        return None
    if lname in ROOT_ONLY:
        return _denied(name, db, cmd)
    check = principal.can_write if lname in WRITES else principal.can_read
    for ndb, coll in _namespaces(lname, name, db, cmd):
        if not check(ndb) or (coll is not None and coll.startswith("system.")):
            return _denied(name, ndb, cmd)
    return None


@dataclass
class ConnAuth:
    """One connection's authentication: who it is (if anyone), and a login in progress."""

    peer: str = ""
    principal: Principal | None = None
    version: int = -1  # users_version when ``principal``'s roles were read
    conversation: ScramServer | None = None
    conversation_db: str = ""
    skip_empty: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class AuthCommands(CommandBase):
    """saslStart/saslContinue/logout, user management, and each connection's authenticated user.

    The login commands run without the backend's command lock (a driver's handshake never waits behind a
    long command); they take it only for the moment they read a user's keys.
    """

    lock: RWLock  # the backend's (pilot.launchpad.rwlock): used here as the exclusive side

    def __init__(self) -> None:
        super().__init__()
        self._auth_conns: dict[int, ConnAuth] = {}
        self._auth_conns_lock = threading.Lock()
        #: Bumped whenever admin.system.users changes: authenticated connections re-read their roles.
        self.users_version = 0

    # ------------------------------------------------------------------------- per-connection state
    def conn_auth(self, conn: int, peer: str = "") -> ConnAuth:
        state = self._auth_conns.get(conn)
        if state is None:
            with self._auth_conns_lock:
                state = self._auth_conns.setdefault(conn, ConnAuth(peer))
        return state

    def forget_connection(self, conn: int) -> None:
        """The connection closed: its login goes with it."""
        with self._auth_conns_lock:
            self._auth_conns.pop(conn, None)

    def principal(self, conn: int) -> Principal | None:
        """Who ``conn`` is authenticated as, with the roles it holds now (None: nobody, or a removed user)."""
        state = self._auth_conns.get(conn)
        if state is None or state.principal is None:
            return None
        if state.version != self.users_version:
            with self.lock:
                version = self.users_version
                fresh = self._load_principal(state.principal.db, state.principal.user)
            if fresh is None:
                log.warning("connection %d (%s): user %s no longer exists: it is logged out", conn, state.peer,
                            state.principal.key)
            state.principal, state.version = fresh, version
        return state.principal

    def note_ops(self, ops: Iterable[dict[str, Any]]) -> None:
        """Called with each command's journal ops (under the lock): did they change a user?"""
        for op in ops:
            if op.get("db") == USERS_DB and op.get("c") in (USERS_COLL, None) or op.get("to") == USERS_COLL:
                self.users_version += 1
                return

    # ------------------------------------------------------------------------- the users collection
    def _user_docs(self) -> list[dict[str, Any]]:
        """Every stored user document (call with the lock held)."""
        cs = self.cstore(USERS_DB, USERS_COLL)
        return list(cs.decoded_documents()) if cs.is_created else []

    def _user_doc(self, db: str, user: str) -> dict[str, Any] | None:
        """The stored document of ``user`` in ``db`` (call with the lock held)."""
        cs = self.cstore(USERS_DB, USERS_COLL)
        doc = cs.get_doc(f"{db}.{user}") if cs.is_created else None
        return doc if isinstance(doc, dict) and doc.get("user") == user and doc.get("db") == db else None

    def _load_principal(self, db: str, user: str) -> Principal | None:
        doc = self._user_doc(db, user)
        return Principal(user, db, _roles_of(doc)) if doc is not None else None

    def user_keys(self, db: str, user: str) -> ScramKeys | None:
        """The SCRAM-SHA-256 keys of a user (takes the lock briefly); None: no such user, or no usable keys."""
        with self.lock:
            doc = self._user_doc(db, user)
        return ScramKeys.from_doc((doc.get("credentials") or {}).get(MECHANISM)) if doc is not None else None

    def has_users(self) -> bool:
        with self.lock:
            return bool(self._user_docs())

    def insert_user(self, user: str, db: str, password: str, roles: list[dict[str, str]]) -> None:
        """Store a new user (call with the lock held; the caller journals the effect)."""
        self._put_user(user_doc(user, db, derive_keys(password), roles))

    def _put_user(self, doc: dict[str, Any]) -> None:
        """Store (insert or replace) a user document through the tracked store, as a whole new document: the
        change is journaled like any write (mongomock's replace_one would edit the stored dict in place, which
        nothing records), and a connection that read the old one keeps a consistent copy."""
        cs = self.cstore(USERS_DB, USERS_COLL)
        if not cs.is_created:
            cs.create()
        cs[doc["_id"]] = doc

    def _roots(self) -> list[str]:
        return [str(d.get("_id")) for d in self._user_docs()
                if (ROOT, USERS_DB) in _roles_of(d) and isinstance((d.get("credentials") or {}).get(MECHANISM), dict)]

    # ------------------------------------------------------------------------- login
    def _sasl_first(self, db: str, cmd: Command, conn: int) -> Reply:
        """saslStart (or a hello's speculativeAuthenticate): check the mechanism, answer the client-first message."""
        mech = cmd.get("mechanism")
        if mech != MECHANISM:
            raise CommandError(f"Received authentication for mechanism {mech} which is not enabled: the embedded "
                               f"LaunchPad server supports {MECHANISM} only", 334)
        state = self.conn_auth(conn)
        scram = ScramServer(lambda user: self.user_keys(db, user))
        try:
            server_first = scram.first(_payload(cmd))
        except ScramError as exc:
            raise CommandError(str(exc), exc.code) from None
        with state.lock:
            state.conversation, state.conversation_db = scram, db
            state.skip_empty = bool((cmd.get("options") or {}).get("skipEmptyExchange"))
        return {"conversationId": 1, "done": False, "payload": bson.Binary(server_first), "ok": 1.0}

    def _saslstart(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        return self._sasl_first(db, cmd, conn)

    def speculative(self, db: str, spec: Any, conn: int) -> dict[str, Any] | None:
        """The answer to a hello's ``speculativeAuthenticate`` (a saslStart), or None to let the driver send
        saslStart itself (an unsupported mechanism: it then gets that error)."""
        if not isinstance(spec, dict) or "saslStart" not in spec or spec.get("mechanism") != MECHANISM:
            return None
        try:
            reply = self._sasl_first(str(spec.get("db") or db), spec, conn)
        except CommandError:
            return None
        reply.pop("ok")
        return reply

    def _saslcontinue(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        state = self.conn_auth(conn)
        with state.lock:
            scram = state.conversation
            if scram is None or cmd.get("conversationId", 1) != 1 or db != state.conversation_db:
                raise CommandError("No SASL session state found", 17)
            if scram.finished:  # the empty last step of a client that does not skip it
                state.conversation = None
                return {"conversationId": 1, "done": True, "payload": bson.Binary(b""), "ok": 1.0}
            try:
                server_final = scram.final(_payload(cmd))
            except ScramError as exc:
                state.conversation = None
                if exc.code == 18:
                    # the name as the client sent it, quoted: it may hold anything, line breaks included
                    log.warning("connection %d (%s): authentication of %r (database %r) failed", conn, state.peer,
                                scram.username, db)
                raise CommandError(str(exc), exc.code) from None
            with self.lock:
                principal = self._load_principal(db, scram.username)  # None: removed during the exchange
                version = self.users_version
            if principal is None:
                state.conversation = None
                raise CommandError("Authentication failed.", 18)
            state.principal, state.version = principal, version
            done = state.skip_empty
            if done:
                state.conversation = None
        log.info("connection %d (%s): authenticated as %s@%s", conn, state.peer, scram.username, db)
        return {"conversationId": 1, "done": done, "payload": bson.Binary(server_final), "ok": 1.0}

    def _authenticate(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        mech = cmd.get("mechanism") or "MONGODB-CR"
        raise CommandError(f"Received authentication for mechanism {mech} which is not enabled: the embedded "
                           f"LaunchPad server supports {MECHANISM} only (saslStart)", 334)

    def _logout(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        state = self._auth_conns.get(conn)
        if state is not None:
            with state.lock:
                state.principal, state.conversation = None, None
        return {"ok": 1.0}

    # ------------------------------------------------------------------------- user management (root)
    def _createuser(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        user = _user_name(cmd[name])
        _check_options(cmd, name, {"pwd", "roles", "mechanisms", "digestPassword", "customData"})
        if "pwd" not in cmd:
            raise CommandError("Must provide a 'pwd' field for all user documents", 2)
        if "roles" not in cmd:
            raise CommandError("\"createUser\" command requires a \"roles\" array", 2)
        roles = parse_roles(cmd["roles"], db)
        if self._user_doc(db, user) is not None:
            raise CommandError(f'User "{user}@{db}" already exists', 51003)
        doc = user_doc(user, db, derive_keys(_password(cmd["pwd"])), roles)
        if isinstance(cmd.get("customData"), dict):
            doc["customData"] = cmd["customData"]
        self._put_user(doc)
        log.info("user %s@%s created (roles %s)", user, db, _shown(roles))
        return {"ok": 1.0}

    def _updateuser(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        user = _user_name(cmd[name])
        _check_options(cmd, name, {"pwd", "roles", "mechanisms", "digestPassword", "customData"})
        old = self._user_doc(db, user)
        if old is None:
            raise CommandError(f'Could not find user "{user}@{db}"', 11)
        doc = dict(old)
        if "pwd" in cmd:
            doc["credentials"] = {MECHANISM: derive_keys(_password(cmd["pwd"])).to_doc()}
        if "roles" in cmd:
            doc["roles"] = parse_roles(cmd["roles"], db)
            if (ROOT, USERS_DB) not in _roles_of(doc) and self._roots() == [doc["_id"]]:
                raise CommandError(f"cannot take root from {user}@{db}: it is the last root user (make another "
                                   "root user first)", 2)
        if isinstance(cmd.get("customData"), dict):
            doc["customData"] = cmd["customData"]
        self._put_user(doc)
        log.info("user %s@%s updated (%s)", user, db, ", ".join(k for k in ("pwd", "roles", "customData") if k in cmd))
        return {"ok": 1.0}

    def _dropuser(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        user = _user_name(cmd[name])
        if self._user_doc(db, user) is None:
            raise CommandError(f'Could not find user "{user}@{db}"', 11)
        if self._roots() == [f"{db}.{user}"]:
            raise CommandError(f"cannot remove {user}@{db}: it is the last root user, and without one nobody can "
                               "manage users any more (make another root user first)", 2)
        del self.cstore(USERS_DB, USERS_COLL)[f"{db}.{user}"]
        log.info("user %s@%s removed", user, db)
        return {"ok": 1.0}

    def _usersinfo(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        """MongoDB's shapes: ``1`` (this database's users), a name, ``{user, db}``, a list, ``{forAllDBs: true}``.

        A user that is not root sees only itself (MongoDB's viewUser privilege on oneself)."""
        spec = cmd[name]
        docs = sorted(self._user_docs(), key=lambda d: str(d.get("_id")))
        if isinstance(spec, dict) and spec.get("forAllDBs"):
            chosen = docs
        elif spec == 1:
            chosen = [d for d in docs if d.get("db") == db]
        else:
            wanted = {_user_ref(s, db) for s in (spec if isinstance(spec, list) else [spec])}
            chosen = [d for d in docs if (d.get("db"), d.get("user")) in wanted]
        me = self.principal(conn)
        if me is not None and not me.is_root:
            chosen = [d for d in chosen if d.get("_id") == me.key]
        return {"users": [_public(d) for d in chosen], "ok": 1.0}


def _payload(cmd: Command) -> bytes:
    p = cmd.get("payload", b"")
    if isinstance(p, str):
        return p.encode("utf-8")
    if not isinstance(p, bytes):
        raise CommandError("SASL payload must be BinData", 14)
    return bytes(p)


def _user_name(value: Any) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise CommandError(f"a user name must be a non-empty string, not {value!r}", 2)
    return value


def _password(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise CommandError("a password must be a non-empty string", 2)
    return value


def _check_options(cmd: Command, name: str, allowed: set[str]) -> None:
    extra = sorted(set(cmd) - allowed - {name})
    if extra:
        raise CommandError(f"{name}: options {extra} are not supported by the embedded LaunchPad server", 2)
    mechs = cmd.get("mechanisms")
    if mechs is not None and mechs != [MECHANISM]:
        raise CommandError(f"mechanisms {mechs!r}: the embedded LaunchPad server supports [\"{MECHANISM}\"] only", 2)
    if cmd.get("digestPassword") is False:
        raise CommandError(f"{MECHANISM} requires the server to digest the password (digestPassword: true)", 2)


def _user_ref(spec: Any, db: str) -> tuple[str, str]:
    if isinstance(spec, str):
        return db, spec
    if isinstance(spec, dict) and isinstance(spec.get("user"), str):
        return str(spec.get("db") or db), spec["user"]
    raise CommandError(f"usersInfo: a user is a name or {{user, db}}, not {spec!r}", 14)


def _shown(roles: list[dict[str, str]]) -> str:
    return ", ".join(f"{r['role']}@{r['db']}" for r in roles) or "none"
