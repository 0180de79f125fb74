"""What ``pilot bootstrap`` puts on a cluster for the LaunchPad's TLS and for ``launchpad_route: ssh``.

* The LaunchPad's CA certificate (when the LaunchPad file names one in ``mongoclient_kwargs.tlsCAFile`` or in
  its URI): copied to ``~/.pilot/launchpad-ca.pem`` (mode 600), and the cluster's LaunchPad file points at it
  by its absolute path (pymongo does not expand ``~``), so every pilot verifies the server.
* The route's key (:data:`pilot.render.ROUTE_KEY`): made ON the cluster with ``ssh-keygen`` (the private key
  never leaves the cluster account; only the public half comes back), once; later runs keep it.
* Its public key in the login node's ``~/.ssh/authorized_keys``, allowed nothing but the one forward:
  ``restrict,port-forwarding,command="/bin/false",permitopen="127.0.0.1:PORT" ssh-ed25519 ... pilot-route`` (sshd(8),
  "AUTHORIZED_KEYS FILE FORMAT": ``restrict`` turns off every forwarding, pty, agent and X11, and
  ``port-forwarding`` turns local forwards back on, limited by ``permitopen`` to the manager's port). An
  older ``pilot-route`` line (another port, an earlier key) is replaced; the user's other lines stay as they are.
* The login node's host key for the pilots' ssh (:data:`pilot.render.ROUTE_KNOWN_HOSTS`): the key that this
  bootstrap's own SSH connection verified against the user's known_hosts, written under the name the compute
  nodes use (``[LOGIN_ADDRESS]:LOGIN_PORT``, or ``LOGIN_ADDRESS`` for port 22); the login node itself is asked
  (``ssh-keyscan``) whether that address offers the same key, so a ``login_address`` that names another
  machine is caught here rather than in every pilot.

Every step is idempotent (a file with the wanted content and mode is left alone), files are 0600 and the
``~/.pilot`` directory 0700. The remote commands are fixed ``sh`` scripts whose paths come in as arguments
(``"$@"``), so nothing is ever re-quoted.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pilot.checks.bootstrap_context import BootstrapContext, BootstrapError, command_failed
from pilot.render import ROUTE_KEY, ROUTE_KNOWN_HOSTS

if TYPE_CHECKING:
    from pilot.config import SshRoute
    from pilot.transport import CompletedCommand, Transport

__all__ = [
    "AUTHORIZED_KEYS",
    "CA_PATH",
    "ROUTE_COMMENT",
    "authorized_line",
    "ca_file_of",
    "known_hosts_line",
    "private_dir",
    "step_authorize",
    "step_ca",
    "step_known_hosts",
    "step_route_key",
    "steps_route",
    "verified_host_key",
    "with_ca_file",
    "with_route_line",
]

#: Where the LaunchPad's CA certificate goes on the cluster.
CA_PATH = "~/.pilot/launchpad-ca.pem"
#: The login node's authorized_keys (sshd's default AuthorizedKeysFile).
AUTHORIZED_KEYS = "~/.ssh/authorized_keys"
#: The comment of the route key's line: how a later bootstrap finds the line it wrote.
ROUTE_COMMENT = "pilot-route"
#: The option names pymongo reads for the CA file (it matches option names without regard to case).
_CA_OPTIONS = ("tlscafile", "ssl_ca_certs")

#: Expands a leading ``~/`` of ``$1`` (sh does not expand a quoted tilde); then the step's own lines.
_HOME = 'p=$1; case $p in "~/"*) p=$HOME/${p#\\~/};; "~") p=$HOME;; esac\n'
#: ``$1`` as a private directory (created 0700 when missing, made 0700 when it is there).
_PRIVATE_DIR = _HOME + 'umask 077\nmkdir -p -- "$p"\nchmod 700 -- "$p"\nprintf "%s\\n" "$p"\n'
#: The route key ``$1``: made when missing (ed25519, no passphrase, comment pilot-route), its public half printed.
_KEYGEN = _HOME + r"""umask 077
mkdir -p -- "$(dirname -- "$p")"
if [ -f "$p" ]; then
  [ -f "$p.pub" ] || ssh-keygen -y -f "$p" < /dev/null > "$p.pub"
  echo kept
else
  rm -f -- "$p.pub"
  ssh-keygen -q -t ed25519 -N '' -C pilot-route -f "$p" < /dev/null > /dev/null
  echo made
