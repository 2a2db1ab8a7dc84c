"""Several Twitch channels on one bot account: the real twitchio client (one client, one EventSub session)
against the fake Twitch serving several chats, first through `bot.chat.twitch.TwitchConnection`, then the
whole `concertbot run` with two `[[channels]]` (real model, engine, FluidSynth and Redis server)."""

from __future__ import annotations

import asyncio
import re
import unittest.mock
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from chat_rig import HAS_REDIS, REDIS_URL, drop_namespace
from fake_twitch import CHAT, FakeTwitch, SentChat

from bot.app import Concert, run_concert
from bot.chat.message import ChatMessage
from bot.chat.sendqueue import Importance, Outgoing, Sender, SendQueue, SendWindow
from bot.chat.twitch import TwitchConnection, TwitchError
from config import load_settings
from config.errors import ConfigError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
ROOMS = ("north", "south", "east", "west")
ANY_ID = unittest.mock.ANY


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwitch]:
    async with FakeTwitch(channel=ROOMS[0], channels=ROOMS[1:]) as server:
        yield server


class Inbox:
    """Collects what one channel's `on_message` is handed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ChatMessage] = asyncio.Queue()

    async def __call__(self, message: ChatMessage) -> None:
        await self.queue.put(message)

    async def next(self, timeout: float = 5.0) -> ChatMessage:
        return await asyncio.wait_for(self.queue.get(), timeout)


async def test_one_session_carries_every_channel_and_each_hears_only_its_own_chat(fake: FakeTwitch) -> None:
    inboxes = {room: Inbox() for room in ROOMS}
    async with TwitchConnection(fake.settings()) as link:
        joined = {room: await link.join(room, inboxes[room]) for room in ROOMS}
        # Four chats where Twitch lets a user open three sessions: they ride on one.
        (session,) = fake.sessions()
        chats = [s for s in fake.subscriptions() if s["type"] == CHAT and s["status"] == "enabled"]
        assert {s["condition"]["broadcaster_user_id"] for s in chats} == {fake.user(r).id for r in ROOMS}
        assert {s["transport"]["session_id"] for s in chats} == {session}

        said = {room: await fake.say("ada", f"hello {room}", channel=room) for room in reversed(ROOMS)}
        for room in ROOMS:
            got = await inboxes[room].next()
            assert (got.text, got.message_id) == (f"hello {room}", said[room])
            assert inboxes[room].queue.empty()

        # The owner of south is its broadcaster there and a viewer in north.
        await fake.say("south", "!stop", channel="south")
        await fake.say("south", "!stop", channel="north")
        assert (await inboxes["south"].next()).is_broadcaster
        assert not (await inboxes["north"].next()).is_broadcaster

        # A reply goes to the chat it answers, and its echo is passed on nowhere.
        sent = await joined["east"].send("@ada hello from east", reply_to=said["east"])
        posted = await fake.wait_for_sent(lambda m: m.message_id == sent)
        assert (posted.broadcaster_id, posted.reply_to, posted.is_sent) == (
            fake.user("east").id,
            said["east"],
            True,
        )
        for room in ROOMS:
            await fake.say("bob", f"after {room}", channel=room)
            assert (await inboxes[room].next()).text == f"after {room}"


async def test_the_bot_is_a_moderator_only_where_it_moderates(fake: FakeTwitch) -> None:
    fake.moderate(fake.bot.login, "south")
    inboxes = {room: Inbox() for room in ("north", "south")}
    async with TwitchConnection(fake.settings()) as link:
        north, south = [await link.join(room, inbox) for room, inbox in inboxes.items()]
        await north.send("hello north")
        await south.send("hello south")
        for room, inbox in inboxes.items():
            await fake.say("ada", "hi", channel=room)  # read after the echo: notifications come in order
            assert (await inbox.next()).text == "hi"
        assert (north.bot_is_moderator, south.bot_is_moderator) == (False, True)


async def test_after_a_drop_every_channel_is_heard_again(fake: FakeTwitch) -> None:
    inboxes = {room: Inbox() for room in ("north", "west")}
    async with TwitchConnection(fake.settings()) as link:
        for room, inbox in inboxes.items():
            await link.join(room, inbox)
        (old,) = await fake.drop_socket()
        for room, inbox in inboxes.items():
            await fake.say("ada", f"still there, {room}?", channel=room)  # waits for the resubscription
            assert (await inbox.next()).text == f"still there, {room}?"
        (new,) = fake.sessions()
        live = [s for s in fake.subscriptions() if s["type"] == CHAT and s["status"] == "enabled"]
        assert new != old and len(live) == 2 and {s["transport"]["session_id"] for s in live} == {new}


async def test_in_a_shared_chat_a_line_is_handled_once_where_it_was_typed(fake: FakeTwitch) -> None:
    inboxes = {room: Inbox() for room in ("north", "south")}
    async with TwitchConnection(fake.settings()) as link:
        for room, inbox in inboxes.items():
            await link.join(room, inbox)
        # north and south share their chat: Twitch delivers ada's line to both subscriptions.
        said = await fake.say("ada", "!compose bach", channel="north", shared_with=("south",))
        # east (shared with south, read by no channel of this bot) reaches south as any chatter would.
        await fake.say("eve", "!vote", channel="east", shared_with=("south",))
        await fake.say("bob", "mark", channel="north")
        await fake.say("bob", "mark", channel="south")
        got = {room: [await inbox.next(), await inbox.next()] for room, inbox in inboxes.items()}
        assert [(m.text, m.message_id) for m in got["north"]] == [("!compose bach", said), ("mark", ANY_ID)]
        assert [m.text for m in got["south"]] == ["!vote", "mark"]


async def test_a_channel_joined_twice_or_unknown_is_a_config_error(fake: FakeTwitch) -> None:
    async with TwitchConnection(fake.settings()) as link:
        await link.join("north", Inbox())
        with pytest.raises(ConfigError, match="reads #north already"):
            await link.join("north", Inbox(), setting="channels 'b': twitch_channel")
        with pytest.raises(ConfigError, match="channels 'c': twitch_channel='nobody' is not a Twitch account"):
            await link.join("nobody", Inbox(), setting="channels 'c': twitch_channel")


async def test_twitch_counts_the_accounts_lines_over_every_channel(fake: FakeTwitch) -> None:
    # The control for the shared queue window below: 20 lines split over two chats fill the account's limit.
    async with TwitchConnection(fake.settings()) as link:
        north, south = await link.join("north", Inbox()), await link.join("south", Inbox())
        for i in range(10):
            await north.send(f"north {i}")
            await south.send(f"south {i}")
        with pytest.raises(TwitchError, match="msg_rate_limit"):
            await south.send("one too many")
        fake.moderate(fake.bot.login, "north")
        await north.send("a moderator may send 100")  # each line checked against its own channel's limit


def test_a_channel_where_the_bot_is_no_moderator_waits_while_the_account_has_sent_18() -> None:
    sends = SendWindow()
    north, south = SendQueue(moderator=True, sent=sends), SendQueue(sent=sends)
    for i in range(25):
        north.push(f"north {i}", Importance.INFO, now=0.0)
    assert [north.pop_ready(0.0) is not None for _ in range(25)] == [True] * 25  # 90 where it moderates
    south.push("south 0", Importance.INFO, now=0.0)
    assert south.pop_ready(0.0) is None and south.next_ready_at(0.0) == south.span  # 25 sent >= its 18
    assert south.pop_ready(south.span) == Outgoing("south 0", Importance.INFO)
    assert len(sends) == 1  # the 25 left the window; south's line is counted for north too


async def _paced(fake: FakeTwitch, window: float, shared: bool) -> list[SentChat]:
    """25 lines in each of two chats through a Sender each, their queues counting together or apart."""
    sends = SendWindow() if shared else None
    async with TwitchConnection(fake.settings()) as link:
        north, south = await link.join("north", Inbox()), await link.join("south", Inbox())
        north_queue, south_queue = (SendQueue(window=window, sent=sends) for _ in range(2))
        async with Sender(north_queue, north.send) as to_north, Sender(south_queue, south.send) as to_south:
            for i in range(25):
                to_north.say(f"north {i}", Importance.INFO)
                to_south.say(f"south {i}", Importance.INFO)
            await fake.wait_for_sent(lambda m: m.text == "north 24", timeout=30 * window)
            await fake.wait_for_sent(lambda m: m.text == "south 24", timeout=30 * window)
    return list(fake.sent)


async def test_the_channels_queues_pace_the_account_so_twitch_drops_nothing() -> None:
    window = 1.5
    async with FakeTwitch(channel="north", channels=("south",), rate_window=window) as fake:
        sent = await _paced(fake, window, shared=True)
    assert sorted(m.text for m in sent) == sorted(f"{r} {i}" for r in ("north", "south") for i in range(25))
    assert all(m.is_sent for m in sent)
    # The lines of each chat reached it in the order they were said.
    for room in ("north", "south"):
        assert [m.text for m in sent if m.text.startswith(room)] == [f"{room} {i}" for i in range(25)]


async def test_queues_counting_apart_get_lines_dropped() -> None:
    # What a queue per channel with its own count does: each allows itself 18 lines, the account sends 36.
    window = 60.0
    async with FakeTwitch(channel="north", channels=("south",), rate_window=window) as fake:
        async with TwitchConnection(fake.settings()) as link:
            north, south = await link.join("north", Inbox()), await link.join("south", Inbox())
            apart = [SendQueue(window=window), SendQueue(window=window)]
            async with Sender(apart[0], north.send) as to_north, Sender(apart[1], south.send) as to_south:
                for i in range(18):
                    to_north.say(f"north {i}", Importance.INFO)
                    to_south.say(f"south {i}", Importance.INFO)
                await fake.wait_for_sent(lambda m: not m.is_sent, timeout=20)
        assert len([m for m in fake.sent if m.is_sent]) == 20


# --- concertbot run with two channels on one bot account ----------------------------------------------------

NO_COOLDOWNS = {"viewer_cooldown_seconds": 0.0, "global_cooldown_seconds": 0.0, "error_reply_seconds": 0.0}


async def _deployment(
    fake: FakeTwitch, tmp_path: Path, namespace: str
) -> tuple[asyncio.Task[None], dict[str, Any]]:
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        sampling={"seconds": 60.0},  # the first piece outlasts the test
        concert={"redis_url": REDIS_URL, "autoplay": False, **NO_COOLDOWNS},
        outputs={"device": "off"},
        channels=[
            {"name": "a", "twitch_channel": "north", "concert": {"http_port": 0}},
            {"name": "b", "twitch_channel": "south", "concert": {"http_port": 0}},
        ],
    )
    ready: asyncio.Future[dict[str, Concert]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_concert(settings, fake.settings(), namespace=namespace, channels_started=ready.set_result)
    )
    either: list[asyncio.Future[Any]] = [ready, task]
    done, _ = await asyncio.wait(either, timeout=90, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    if not ready.done():
        task.cancel()
        raise TimeoutError("the channels did not start within 90 s")
    return task, ready.result()


@pytest.mark.skipif(not HAS_REDIS, reason="needs the Redis server on 127.0.0.1:6379")
@pytest.mark.timeout(240)
async def test_two_channels_each_get_their_reply_piece_and_board(fake: FakeTwitch, tmp_path: Path) -> None:
    namespace = f"twch-{uuid.uuid4().hex[:8]}"
    north_id, south_id = fake.user("north").id, fake.user("south").id

    def in_chat(room_id: str, reply_to: str | None = None, has: str = "") -> Any:
        return lambda m: (
            m.broadcaster_id == room_id and (reply_to is None or m.reply_to == reply_to) and has in m.text
        )

    task, concerts = await _deployment(fake, tmp_path, namespace)
    try:
        a, b = concerts["a"], concerts["b"]
        (session,) = fake.sessions()  # one bot account, one EventSub session for both chats
        assert {s["transport"]["session_id"] for s in fake.subscriptions() if s["type"] == CHAT} == {session}

        asked_a = await fake.say("ada", "!compose bach violin", channel="north")
        asked_b = await fake.say("bob", "!compose irish flute", channel="south")
        ack_a = await fake.wait_for_sent(in_chat(north_id, asked_a), timeout=15)
        ack_b = await fake.wait_for_sent(in_chat(south_id, asked_b), timeout=15)
        assert "@ada" in ack_a.text and "bach" in ack_a.text and "#1 in the queue" in ack_a.text
        assert "@bob" in ack_b.text and "irish" in ack_b.text and "#1 in the queue" in ack_b.text

        playing_a = await fake.wait_for_sent(in_chat(north_id, has="now playing"), timeout=60)
        playing_b = await fake.wait_for_sent(in_chat(south_id, has="now playing"), timeout=60)
        assert "@ada" in playing_a.text and "bach" in playing_a.text and "@bob" not in playing_a.text
        assert "@bob" in playing_b.text and "irish" in playing_b.text and "@ada" not in playing_b.text
        seed_a = int(re.search(r"seed (\d+)", playing_a.text).group(1))  # type: ignore[union-attr]
        seed_b = int(re.search(r"seed (\d+)", playing_b.text).group(1))  # type: ignore[union-attr]
        assert a.conductor.current is not None and a.conductor.current.record.seed == seed_a
        assert b.conductor.current is not None and b.conductor.current.record.seed == seed_b
        assert a.conductor.current.record.recipe.style == "bach"
        assert b.conductor.current.record.recipe.style == "irish"

        # Votes in north count for north's piece only, and south's board does not show them.
        await asyncio.gather(*(fake.say(f"viewer{i}", "!vote", channel="north") for i in range(3)))
        async with asyncio.timeout(15):
            while await a.store.votes(seed_a) < 3:
                await asyncio.sleep(0.05)
        assert (await b.store.votes(seed_a), await b.store.votes(seed_b)) == (0, 0)
        top_a = await fake.say("cyd", "!top", channel="north")
        top_b = await fake.say("cyd", "!top", channel="south")
        board_a = await fake.wait_for_sent(in_chat(north_id, top_a), timeout=15)
        board_b = await fake.wait_for_sent(in_chat(south_id, top_b), timeout=15)
        assert f"#1 {seed_a} (bach, 3)" in board_a.text
        assert str(seed_a) not in board_b.text and "no votes" in board_b.text

        # A bad command in north gets one short reply there, and nothing is said in south about it.
        before = len(fake.sent)
        bad = await fake.say("dee", "!compose nosuchstyle", channel="north")
        error = await fake.wait_for_sent(lambda m: m.reply_to == bad, timeout=15)
        assert error.broadcaster_id == north_id and error.text.startswith("@dee") and len(error.text) < 200
        mark = await fake.say("dee", "!queue", channel="south")  # south answers this after anything it had
        await fake.wait_for_sent(in_chat(south_id, mark), timeout=15)
        later = fake.sent[before:]
        assert [m for m in later if m.broadcaster_id == south_id and m.reply_to != mark] == []
        assert [m.reply_to for m in later if m.reply_to == bad] == [bad]
        assert all(m.is_sent for m in fake.sent)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for name in ("a", "b"):
            await drop_namespace(f"{namespace}.{name}")


async def test_two_channels_reading_one_chat_stop_the_start(fake: FakeTwitch, tmp_path: Path) -> None:
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        outputs={"device": "off"},
        channels=[
            {"name": "a", "twitch_channel": "north", "concert": {"http_port": 0}},
            {"name": "b", "twitch_channel": "#North", "concert": {"http_port": 0}},
        ],
    )
    with pytest.raises(ConfigError, match="channels 'a' and 'b' both read twitch_channel 'north'"):
        await run_concert(settings, fake.settings())
    assert fake.sessions() == [] and fake.sent == []
