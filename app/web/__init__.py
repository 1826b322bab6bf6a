"""The HTTP edge that is not the user API: Twilio's requests (twilio.py, behind the one
signature dependency in twilio_signature.py) and the flat route table (routing.py)."""
