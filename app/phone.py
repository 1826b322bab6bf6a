"""Phone numbers: `phonenumbers` decides what is a valid E.164 number, not a regex."""

from __future__ import annotations

import phonenumbers

from app.errors import BadRequest


def to_e164(raw: str, *, field: str = "e164") -> str:
    """Normalise to E.164 (+14155550100); 400 for anything that is not a valid full number.

    The input must carry its country code ('+'), and extensions are refused rather than
    silently dropped (a call cannot dial one).
    """
    invalid = BadRequest(
        f"{field} is not a valid phone number in E.164 form (e.g. +14155550100).",
        code="INVALID_PHONE_NUMBER",
        errors=[{"field": field, "message": "is not a valid E.164 phone number"}],
    )
    if len(raw) > 40 or any(c.isalpha() for c in raw):  # no vanity letters (1-800-FLOWERS)
        raise invalid
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException as exc:
        raise invalid from exc
    if number.extension or not phonenumbers.is_valid_number(number):
        raise invalid
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
