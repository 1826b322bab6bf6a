"""Twilio's call statuses as a state machine that only moves forward.

Callbacks can arrive late, twice or out of order; Twilio numbers them (SequenceNumber) per
call. A final status is never replaced by an earlier one (`completed` never goes back to
`ringing`); our own final refinements (`voicemail`, `silence`) replace only `completed`.
"""

from __future__ import annotations

from app.models.call import CallStatus as CallStatus  # defined with the column it fills

# The status callback, the busiest request, checks these on every callback: they hold the plain
# str values, since a set of exact str is the fastest lookup there is and, on Python 3.11, each
# `CallStatus.X` in a function costs an attribute lookup of ~70 ns.
FINAL = frozenset(
    status.value
    for status in (
        CallStatus.COMPLETED,
        CallStatus.BUSY,
        CallStatus.FAILED,
        CallStatus.NO_ANSWER,
        CallStatus.CANCELED,
        CallStatus.VOICEMAIL,
        CallStatus.SILENCE,
    )
)
_RANK = {
    CallStatus.QUEUED.value: 0,
    CallStatus.INITIATED.value: 1,
    CallStatus.RINGING.value: 2,
    CallStatus.IN_PROGRESS.value: 3,
}
# What Twilio itself may report: every status but our refinements.
TWILIO_STATUSES = frozenset(
    status.value
    for status in CallStatus
    if status not in (CallStatus.VOICEMAIL, CallStatus.SILENCE)
)
_COMPLETED = CallStatus.COMPLETED.value
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
    if twilio_status == _COMPLETED:
        if answered_by in MACHINE:
            return CallStatus.VOICEMAIL
        if ended_reason == "silence":
            return CallStatus.SILENCE
    return twilio_status
