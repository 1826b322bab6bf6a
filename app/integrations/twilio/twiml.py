"""TwiML documents, written with the official SDK's builder (escaping included)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from twilio.twiml.voice_response import Connect, VoiceResponse


@dataclass(frozen=True)
class RelaySpec:
    """How Twilio should run the conversation: where to connect, which voice, what to say."""

    websocket_url: str
    action_url: str
    voice_id: str
    language: str
    welcome_greeting: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    # Where Twilio posts the finished recording, when the TwiML itself starts one
    # (`<Start><Recording>`): for calls not recorded from their creation (inbound calls).
    recording_callback: str | None = None


def conversation_relay(spec: RelaySpec) -> str:
    """`<Connect><ConversationRelay>`: Twilio transcribes the callee and speaks our text tokens
    with ElevenLabs; either side may interrupt; keypad presses are reported."""
    response = VoiceResponse()
    if spec.recording_callback:
        # Recording starts before the relay, so the whole conversation is in it.
        response.start().recording(
            recording_status_callback=spec.recording_callback,
            recording_status_callback_method="POST",
            recording_status_callback_event="completed",
        )
    connect = Connect(action=spec.action_url, method="POST")
    attributes: dict[str, str] = {}
    if spec.welcome_greeting:
        attributes["welcome_greeting"] = spec.welcome_greeting
        attributes["welcome_greeting_interruptible"] = "any"
    relay = connect.conversation_relay(
        url=spec.websocket_url,
        tts_provider="ElevenLabs",
        voice=spec.voice_id,
        language=spec.language,
        interruptible="any",
        dtmf_detection=True,
        **attributes,
    )
    for name, value in spec.parameters.items():
        relay.parameter(name=name, value=value)
    response.append(connect)
    return str(response.to_xml())


def say_and_hang_up(text: str | None, language: str = "en-US") -> str:
    response = VoiceResponse()
    if text:
        response.say(text, language=language)
    response.hangup()
    return str(response.to_xml())


def hang_up() -> str:
    return say_and_hang_up(None)


def dial(number: str, *, caller_id: str, action: str, timeout_seconds: int = 30) -> str:
    """`<Dial>` the number (a cold transfer): the call goes on between the two people. When
    the dialed call ends (or never starts), Twilio asks `action` (POST, signed) what comes
    next, with the dialed call's SID, status and duration."""
    response = VoiceResponse()
    response.dial(
        number,
        caller_id=caller_id,
        timeout=timeout_seconds,
        answer_on_bridge=True,
        action=action,
        method="POST",
    )
    return str(response.to_xml())


def say_then(text: str, then_url: str, language: str = "en-US") -> str:
    """Say `text`, then ask `then_url` (POST, signed) what comes next: the warm transfer's
    briefing, after which the server puts the human through (or not)."""
    response = VoiceResponse()
    response.say(text, language=language)
    response.redirect(then_url, method="POST")
    return str(response.to_xml())


def conference(name: str, *, starts_it: bool, joined_callback: str | None = None) -> str:
    """Join conference `name` (a warm transfer): the callee waits in it with hold music
    (`starts_it` False) until the human, briefed first, joins and starts it. Either leaving
    ends it. With `joined_callback`, Twilio posts its `participant-join` event there (the
    Conference noun's statusCallback)."""
    response = VoiceResponse()
    dial = response.dial()
    events: dict[str, str] = {}
    if joined_callback is not None:
        events = {
            "status_callback": joined_callback,
            "status_callback_event": "join",
            "status_callback_method": "POST",
        }
    dial.conference(
        name,
        start_conference_on_enter=starts_it,
        end_conference_on_exit=True,
        beep=False,
        **events,
    )
    return str(response.to_xml())
