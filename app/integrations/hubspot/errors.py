"""What goes wrong with HubSpot, as the API answers it (docs/api/errors.md)."""

from __future__ import annotations

from app.errors import BadRequest, NotFound, UpstreamError


class HubSpotNotConnected(BadRequest):
    code = "HUBSPOT_NOT_CONNECTED"
    message = "The project has no working HubSpot connection: connect it with /hubspot/connect."


class HubSpotTokenInvalid(BadRequest):
    code = "HUBSPOT_TOKEN_INVALID"
    message = "HubSpot refused the access token."


class HubSpotContactNotFound(NotFound):
    code = "HUBSPOT_CONTACT_NOT_FOUND"
    message = "HubSpot has no such contact in the project's account."


class HubSpotContactHasNoNumber(BadRequest):
    code = "HUBSPOT_CONTACT_HAS_NO_NUMBER"
    message = (
        "The HubSpot contact has no phone or mobile phone number that is a valid full number "
        "with its country code (e.g. +14155550100)."
    )


class HubSpotUpstreamError(UpstreamError):
    code = "HUBSPOT_ERROR"
    message = "HubSpot could not complete the request; try again later."
