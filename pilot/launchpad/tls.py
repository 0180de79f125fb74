"""TLS for the embedded LaunchPad server: its private CA, its server certificate, and the server-side handshake.

Off loopback the server always speaks TLS (issue 15): pilots on compute nodes reach it over networks the user
does not own, and the SCRAM exchange alone would let anyone on the path read every Firework. A public CA
cannot vouch for a fileserver's private address, so each data dir has its own CA:

* ``DATA/tls/ca.pem`` + ``ca.key``: made once and reused, so the copies that ``pilot bootstrap`` put on the
  clusters stay valid across restarts and new names;
* ``DATA/tls/server.pem``: the server's certificate and key in one PEM file (what MongoDB calls
  ``tlsCertificateKeyFile``), reissued from that CA whenever a name clients use is missing from its SANs, it
  was not issued by the CA, or it nears its end.

The directory is 0700 and every file 0600 (the CA certificate is public, but it lives with its key; clients get
a copy). Clients verify with ``{"tls": True, "tlsCAFile": DATA/tls/ca.pem}`` (:func:`client_kwargs`), which
FireWorks passes to ``MongoClient`` through a LaunchPad file's ``mongoclient_kwargs``.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import ipaddress
import logging
import os
import re
import socket
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pilot.configdir import private_dir, write_private

log = logging.getLogger(__name__)

TLS_DIR = "tls"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_PEM = "server.pem"
#: The CA outlives any server certificate many times over: a new CA means copying it to every cluster again.
CA_DAYS = 20 * 365
#: Apple's clients refuse server certificates valid for more than 825 days, even from a private CA.
SERVER_DAYS = 800
#: A server certificate with less than this left is reissued at start.
RENEW_DAYS = 90
#: Backdating covers clocks that lag (compute nodes behind the fileserver) when a certificate is brand new.
BACKDATE = datetime.timedelta(days=1)
#: How long a client may take to finish the TLS handshake before its connection is closed.
HANDSHAKE_TIMEOUT_S = 10.0

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")


class TLSSetupError(Exception):
    """The TLS files cannot be made or used; the message names the file and the way out."""


def normalize_name(name: str) -> str | None:
    """``name`` as it goes into a SAN (IP address in its canonical form, DNS name lower case, IDN as its
    ASCII form, no trailing dot), or None if it is neither an IP address nor a valid host name."""
    name = name.strip()
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return None if addr.version == 6 and addr.scope_id else str(addr)
    name = name.rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(name) > 253 or not _DNS_NAME.match(name):
        return None
    return name.lower()


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _san_names(cert: x509.Certificate) -> set[str]:
    """The SANs of ``cert`` in :func:`normalize_name` form."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    names |= {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    return names


def server_names(path: Path) -> list[str]:
    """The SANs of the certificate in PEM file ``path``, sorted ([] when it is missing or unreadable)."""
    try:
        return sorted(_san_names(x509.load_pem_x509_certificate(Path(path).read_bytes())))
    except (OSError, ValueError):
        return []


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class TLSFiles:
    """Where the TLS files are, and what :func:`ensure_certificates` did to them."""

    ca: Path
    server: Path
    names: tuple[str, ...]          # the server certificate's SANs
    ca_fingerprint: str             # SHA-256 of the CA certificate, hex (how a person compares copies)
    new_ca: bool = False
    reissued: bool = False


def tls_dir(data_dir: Path) -> Path:
    return Path(data_dir) / TLS_DIR


def client_kwargs(data_dir: Path, tls: bool) -> dict[str, Any]:
    """``MongoClient`` keyword arguments for a client of a server with this data dir: ``{}`` without TLS,
    else TLS verified against the data dir's CA (hostname checked as usual)."""
    if not tls:
        return {}
    return {"tls": True, "tlsCAFile": str(Path(data_dir).absolute() / TLS_DIR / CA_CERT)}


