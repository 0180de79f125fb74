"""E-mail through one SMTP server (:mod:`smtplib`): STARTTLS required by default, certificates verified, a login
with the password read from its file at each send.

What may be logged or shown of a send is the server's ``host:port`` and the recipients; the password never (it is
read here, handed to :meth:`smtplib.SMTP.login`, and scrubbed from any error text, :func:`pilot.redact.scrub`).
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from pilot.config.models_notify import EmailSettings, SmtpTls, read_secret_file
from pilot.notify.events import Message
from pilot.redact import scrub

__all__ = ["SendError", "send_email", "tls_context"]


class SendError(Exception):
    """A message could not be sent; the text says why (no secret in it) and whether a retry can help.

    ``permanent``: the server refused *this message* (an SMTP 5xx answer to its data, an HTTP 4xx other than 408
    and 429): sending it again would fail again, so it is given up and the channel goes on with the next message.
    Otherwise (the connection, TLS, the login, a timeout) the channel is down: the rest waits for the next cycle.
    """

    def __init__(self, text: str, permanent: bool = False) -> None:
        super().__init__(text)
        self.permanent = permanent


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs, or only ``ca_file`` when given (a site CA)."""
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _mail(cfg: EmailSettings, msg: Message) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = msg.subject
    mail["From"] = cfg.sender
    mail["To"] = ", ".join(cfg.to)
    mail["Date"] = formatdate(localtime=False, usegmt=True)
    mail["Message-ID"] = make_msgid(domain=cfg.sender.rsplit("@", 1)[-1])
    mail["X-Pilot-Events"] = str(len(msg.keys))
    mail.set_content(msg.body)
    return mail


def send_email(cfg: EmailSettings, msg: Message) -> None:
    """Send ``msg`` to ``cfg.to``.

    Raises
    ------
    SendError
        Connection, TLS, login or refusal, with the server and the reason (never the password).
    """
    try:
        password = read_secret_file(cfg.password_file) if cfg.password_file is not None else None
    except OSError as e:
        raise SendError(f"SMTP {cfg.where()}: cannot read password_file {cfg.password_file}: {e.strerror}") from None
    secrets = [password] if password else []
    where = cfg.where()
    try:
        _send(cfg, msg, password)
    except smtplib.SMTPAuthenticationError as e:
        raise SendError(f"SMTP {where}: login as {cfg.user} refused ({e.smtp_code}): check the password in "
                        f"{cfg.password_file}") from None
    except smtplib.SMTPNotSupportedError as e:
        raise SendError(f"SMTP {where}: {scrub(str(e), secrets)}: the server does not offer it; check tls: and "
                        "port: in notify.email") from None
    except smtplib.SMTPDataError as e:   # the message itself refused: 5xx for good, 4xx for now
        text = scrub(e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error),
                     secrets)
        raise SendError(f"SMTP {where}: message refused ({e.smtp_code} {text})", permanent=e.smtp_code >= 500) \
            from None
    except smtplib.SMTPRecipientsRefused as e:
        raise SendError(f"SMTP {where}: recipients refused: {', '.join(map(str, e.recipients))}") from None
    except ssl.SSLError as e:
        raise SendError(f"SMTP {where}: TLS failed: {scrub(str(e), secrets)} (a certificate the system does not "
                        "trust? set notify.email.ca_file)") from None
    except (smtplib.SMTPException, OSError) as e:
        text = scrub(str(e) or type(e).__name__, secrets)
        raise SendError(f"SMTP {where}: {type(e).__name__}: {text} (retried next cycle)") from None
    except ValueError as e:   # a message the email package will not write (a header it refuses): never sendable
        raise SendError(f"SMTP {where}: the message cannot be written: {scrub(str(e), secrets)}",
                        permanent=True) from None
    except Exception as e:   # noqa: BLE001 - anything else: its type, not its text (it might quote a secret)
        raise SendError(f"SMTP {where}: unexpected {type(e).__name__} (retried next cycle)") from None


def _send(cfg: EmailSettings, msg: Message, password: str | None) -> None:
    ca = str(cfg.ca_file) if cfg.ca_file else None
    smtp: smtplib.SMTP
    if cfg.tls is SmtpTls.SSL:
        smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout,
                                context=tls_context(ca))
    else:
        smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
    with smtp:
        smtp.ehlo()
        if cfg.tls is SmtpTls.STARTTLS:
            if not smtp.has_extn("starttls"):   # required: never fall back to a plain login
                raise smtplib.SMTPNotSupportedError("STARTTLS not offered")
            smtp.starttls(context=tls_context(ca))
            smtp.ehlo()
        if cfg.user is not None and password is not None:
            smtp.login(cfg.user, password)
        smtp.send_message(_mail(cfg, msg))

