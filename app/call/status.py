"""Twilio's call statuses as a state machine that only moves forward.

Callbacks can arrive late, twice or out of order; Twilio numbers them (SequenceNumber) per
call. A final status is never replaced by an earlier one (`completed` never goes back to
`ringing`); our own final refinements (`voicemail`, `silence`) replace only `completed`.
"""

from __future__ import annotations

FINAL = frozenset({"completed", "busy", "failed", "no-answer", "canceled", "voicemail", "silence"})
_RANK = {"queued": 0, "initiated": 1, "ringing": 2, "in-progress": 3}
TWILIO_STATUSES = frozenset({*_RANK, "completed", "busy", "failed", "no-answer", "canceled"})
MACHINE = frozenset(
    {"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax"}
)


def rank(status: str) -> int:
    return 4 if status in FINAL else _RANK.get(status, 0)


def advances(current: str, new: str) -> bool:
    """Whether Twilio's `new` status may replace `current`."""
    return new in TWILIO_STATUSES and rank(new) > rank(current)


def final_status(
    twilio_status: str, answered_by: str | None, ended_reason: str | None = None
) -> str:
    """A completed call answered by a machine is `voicemail`; one the agent ended because the
    callee stayed silent is `silence` (docs/api/calls.md)."""
    if twilio_status == "completed" and answered_by in MACHINE:
        return "voicemail"
    if twilio_status == "completed" and ended_reason == "silence":
        return "silence"
    return twilio_status