def _new_key() -> ec.EllipticCurvePrivateKey:
    """P-256: every TLS 1.2+ client has it, and a key takes microseconds (RSA 2048 takes a noticeable pause)."""
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _make_ca(d: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new CA that may sign server certificates only (path length 0), written to ``d``."""
    key = _new_key()
    host = normalize_name(socket.gethostname()) or "localhost"
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fireworks-pilot"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"pilot LaunchPad CA on {host}"[:64])])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write_private(d / CA_KEY, _key_pem(key), fsync=True)
    write_private(d / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), fsync=True)
    return cert, key


def _load_ca(d: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The data dir's CA, or None when there is none yet (or it has expired: nothing can trust it any more).
    :func:`_make_ca` writes the key first, so a certificate is never there without its key.

    Raises
    ------
    TLSSetupError
        The files exist but are damaged or do not belong together: making a new CA silently would strand
        every copy on the clusters, so the user decides.
    """
    cert_path, key_path = d / CA_CERT, d / CA_KEY
    if not cert_path.exists():
        return None  # none yet, or one whose making stopped after the key (the certificate went nowhere)
    fix = (f"if it cannot be restored, remove {d} to make a new CA (then copy it to the clusters again: "
           "`pilot bootstrap CLUSTER`)")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TLSSetupError(f"cannot read the LaunchPad's CA ({cert_path}, {key_path}): {exc}; {fix}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise TLSSetupError(f"the LaunchPad's CA key {key_path} does not belong to {cert_path}; {fix}")
    if cert.not_valid_after_utc <= _now() + datetime.timedelta(days=1):
        log.warning("the LaunchPad's CA %s has expired (%s): making a new one; clusters need the new copy "
                    "(`pilot bootstrap CLUSTER`)", cert_path, cert.not_valid_after_utc.date())
        return None
    return cert, key


def _server_cert_ok(path: Path, ca: x509.Certificate, wanted: set[str]) -> tuple[bool, set[str]]:
    """(usable as is, its SANs): usable when it parses with its key, the CA issued it, it holds every wanted
    name, and it has more than :data:`RENEW_DAYS` left."""
    try:
        data = path.read_bytes()
        cert = x509.load_pem_x509_certificate(data)
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError):
        return False, set()
    names = _san_names(cert)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False, set()  # another CA's names are not carried over
    fresh = cert.not_valid_after_utc > _now() + datetime.timedelta(days=RENEW_DAYS)
    return key.public_key() == cert.public_key() and fresh and wanted <= names, names


def _issue_server(path: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: list[str]) -> None:
    """Sign a server certificate for ``names`` (SANs; hostname checks read only those) and write it with
    its key to ``path``."""
    key = _new_key()
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fireworks-pilot"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "pilot LaunchPad server")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(path, _key_pem(key) + cert.public_bytes(serialization.Encoding.PEM), fsync=True)


#: flock's errors on a file system without file locks (Lustre mounted without -o flock, some NFS setups)
_NO_LOCKS = frozenset({errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL})


def _lock_fd(d: Path) -> int | None:
    """``d/.lock`` opened (made 0600 when missing; read-only in a directory we may not write, where nothing
    will be made either), or None when it can be neither."""
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(d / ".lock", flags, 0o600)
        except OSError:
            continue
    return None


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    """An exclusive lock on ``d/.lock`` while the TLS files are read and made: two programs that start together
    (the LaunchPad server and the dashboard) would each make a CA, and a ``ca.key`` of one could end beside the
    ``ca.pem`` of the other. Without file locks (or the file) the files are read and made unlocked, as before."""
    fd = _lock_fd(d)
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise
                log.info("TLS files in %s: no file locks here (%s); going on without", d, exc.strerror)
        yield
    finally:
        if fd is not None:
            os.close(fd)   # closing releases the lock


def ensure_certificates(data_dir: Path, names: Iterable[str], server_file: str = SERVER_PEM) -> TLSFiles:
    """Make sure ``DATA/tls`` holds a CA and a server certificate (``server_file``: the LaunchPad server's by
    default; the dashboard has its own, with its own key, from the same CA) valid for every one of ``names``.

    The CA is reused. A server certificate that lacks a name is reissued with the names it had plus the new
    ones: a name clients were given keeps working when a later start forgets an option (remove
    ``server.pem`` to drop names).

    Raises
    ------
    TLSSetupError
        The directory cannot be written, or the CA files are damaged.
    """
    d = tls_dir(data_dir)
    wanted = list(dict.fromkeys(names))
    try:
        private_dir(d)
        with _locked(d):   # the LaunchPad server and the dashboard may start at once: one CA, made once
            loaded = _load_ca(d)
            new_ca = loaded is None
            ca, ca_key = loaded if loaded is not None else _make_ca(d)
            server = d / server_file
            ok, had = _server_cert_ok(server, ca, set(wanted))
            sans = wanted + sorted(had - set(wanted))
            if not ok:
                _issue_server(server, ca, ca_key, sans)
    except OSError as exc:
        raise TLSSetupError(f"cannot write the TLS files in {d}: {exc.strerror or exc}") from exc
    fingerprint = ca.fingerprint(hashes.SHA256()).hex()
    return TLSFiles(d / CA_CERT, server, tuple(sans), fingerprint, new_ca=new_ca, reissued=not ok)


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """The server side: TLS 1.2 or newer, the server certificate; clients present none (they authenticate
    with SCRAM inside the tunnel)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(files.server))
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"cannot load the LaunchPad's TLS certificate {files.server}: {exc}; remove it to "
                            "have it reissued") from exc
    return ctx


def handshake(ctx: ssl.SSLContext, sock: socket.socket, peer: str,
              timeout: float = HANDSHAKE_TIMEOUT_S) -> ssl.SSLSocket | None:
    """Finish the TLS handshake on an accepted connection (in its own thread: a slow or silent client must
    never hold up the accept loop); None, with one log line and the socket closed, when it fails -- a client
    speaking plain MongoDB, one that does not trust the CA, or one that says nothing for ``timeout`` seconds.
    """
    try:
        sock.settimeout(timeout)
        tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except OSError as exc:
        log.warning("closing connection from %s before TLS: %s", peer, exc)
        sock.close()
        return None
    try:
        tls.do_handshake()
        tls.settimeout(None)
    except (ssl.SSLError, OSError) as exc:
        why = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else (str(exc) or type(exc).__name__)
        hint = " (a client without TLS? its LaunchPad file needs mongoclient_kwargs tls/tlsCAFile)" \
            if "WRONG_VERSION" in str(why).upper() or "HTTP" in str(why).upper() else ""
        log.warning("TLS handshake with %s failed: %s%s", peer, why, hint)
        tls.close()
        return None
    return tls