fi
chmod 600 -- "$p" "$p.pub"
cat -- "$p.pub"
"""
#: The text of file ``$1``, exit 3 when it does not exist, 4 when it is a symbolic link (not replaced).
_READ = _HOME + '[ -L "$p" ] && { echo "$p is a symbolic link" >&2; exit 4; }\n[ -e "$p" ] || exit 3\ncat -- "$p"\n'


# ============================================================================ pure
def ca_file_of(doc: dict[str, Any]) -> str | None:
    """The CA file a LaunchPad file names (``mongoclient_kwargs`` or the URI's ``tlsCAFile``), None when none."""
    kwargs = doc.get("mongoclient_kwargs") or {}
    if isinstance(kwargs, dict):
        for key, value in kwargs.items():
            if str(key).lower() in _CA_OPTIONS and value:
                return str(value)
    host = str(doc.get("host") or "")
    if host.startswith(("mongodb://", "mongodb+srv://")):
        for key, value in parse_qsl(urlsplit(host).query, keep_blank_values=True):
            if key.lower() in _CA_OPTIONS and value:
                return value
    return None


def with_ca_file(doc: dict[str, Any], path: str) -> dict[str, Any]:
    """A LaunchPad file's content with its CA file (wherever it was named) replaced by ``path``."""
    out = dict(doc)
    kwargs = out.get("mongoclient_kwargs")
    if isinstance(kwargs, dict):
        out["mongoclient_kwargs"] = {k: (path if str(k).lower() in _CA_OPTIONS and v else v)
                                     for k, v in kwargs.items()}
    host = str(out.get("host") or "")
    if host.startswith(("mongodb://", "mongodb+srv://")):
        parts = urlsplit(host)
        query = [(k, path if k.lower() in _CA_OPTIONS and v else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        out["host"] = urlunsplit(parts._replace(query=urlencode(query, safe="/")))
    return out


def authorized_line(public_key: str, port: int) -> str:
    """The route key's authorized_keys line: nothing but a local forward to the login node's
    ``127.0.0.1:port``."""
    fields = public_key.split()
    if len(fields) < 2:
        raise ValueError(f"not an OpenSSH public key: {public_key!r}")
    options = f'restrict,port-forwarding,command="/bin/false",permitopen="127.0.0.1:{port}"'
    return f"{options} {fields[0]} {fields[1]} {ROUTE_COMMENT}"


def _is_route_line(line: str) -> bool:
    fields = line.split()
    return len(fields) >= 3 and fields[-1] == ROUTE_COMMENT and "permitopen=" in fields[0]


def with_route_line(text: str, line: str) -> str:
    """authorized_keys ``text`` holding ``line`` once, without older route lines; every other line unchanged."""
    kept = [ln for ln in text.splitlines(keepends=True) if not _is_route_line(ln)]
    body = "".join(kept)
    if body and not body.endswith("\n"):
        body += "\n"
    return body + line + "\n"


def known_hosts_line(address: str, port: int, key_type: str, key_b64: str) -> str:
    """A known_hosts line as ssh looks the host up: ``[ADDRESS]:PORT`` (``ADDRESS`` alone for port 22)."""
    name = address if port == 22 else f"[{address}]:{port}"
    return f"{name} {key_type} {key_b64}\n"


def verified_host_key(transport: Transport) -> tuple[str, str] | None:
    """The host key of the login node as the bootstrap's own SSH connection got it: (type, base64); None
    for a transport without SSH. The connection checked it against the user's known_hosts (unless the cluster
    sets ``strict_host_key_checking: false``)."""
    from pilot.transport.ssh_base import SSHTransportBase

    if not isinstance(transport, SSHTransportBase):
        return None
    # the pooled connection of the transport (the transport room has no public accessor for its host key)
    key = transport._connection().transport().get_remote_server_key()
    return key.get_name(), key.get_base64()


# ============================================================================ on the cluster
def _sh(ctx: BootstrapContext, script: str, *args: str) -> CompletedCommand:
    """A fixed ``sh`` script on the cluster with ``args`` as ``$1``... (no setup lines: only OpenSSH and
    coreutils are used)."""
    return ctx.run(["sh", "-c", "set -e\n" + script, "pilot-bootstrap", *args], setup=False)


def private_dir(ctx: BootstrapContext, path: str) -> str:
    """Make ``path`` (``~/...`` allowed) a 0700 directory on the cluster; returns its absolute path."""
    res = _sh(ctx, _PRIVATE_DIR, path)
    if not res.ok or not res.stdout.strip():
        raise command_failed(f"could not make the private directory {path} on the cluster", res,
                             f"create it yourself with mode 700 (`mkdir -p {path} && chmod 700 {path}`)")
    return res.stdout.strip().splitlines()[-1]


def _put_if_changed(ctx: BootstrapContext, data: bytes, target: str) -> bool:
    """Write ``data`` to ``target`` with mode 600 unless it is there already; True when written."""
    from pilot.transport import RemotePathError

    try:
        st = ctx.transport.stat(target)
        same = st.mode & 0o777 == 0o600 and ctx.transport.sha256(target) == hashlib.sha256(data).hexdigest()
    except RemotePathError:
        same = False
    if not same:
        ctx.transport.put(data, target, mode=0o600)
    return not same


def _remote_dir(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


#: Exit 0 when ``$1`` is a symbolic link (authorized_keys is then left to its owner).
_IS_LINK = _HOME + '[ -L "$p" ]\n'
#: Makes the parent directory of ``$1`` when it is missing (0700), leaving an existing one as it is.
_MAKE_PARENT = _HOME + 'umask 077\nmkdir -p -- "$(dirname -- "$p")"\n'


# ============================================================================ the steps
def step_ca(ctx: BootstrapContext, doc: dict[str, Any], source: Path) -> str | None:
    """Copy the CA certificate that the LaunchPad file ``source`` (content ``doc``) names to :data:`CA_PATH`;
    returns its absolute path on the cluster, None when the file names no CA (no step then)."""
    local = ca_file_of(doc)
    if local is None:
        return None
    with ctx.rep.step(f"copying the LaunchPad's CA certificate to {CA_PATH} on the cluster (mode 600)") as ev:
        path = Path(local).expanduser()
        path = path if path.is_absolute() else source.parent / path
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BootstrapError(f"the LaunchPad file {source} names the CA certificate {local} (tlsCAFile), which "
                                 f"cannot be read here ({e.strerror or e}); fix that path, or run `pilot launchpad "
                                 "init` again to write the file anew") from None
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise BootstrapError(f"{path} (tlsCAFile of {source}) holds no PEM certificate; point tlsCAFile at the "
                                 "LaunchPad's CA (DATA/tls/ca.pem of `pilot launchpad serve`)")
        folder = private_dir(ctx, _remote_dir(CA_PATH))
        remote = f"{folder}/{CA_PATH.rsplit('/', 1)[1]}"
        written = _put_if_changed(ctx, data, CA_PATH)
        ev["result"] = (f"copied from {path}" if written else "already there with the same content and mode "
                        "600: unchanged") + f"; the cluster's LaunchPad file names it as {remote}"
    return remote


def _public_key(stdout: str) -> tuple[bool, str]:
    """(made now, the public key line) from what the key script printed (shell start-up files may print
    lines of their own before it)."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    keys = [ln for ln in lines if re.match(r"^(ssh-|ecdsa-|sk-)\S+ [A-Za-z0-9+/=]+", ln)]
    if not keys:
        raise BootstrapError(f"the route key script printed no public key (it printed: {stdout[-300:]!r})")
    return "made" in lines, keys[-1]


def step_route_key(ctx: BootstrapContext) -> str:
    """Make the route's key on the cluster when it is missing; returns its public key line."""
    with ctx.rep.step(f"making the route's key {ROUTE_KEY} on the cluster (it never leaves the cluster)") as ev:
        private_dir(ctx, _remote_dir(ROUTE_KEY))
        res = _sh(ctx, _KEYGEN, ROUTE_KEY)
        if not res.ok:
            raise command_failed(f"could not make the route key {ROUTE_KEY}", res,
                                 "check that ssh-keygen (the OpenSSH client) is installed on the cluster; a key "
                                 f"there with a passphrase cannot be used: remove {ROUTE_KEY} and run bootstrap again")
        made, public = _public_key(res.stdout)
        ev["result"] = ("made (ed25519, no passphrase, mode 600)" if made else "already there: kept") + \
            f"; public key {public.split()[0]} {public.split()[1][-12:]}"
    return public


def step_authorize(ctx: BootstrapContext, public_key: str, port: int) -> None:
    """Allow the route key on the login node for one forward, to ``127.0.0.1:port`` (see the module docstring)."""
    import tempfile

    from pilot.transport import RemotePathError

    with ctx.rep.step(f"allowing the route key in {AUTHORIZED_KEYS} of the login node (a forward to "
                      f"127.0.0.1:{port}, nothing else)") as ev:
        line = authorized_line(public_key, port)
        if _sh(ctx, _IS_LINK, AUTHORIZED_KEYS).ok:
            raise BootstrapError(f"{AUTHORIZED_KEYS} on the login node is a symbolic link; add this line to the "
                                 f"file it points to yourself:\n    {line}")
        try:
            with tempfile.TemporaryDirectory(prefix="pilot-bootstrap-") as tmp:
                ctx.transport.get(AUTHORIZED_KEYS, Path(tmp) / "authorized_keys")  # SFTP: no shell output mixed in
                text = (Path(tmp) / "authorized_keys").read_bytes().decode("utf-8", "surrogateescape")
        except RemotePathError:
            text = ""
        new = with_route_line(text, line)
        if new == text:
            ev["result"] = "already there: unchanged"
            return
        res = _sh(ctx, _MAKE_PARENT, AUTHORIZED_KEYS)
        if not res.ok:
            raise command_failed("could not make ~/.ssh on the login node", res, "create ~/.ssh (mode 700) there")
        ctx.transport.put(new.encode("utf-8", "surrogateescape"), AUTHORIZED_KEYS, mode=0o600)
        replaced = sum(1 for ln in text.splitlines() if _is_route_line(ln))
        ev["result"] = "replaced the earlier route line" if replaced else "added the line"


def _cross_check(ctx: BootstrapContext, route: SshRoute, key: tuple[str, str]) -> str:
    """Ask the login node (``ssh-keyscan``) which keys ``login_address:login_port`` offers: the verified key
    must be among them (else the address names another machine); a note when it cannot be asked."""
    res = ctx.run(["ssh-keyscan", "-T", "10", "-p", str(route.login_port), route.login_address], setup=False)
    offered = {f[2] for f in (ln.split() for ln in res.stdout.splitlines()) if len(f) >= 3 and not f[0].startswith("#")}
    where = f"{route.login_address}:{route.login_port}"
    if not offered:
        return (f"could not ask the login node which key {where} offers (ssh-keyscan: "
                f"{(res.stderr.strip().splitlines() or ['no answer'])[-1]}); written: the key of {ctx.cluster.host}")
    if key[1] not in offered:
        raise BootstrapError(
            f"{where} (launchpad_route.login_address and login_port, as the login node reaches it) offers other host "
            f"keys than the login node this bootstrap connected to ({ctx.cluster.host}:{ctx.cluster.port}): it is "
            "another machine or another sshd. Write the address and sshd port of the login node as the compute "
            f"nodes reach it, or put that machine's verified host key into {ROUTE_KNOWN_HOSTS} yourself")
    return f"the login node confirms that {where} offers this key"


def step_known_hosts(ctx: BootstrapContext, route: SshRoute) -> None:
    """Write the login node's host key, as this bootstrap's connection verified it, for the pilots' ssh."""
    name = known_hosts_line(route.login_address, route.login_port, "t", "k").split()[0]
    with ctx.rep.step(f"writing the login node's host key to {ROUTE_KNOWN_HOSTS} (as {name})") as ev:
        key = verified_host_key(ctx.transport)
        if key is None:
            raise BootstrapError(f"launchpad_route: ssh needs an SSH connection to the login node, and cluster "
                                 f"{ctx.name} has none (no host); use launchpad_route: direct")
        if not ctx.cluster.strict_host_key_checking:
            ctx.rep.note(f"WARNING: strict_host_key_checking is off for {ctx.name}: this key was NOT checked "
                         "against known_hosts; check its fingerprint with the cluster's documentation")
        ctx.rep.note(_cross_check(ctx, route, key))
        private_dir(ctx, _remote_dir(ROUTE_KNOWN_HOSTS))
        written = _put_if_changed(ctx, known_hosts_line(route.login_address, route.login_port, *key).encode(),
                                  ROUTE_KNOWN_HOSTS)
        ev["result"] = f"written ({key[0]})" if written else "already there with the same key and mode 600: unchanged"


def steps_route(ctx: BootstrapContext, route: SshRoute) -> None:
    """The three steps of ``launchpad_route: ssh``: the key, its authorized_keys line, the host key."""
    public = step_route_key(ctx)
    step_authorize(ctx, public, route.port)
    step_known_hosts(ctx, route)
