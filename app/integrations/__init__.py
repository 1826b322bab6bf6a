"""The outside systems, one door each: an adapter behind a Protocol, built once in the
lifespan (app/main.py build_context) and reached through AppContext.

- twilio/: telephony (port.Telephony; port.NoTelephony when Twilio is not configured: every
  method raises TelephonyNotConfigured, 503), TwiML, and Twilio's errors mapped to ours.
- llm.py: the language model (LanguageModel; any OpenAI-compatible server).
- elevenlabs.py: the voice catalogue (VoiceCatalogue; ElevenLabs' premade voices when no key).
- smtp.py: mail (Mailer; LogMailer when no SMTP server is configured).
- hubspot/: the HubSpot CRM client and its errors mapped to ours.
- webhooks/: users' receivers: project webhooks (sender.py), custom tools (tools.py), the
  SSRF guard (ssrf.py) and URL rules (url.py).

Nothing here imports a domain package (app/call, app/batch, ...): the domain calls out.
"""
