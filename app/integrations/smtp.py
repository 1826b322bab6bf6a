"""Outgoing email: real SMTP when SMTP_HOST is set, the server log otherwise."""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol

import anyio

from app.config import Settings

log = logging.getLogger("talkstack.mail")


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    body: str


class Mailer(Protocol):
    async def send(self, mail: Mail) -> None: ...


class LogMailer:
    """Development delivery: with no SMTP server configured, mail is printed to the log."""

    async def send(self, mail: Mail) -> None:
        log.warning(
            "SMTP_HOST is not set; this email is not sent, only logged.\nTo: %s\nSubject: %s\n\n%s",
            mail.to,
            mail.subject,
            mail.body,
        )


class SmtpMailer:
    def __init__(self, settings: Settings) -> None:
        assert settings.smtp_host
        self._host = settings.smtp_host
        self._port = settings.smtp_port
        self._username = settings.smtp_username
        self._password = settings.smtp_password
        self._sender = settings.smtp_from
        self._starttls = settings.smtp_starttls
        self._timeout = settings.smtp_timeout_seconds

    def _send_sync(self, mail: Mail) -> None:
        msg = EmailMessage()
        msg["From"] = self._sender
        msg["To"] = mail.to
        msg["Subject"] = mail.subject
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="talkstack")
        msg.set_content(mail.body)
        with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
            if self._starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self._username and self._password:
                smtp.login(self._username, self._password)
            smtp.send_message(msg)

    async def send(self, mail: Mail) -> None:
        # smtplib blocks; keep it off the event loop.
        await anyio.to_thread.run_sync(self._send_sync, mail)
        log.info("email sent to %s: %s", mail.to, mail.subject)


def build_mailer(settings: Settings) -> Mailer:
    return SmtpMailer(settings) if settings.smtp_host else LogMailer()
