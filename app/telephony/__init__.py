"""Telephony: the Twilio adapter (the only importer of `twilio`), its errors and its dependency."""
