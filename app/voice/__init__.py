"""Voices: the ElevenLabs voice catalogue agents speak with."""
