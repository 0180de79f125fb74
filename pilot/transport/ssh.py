"""Commands and files on a host over SSH (paramiko): :class:`SSHTransport`.

It is put together from parts that each do one thing: settings and the pooled connection
(:mod:`~pilot.transport.ssh_base`, :mod:`~pilot.transport.ssh_config`, :mod:`~pilot.transport.ssh_pool`),
commands (:mod:`~pilot.transport.ssh_commands`, the only place where an argument list becomes a shell command
line) and files over SFTP (:mod:`~pilot.transport.ssh_files`).
"""

from __future__ import annotations

from pilot.transport.ssh_commands import SSHCommands
from pilot.transport.ssh_files import SSHFiles


class SSHTransport(SSHCommands, SSHFiles):
    """Commands and files on a host over SSH (paramiko), with a pooled, kept-alive connection.

    Parameters
    ----------
    host : str
        Host name or address (or an ssh-config ``Host`` alias when ``use_ssh_config``).
    user : str, optional
        Remote user; default: ssh config ``User``, else the local user name.
    port : int
        Default 22 (an explicit non-22 port wins over ssh config ``Port``).
    identity_file : str, optional
        Private key file. Without it: ssh config ``IdentityFile``, else the ssh-agent and ``~/.ssh/id_*``.
        The ssh-agent is always tried as well.
    known_hosts : str, optional
        known_hosts file to check host keys against. Default: ssh config ``UserKnownHostsFile``, else
        ``~/.ssh/known_hosts`` and ``/etc/ssh/ssh_known_hosts``. Never written to.
    strict_host_key_checking : bool
        True (default): an unknown host key is rejected (:class:`HostKeyError`). False: it is accepted for
        this connection with a WARNING (nothing written). A *changed* key is always rejected.
    proxy_jump : str, optional
        One jump host, ``user@host:port`` (user and port optional; default user: the target's user).
    use_ssh_config : bool
        Read ``Host`` entries of ``ssh_config_path`` (HostName, User, Port, IdentityFile, ProxyJump,
        UserKnownHostsFile) for ``host`` and for the jump host.
    ssh_config_path : str
        Default ``~/.ssh/config``.
    connect_timeout : float
        Seconds for setting up the connection: TCP connect, SSH banner, key exchange and authentication
        together (each hop: with ``proxy_jump`` at most twice this).
    keepalive : int
        Seconds between SSH keepalive packets (0 = off).
    name : str, optional
        Display name (e.g. the cluster name) for messages and logs.
    allow_agent : bool
        Try keys from a running ssh-agent (default True).
    sftp_timeout : float
        Seconds one file operation (``put``, ``get``, ``stat``, ``makedirs``, ...) may take, opening the SFTP
        session included (default 120); a transfer counts them from the last chunk that moved. On expiry the
        session is closed and :class:`CommandTimeout` raised: a hung file system on the host costs this
        long, not for ever.

    Notes
    -----
    Objects with the same (user, host, port, jump) and the same key/known_hosts/policy settings share one
    connection from a module-level pool (thread-safe); it is opened on first use and closed when the last
    sharing object is closed. A dropped connection is re-established once per call; if that fails the call
    raises :class:`ConnectError`.
    """
