"""Phone numbers: add-number against the Twilio stand-in, lookups, ownership and races."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from app.models import PhoneNumber
from tests.factories import api_key_for, assert_error, verified_account

NUMBER = "+14155550100"
OTHER = "+14155550199"


@pytest.fixture
def settings_overrides(twilio_standin) -> dict[str, Any]:
    return twilio_standin.settings_overrides()


async def new_user(client, mailbox) -> dict[str, str]:
    acct = await verified_account(client, mailbox)
    return {"x-api-key": await api_key_for(client, acct)}


async def new_agent(client, key, project: str | None = None, name: str = "Jack") -> tuple[str, str]:
    if project is None:
        r = await client.post(
            "/project/create-project", json={"name": f"P-{uuid.uuid4().hex[:6]}"}, headers=key
        )
        project = r.json()["data"]["id"]
    r = await client.post(
        "/agent/create-agent",
        json={"name": name, "systemInstruction": "Hi", "projectId": project},
        headers=key,
    )
    assert r.status_code == 200, r.text
    return project, r.json()["data"]["id"]


async def add(client, key, project, agent, e164=NUMBER):
    return await client.post(
        "/phone-number/add-number",
        json={"e164": e164, "agentId": agent, "projectId": project},
        headers=key,
    )


async def rows(app) -> list[PhoneNumber]:
    async with app.state.ctx.sessionmaker() as s:
        return list((await s.execute(select(PhoneNumber))).scalars())


@pytest.fixture
async def alice(client, mailbox):
    return await new_user(client, mailbox)


async def test_add_incoming_number(client, alice, twilio_standin, app):
    sid = twilio_standin.add_incoming_number(NUMBER)
    project, agent = await new_agent(client, alice)
    r = await add(client, alice, project, agent)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == "PhoneNumber assigned successfully."
    data = body["data"]
    assert data["e164"] == NUMBER and data["status"] == "AVAILABLE"
    assert data["projectId"] == project and data["agentId"] == agent
    # What Twilio was asked: the exact number, then its voice URL pointed at this server.
    listing = twilio_standin.requests_to("/IncomingPhoneNumbers.json", "GET")
    assert listing and listing[0].param("PhoneNumber") == NUMBER
    update = twilio_standin.incoming_number(sid)
    assert update["voice_url"] == "https://talkstack.test/twilio/voice/inbound"
    assert update["voice_method"] == "POST"
    assert update["status_callback"] == "https://talkstack.test/twilio/voice/status"
    assert update["status_callback_method"] == "POST"
    (row,) = await rows(app)
    assert row.twilio_kind == "incoming" and row.twilio_sid == sid
    r = await client.post("/agent", json={"projectId": project, "agentId": agent}, headers=alice)
    assert r.json()["phoneNumber"] == NUMBER


async def test_add_verified_caller_id(client, alice, twilio_standin, app):
    twilio_standin.add_caller_id(NUMBER)
    project, agent = await new_agent(client, alice)
    r = await add(client, alice, project, agent)
    assert r.status_code == 200, r.text
    assert twilio_standin.requests_to("/OutgoingCallerIds.json", "GET")
    assert not [req for req in twilio_standin.requests if req.method == "POST"]
    (row,) = await rows(app)
    assert row.twilio_kind == "caller_id"


@pytest.mark.parametrize(
    "raw",
    [
        "12345",
        "4155550100",  # no country code
        "+1415555010",  # too short for the US
        "+44 20 7123 456",  # wrong length for the UK
        "+14155550100 ext. 5",
        "+1-800-FLOWERS",
        "+999123456",  # no such country code
        "phone",
        "+" + "1" * 30,
    ],
)
async def test_invalid_numbers_are_400_and_twilio_is_not_asked(
    client, alice, twilio_standin, app, raw
):
    project, agent = await new_agent(client, alice)
    r = await add(client, alice, project, agent, raw)
    assert r.status_code == 400, r.text
    assert r.json()["code"] in ("INVALID_PHONE_NUMBER", "VALIDATION_ERROR")
    assert twilio_standin.requests == []
    assert await rows(app) == []


async def test_number_without_voice_is_refused(client, alice, twilio_standin, app):
    twilio_standin.add_incoming_number(NUMBER, voice=False)
    project, agent = await new_agent(client, alice)
    assert_error(await add(client, alice, project, agent), 400, "NUMBER_NOT_VOICE_CAPABLE")
    assert not twilio_standin.requests_to(".json", "POST")
    assert await rows(app) == []


async def test_number_not_on_account(client, alice, twilio_standin, app):
    twilio_standin.add_incoming_number(OTHER)
    project, agent = await new_agent(client, alice)
    assert_error(await add(client, alice, project, agent), 400, "NUMBER_NOT_IN_ACCOUNT")
    assert await rows(app) == []


async def test_taken_by_another_user_is_409(client, mailbox, alice, twilio_standin, app):
    twilio_standin.add_incoming_number(NUMBER)
    p1, a1 = await new_agent(client, alice)
    assert (await add(client, alice, p1, a1)).status_code == 200
    bob = await new_user(client, mailbox)
    p2, a2 = await new_agent(client, bob)
    assert_error(await add(client, bob, p2, a2), 409, "NUMBER_TAKEN")
    # ...and by another project of the same user.
    p3, a3 = await new_agent(client, alice)
    assert_error(await add(client, alice, p3, a3), 409, "NUMBER_TAKEN")
    (row,) = await rows(app)
    assert str(row.agent_id) == a1


async def test_reassign_within_project_moves_it(client, alice, twilio_standin, app):
    twilio_standin.add_incoming_number(NUMBER)
    project, first = await new_agent(client, alice)
    _, second = await new_agent(client, alice, project, "Second")
    assert (await add(client, alice, project, first)).status_code == 200
    r = await add(client, alice, project, second)
    assert r.status_code == 200 and r.json()["data"]["agentId"] == second
    (row,) = await rows(app)
    assert str(row.agent_id) == second
    # Same agent again: nothing changes.
    assert (await add(client, alice, project, second)).json()["data"]["id"] == str(row.id)


async def test_new_number_replaces_the_agents_old_one(client, alice, twilio_standin, app):
    twilio_standin.add_incoming_number(NUMBER)
    twilio_standin.add_incoming_number(OTHER)
    project, agent = await new_agent(client, alice)
    await add(client, alice, project, agent, NUMBER)
    await add(client, alice, project, agent, OTHER)
    assert [r.e164 for r in await rows(app)] == [OTHER]


@pytest.mark.parametrize("status,code", [(500, 20500), (503, 20503), (401, 20003)])
async def test_twilio_failure_is_502_and_writes_nothing(
    client, alice, twilio_standin, app, status, code
):
    twilio_standin.add_incoming_number(NUMBER)
    project, agent = await new_agent(client, alice)
    twilio_standin.fail_next(1, status=status, code=code)
    r = await add(client, alice, project, agent)
    assert r.status_code == 502, r.text
    assert r.json()["code"] == "TWILIO_ERROR" and "Twilio" in r.json()["message"]
    assert await rows(app) == []


async def test_concurrent_add_number_leaves_one_owner(client, mailbox, twilio_standin, app):
    twilio_standin.add_incoming_number(NUMBER)
    users = [await new_user(client, mailbox) for _ in range(3)]
    targets = [(u, *(await new_agent(client, u))) for u in users]
    results = await asyncio.gather(*(add(client, u, p, a) for u, p, a in targets))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 409, 409], [r.text for r in results]
    assert len(await rows(app)) == 1


async def test_lookup_by_each_key(client, alice, twilio_standin):
    twilio_standin.add_incoming_number(NUMBER)
    twilio_standin.add_incoming_number(OTHER)
    project, a1 = await new_agent(client, alice)
    _, a2 = await new_agent(client, alice, project, "Two")
    n1 = (await add(client, alice, project, a1, NUMBER)).json()["data"]
    n2 = (await add(client, alice, project, a2, OTHER)).json()["data"]
    r = await client.post("/phone-number", json={"phoneNumberId": n2["id"]}, headers=alice)
    assert r.status_code == 200
    assert r.json() == {
        "message": "Phone number details fetched successfully.",
        "status": "success",
        "data": n2,
        "numbers": None,
    }
    r = await client.post("/phone-number", json={"agentId": a1}, headers=alice)
    assert r.json()["data"] == n1
    r = await client.post("/phone-number", json={"projectId": project}, headers=alice)
    assert r.json()["data"] == n1 and r.json()["numbers"] == [n1, n2]
    # Precedence: phoneNumberId, then agentId, then projectId.
    r = await client.post(
        "/phone-number",
        json={"projectId": project, "agentId": a2, "phoneNumberId": n1["id"]},
        headers=alice,
    )
    assert r.json()["data"] == n1
    r = await client.post(
        "/phone-number", json={"projectId": project, "agentId": a2}, headers=alice
    )
    assert r.json()["data"] == n2


async def test_lookup_errors(client, alice):
    r = await client.post("/phone-number", json={}, headers=alice)
    assert r.status_code == 400
    project, agent = await new_agent(client, alice)
    for body in ({"agentId": agent}, {"projectId": project}, {"phoneNumberId": str(uuid.uuid4())}):
        assert_error(
            await client.post("/phone-number", json=body, headers=alice),
            404,
            "PHONE_NUMBER_NOT_FOUND",
        )


# --- releasing numbers: Twilio stops sending their calls here ---------------------------------


def points_here(record: dict[str, Any]) -> bool:
    return bool(record["voice_url"] == "https://talkstack.test/twilio/voice/inbound")


def cleared(record: dict[str, Any]) -> bool:
    return record["voice_url"] == "" and record["status_callback"] == ""


async def test_deleting_an_agent_clears_its_numbers_voice_url(client, alice, twilio_standin, app):
    sid = twilio_standin.add_incoming_number(NUMBER)
    project, agent = await new_agent(client, alice)
    assert (await add(client, alice, project, agent)).status_code == 200
    assert points_here(twilio_standin.incoming_number(sid))
    r = await client.request(
        "DELETE", "/agent", json={"projectId": project, "agentId": agent}, headers=alice
    )
    assert r.status_code == 200, r.text
    assert cleared(twilio_standin.incoming_number(sid))
    assert await rows(app) == []


async def test_giving_an_agent_another_number_clears_the_old_one(
    client, alice, twilio_standin, app
):
    old = twilio_standin.add_incoming_number(NUMBER)
    new = twilio_standin.add_incoming_number(OTHER)
    project, agent = await new_agent(client, alice)
    assert (await add(client, alice, project, agent)).status_code == 200
    assert (await add(client, alice, project, agent, OTHER)).status_code == 200
    assert cleared(twilio_standin.incoming_number(old))
    assert points_here(twilio_standin.incoming_number(new))
    assert [row.e164 for row in await rows(app)] == [OTHER]


async def two_agents_with_numbers(client, alice, twilio_standin) -> tuple[str, list[str]]:
    """A project whose two agents have a Twilio number each: (project id, number SIDs)."""
    sids = [twilio_standin.add_incoming_number(n) for n in (NUMBER, OTHER)]
    project, first = await new_agent(client, alice)
    _, second = await new_agent(client, alice, project, name="Jill")
    assert (await add(client, alice, project, first)).status_code == 200
    assert (await add(client, alice, project, second, OTHER)).status_code == 200
    return project, sids


async def test_deleting_a_project_with_cascade_clears_every_number(
    client, alice, twilio_standin, app
):
    project, sids = await two_agents_with_numbers(client, alice, twilio_standin)
    r = await client.request("DELETE", f"/project/{project}", json={"cascade": True}, headers=alice)
    assert r.status_code == 200, r.text
    assert all(cleared(twilio_standin.incoming_number(sid)) for sid in sids)
    assert await rows(app) == []


async def test_a_caller_id_number_is_released_without_asking_twilio(
    client, alice, twilio_standin, app
):
    twilio_standin.add_caller_id(NUMBER)
    project, agent = await new_agent(client, alice)
    assert (await add(client, alice, project, agent)).status_code == 200
    before = len(twilio_standin.requests)
    r = await client.request(
        "DELETE", "/agent", json={"projectId": project, "agentId": agent}, headers=alice
    )
    assert r.status_code == 200, r.text
    assert twilio_standin.requests[before:] == []
    assert await rows(app) == []


async def test_twilio_refusing_the_release_changes_nothing(client, alice, twilio_standin, app):
    project, sids = await two_agents_with_numbers(client, alice, twilio_standin)
    # The first number is cleared, the second refused: the first is pointed back here.
    twilio_standin.hang_next(1, seconds=0)
    twilio_standin.fail_next(1, status=500)
    r = await client.request("DELETE", f"/project/{project}", json={"cascade": True}, headers=alice)
    assert r.status_code == 502, r.text
    assert r.json()["status"] == "error"
    assert all(points_here(twilio_standin.incoming_number(sid)) for sid in sids)
    assert sorted(row.e164 for row in await rows(app)) == sorted([NUMBER, OTHER])
    r = await client.get(f"/project/{project}", headers=alice)
    assert r.status_code == 200


async def test_twilio_refusing_to_release_the_old_number_keeps_the_agents_number(
    client, alice, twilio_standin, app
):
    old = twilio_standin.add_incoming_number(NUMBER)
    new = twilio_standin.add_incoming_number(OTHER)
    project, agent = await new_agent(client, alice)
    assert (await add(client, alice, project, agent)).status_code == 200
    # The lookup of the new number and its pointing pass; clearing the old one is refused.
    twilio_standin.hang_next(2, seconds=0)
    twilio_standin.fail_next(1, status=500)
    r = await add(client, alice, project, agent, OTHER)
    assert r.status_code == 502, r.text
    assert points_here(twilio_standin.incoming_number(old))
    assert cleared(twilio_standin.incoming_number(new))  # pointed, then let go again
    assert [(row.e164, str(row.agent_id)) for row in await rows(app)] == [(NUMBER, agent)]
