"""A real SMTP server (aiosmtpd) that keeps what it receives, for reading codes and links."""

from __future__ import annotations

import email
import email.policy
import re
import threading
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Received:
    to: list[str]
    subject: str
    body: str


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        with self.box.lock:
            self.box.messages.append(
                Received(to=list(envelope.rcpt_tos), subject=str(msg["Subject"]), body=text)
            )
        return "250 Message accepted for delivery"


class Mailbox:
    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if address in m.to]

    def last_code(self, address: str) -> str:
        msgs = self.to(address)
        assert msgs, f"no mail to {address}"
        match = re.search(r"verification code is: (\d{6})", msgs[-1].body)
        assert match, msgs[-1].body
        return match.group(1)

    def last_reset_token(self, address: str) -> str:
        msgs = self.to(address)
        assert msgs, f"no mail to {address}"
        match = re.search(r"/reset-password\?token=([A-Za-z0-9_\-]+)", msgs[-1].body)
        assert match, msgs[-1].body
        return match.group(1)
