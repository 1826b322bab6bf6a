"""The TwiML that hands a call to ConversationRelay and this server's WebSocket."""

from __future__ import annotations

from app.context import AppContext
from app.integrations.twilio import twiml
from app.models import Agent, Call

RELAY_PATH = "/twilio/calls/{call_id}/relay"


def ws_base(public_base_url: str) -> str:
    if public_base_url.startswith("https://"):
        return "wss://" + public_base_url.removeprefix("https://")
    return "ws://" + public_base_url.removeprefix("http://")


def relay_twiml(ctx: AppContext, call: Call, agent: Agent | None, *, resumed: bool = False) -> str:
    """What Twilio does once the call connects: hand it to ConversationRelay and our socket.

    `resumed`: a call already under way goes back to the agent (a transfer nobody took):
    no greeting, and no second recording of an inbound call (the first one still runs)."""
    if agent is None:
        return twiml.say_and_hang_up(call.first_message)
    base = ctx.settings.public_base_url
    spec = twiml.RelaySpec(
        websocket_url=ws_base(base) + RELAY_PATH.format(call_id=call.id),
        action_url=f"{base}/twilio/calls/{call.id}/relay-ended",
        voice_id=agent.voice_id,
        language=agent.language,
        welcome_greeting=None if resumed else call.first_message,
        parameters={
            "callId": str(call.id),
            "projectId": str(call.project_id),
            "agentId": str(agent.id),
            "direction": call.direction,
        },
        # An outbound call is recorded from its creation (the REST API's Record); an inbound
        # one only by its TwiML.
        recording_callback=(
            f"{base}/twilio/calls/{call.id}/recording"
            if call.direction == "inbound" and not resumed
            else None
        ),
    )
    return twiml.conversation_relay(spec)
