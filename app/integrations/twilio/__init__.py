"""Twilio: the adapter (the only importer of `twilio`), its port and not-configured stand-in,
its TwiML and its errors."""
