"""The chat send queue on literal clocks, and its Sender task on a real one with a short window."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from chat_rig import HAS_REDIS, playing, running_concert, viewer

from bot.chat.sendqueue import MAX_CHARS, Importance, Outgoing, Sender, SendQueue, SendWindow


def drain(queue: SendQueue, start: float, until: float, step: float = 0.25) -> list[tuple[float, Outgoing]]:
    """Everything the queue releases when polled every `step` seconds from `start` to `until`."""
    sent = []
    now = start
    while now <= until:
        while (line := queue.pop_ready(now)) is not None:
            sent.append((now, line))
        now += step
    return sent


def most_in_any_window(times: list[float], window: float = 30.0) -> int:
    return max((sum(t <= s < t + window for s in times) for t in times), default=0)


@pytest.mark.parametrize(("moderator", "limit"), [(False, 20), (True, 100)])
def test_never_more_than_twitchs_limit_in_any_30_seconds(moderator: bool, limit: int) -> None:
    queue = SendQueue(max_len=1000, moderator=moderator, max_age=None)
    for i in range(400):
        queue.push(f"line {i}", Importance.INFO, now=i * 0.1)  # a steady flood while draining
    sent = drain(queue, start=0.0, until=300.0)
    times = [t for t, _ in sent]
    assert most_in_any_window(times) <= limit
    # ...yet it uses most of the allowance (90 % of the limit per 31 s), or sends everything.
    assert len(sent) >= min(400, 9 * queue.budget)


def test_next_ready_at_is_when_the_oldest_send_leaves_the_window() -> None:
    queue = SendQueue(max_age=None)
    assert queue.next_ready_at(0.0) is None
    for i in range(19):
        queue.push(f"line {i}", Importance.INFO, now=0.0)
    assert queue.next_ready_at(0.0) == 0.0
    assert len([queue.pop_ready(float(t)) for t in range(18)]) == 18
    assert queue.pop_ready(18.0) is None
    assert queue.next_ready_at(18.0) == pytest.approx(31.0)  # the send at 0 s leaves the 31 s window
    assert queue.pop_ready(30.9) is None
    assert queue.pop_ready(31.0) == Outgoing("line 18", Importance.INFO)


def test_becoming_moderator_raises_the_pace() -> None:
    queue = SendQueue(max_age=None)
    for i in range(50):
        queue.push(f"line {i}", Importance.INFO, now=0.0)
    assert len(drain(queue, 0.0, 1.0)) == 18
    queue.moderator = True
    assert len(drain(queue, 1.0, 2.0)) == 50 - 18


def test_the_most_important_line_goes_first() -> None:
    queue = SendQueue()
    queue.push("error", Importance.ERROR_REPLY, now=0.0)
    queue.push("now playing", Importance.NOW_PLAYING, now=1.0)
    queue.push("request 1", Importance.REQUEST_ACK, now=2.0)
    queue.push("request 2", Importance.REQUEST_ACK, now=3.0)
    assert [line.text for _, line in drain(queue, 3.0, 3.0)] == [
        "request 1",
        "request 2",
        "now playing",
        "error",
    ]


def test_a_full_queue_drops_the_least_important_then_the_oldest() -> None:
    queue = SendQueue(max_len=3)
    assert queue.push("info old", Importance.INFO, now=0.0) is None
    assert queue.push("ack", Importance.REQUEST_ACK, now=1.0) is None
    assert queue.push("info new", Importance.INFO, now=2.0) is None
    dropped = queue.push("playing", Importance.NOW_PLAYING, now=3.0)
    assert dropped == Outgoing("info old", Importance.INFO)
    # A line less important than everything queued is itself the one dropped.
    assert queue.push("error", Importance.ERROR_REPLY, now=4.0) == Outgoing("error", Importance.ERROR_REPLY)
    assert [line.text for _, line in drain(queue, 4.0, 4.0)] == ["ack", "playing", "info new"]
    assert queue.dropped == 2


def test_stale_lines_are_forgotten() -> None:
    queue = SendQueue(max_age=60.0)
    queue.push("old", Importance.REQUEST_ACK, now=0.0)
    queue.push("fresh", Importance.INFO, now=50.0)
    assert queue.pop_ready(61.0) == Outgoing("fresh", Importance.INFO)
    assert queue.pop_ready(61.0) is None and queue.dropped == 1


def test_similar_acks_merge_into_one_line_and_replies_keep_their_thread() -> None:
    queue = SendQueue()
    queue.push("your vote is counted", Importance.ACK, now=0.0, reply_to="m1", mention="ada")
    queue.push("your vote is counted", Importance.ACK, now=1.0, reply_to="m2", mention="bob")
    queue.push("your vote is counted", Importance.ACK, now=2.0, reply_to="m3", mention="ada")
    queue.push("your piece is #2", Importance.REQUEST_ACK, now=3.0, reply_to="m4", mention="cy")
    queue.push("your piece is #3", Importance.REQUEST_ACK, now=3.0, reply_to="m5", mention="dee")
    queue.push("unknown style", Importance.ERROR_REPLY, now=4.0, reply_to="m6", mention="eve")
    lines = [line for _, line in drain(queue, 4.0, 4.0)]
    assert lines == [
        Outgoing("@cy your piece is #2", Importance.REQUEST_ACK, "m4"),
        Outgoing("@dee your piece is #3", Importance.REQUEST_ACK, "m5"),
        Outgoing("@eve unknown style", Importance.ERROR_REPLY, "m6"),
        Outgoing("@ada @bob your vote is counted", Importance.ACK, None),
    ]


def test_merged_lines_stay_within_twitchs_500_characters() -> None:
    queue = SendQueue(max_len=1000)
    for i in range(200):
        queue.push("your vote is counted", Importance.ACK, now=0.0, mention=f"viewer_number_{i:03d}")
    lines = [line.text for _, line in drain(queue, 0.0, 0.0)]
    assert all(len(text) <= MAX_CHARS for text in lines)
    assert 1 < len(lines) < 20
    assert sum(text.count("@") for text in lines) == 200


def test_long_and_blank_lines() -> None:
    queue = SendQueue()
    assert queue.push("   ", Importance.INFO, now=0.0) is None and len(queue) == 0
    queue.push("x" * 600, Importance.INFO, now=0.0)
    line = queue.pop_ready(0.0)
    assert line is not None and len(line.text) == MAX_CHARS and line.text.endswith("…")


def drain_in_turn(
    queues: dict[str, SendQueue], until: float, step: float = 0.25
) -> list[tuple[float, str, Outgoing]]:
    """Every queue's releases when polled every `step` seconds from 0 to `until`, each emptied in the given
    order before the next is asked (the first one always gets first go at a free slot)."""
    sent = []
    now = 0.0
    while now <= until:
        for name, queue in queues.items():
            while (line := queue.pop_ready(now)) is not None:
                sent.append((now, name, line))
        now += step
    return sent


def test_a_flooding_moderated_channel_leaves_the_others_their_share_of_the_account_window() -> None:
    window = SendWindow()
    north = SendQueue(max_len=1000, moderator=True, max_age=None, sent=window)
    south = SendQueue(max_len=1000, max_age=None, sent=window)
    for i in range(300):
        north.push(f"north {i}", Importance.INFO, now=0.0)  # the bot moderates north: 90 per 31 s of its own
    for i in range(3):
        south.push(f"south {i}", Importance.INFO, now=0.0)
    sent = drain_in_turn({"north": north, "south": south}, until=100.0)

    order = [name for _, name, _ in sent]
    # South's first line goes within north's share (18 // 2 channels) of sends, its others as their turn comes.
    assert "south" in order and order.index("south") <= 9
    assert [line.text for _, name, line in sent if name == "south"] == ["south 0", "south 1", "south 2"]
    # Never over the account's count: a south line only while the account sent fewer than its 18 in the span.
    for at, name, _ in sent:
        if name == "south":
            assert sum(at - south.span < t <= at for t, _, _ in sent) <= south.budget
    assert most_in_any_window([t for t, _, _ in sent], window=north.span) <= north.budget
    # Once south has nothing left, north has the whole moderator's window again.
    last_south = max(t for t, name, _ in sent if name == "south")
    alone = [t for t, name, _ in sent if name == "north" and t >= last_south + north.span]
    assert most_in_any_window(alone, window=north.span) == north.budget


def test_two_flooding_channels_share_the_account_window_evenly() -> None:
    window = SendWindow()
    queues = {name: SendQueue(max_len=1000, max_age=None, sent=window) for name in ("north", "south")}
    for i in range(200):
        for name, queue in queues.items():
            queue.push(f"{name} {i}", Importance.INFO, now=0.0)
    span = queues["north"].span
    sent = drain_in_turn(queues, until=9.5 * span)  # ten bursts, one as each span runs out
    counts = {name: sum(n == name for _, n, _ in sent) for name in queues}
    assert counts == {"north": 90, "south": 90}  # 9 each per span, though north always asks first


def test_two_senders_on_one_window_give_the_quiet_channel_its_turn() -> None:
    # The same through the real Sender tasks on a real clock and a 0.5 s window: counts only, no times.
    said: list[str] = []

    async def send(text: str, reply_to: str | None) -> None:
        said.append(text)

    async def main() -> None:
        window = SendWindow()
        north = SendQueue(max_len=1000, max_age=None, window=0.5, sent=window)
        south = SendQueue(max_len=1000, max_age=None, window=0.5, sent=window)
        async with Sender(north, send, is_moderator=lambda: True) as to_north, Sender(south, send) as to_south:
            for i in range(200):
                to_north.say(f"north {i}", Importance.INFO)
            for i in range(3):
                to_south.say(f"south {i}", Importance.INFO)
            while len(said) < 203:
                await asyncio.sleep(0.05)
        assert window.wakers == []  # each Sender left the window's wake-ups as it stopped

    asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert said.index("south 0") <= 9  # without the shares: after north's first 90
    assert [t for t in said if t.startswith("south")] == ["south 0", "south 1", "south 2"]
    assert [t for t in said if t.startswith("north")] == [f"north {i}" for i in range(200)]


def test_the_sender_drains_in_order_at_the_allowed_pace_and_survives_failures() -> None:
    async def scenario() -> list[tuple[float, str]]:
        posted: list[tuple[float, str]] = []

        async def send(text: str, reply_to: str | None) -> None:
            if text == "bad":
                raise RuntimeError("twitch said no")
            posted.append((time.monotonic(), text))

        async with Sender(SendQueue(window=0.3, limits=(3, 3)), send) as sender:  # 2 lines per 0.31 s
            sender.say("bad", Importance.REQUEST_ACK)
            for i in range(5):
                sender.say(f"line {i}", Importance.INFO)
            while len(posted) < 5:
                await asyncio.sleep(0.02)
        return posted

    posted = asyncio.run(asyncio.wait_for(scenario(), timeout=5.0))
    assert [text for _, text in posted] == [f"line {i}" for i in range(5)]
    # "bad" used the first slot: "line 0" shares its window, then pairs follow a window apart.
    times = [t for t, _ in posted]
    assert most_in_any_window(times, window=0.3) <= 2
    assert times[-1] - times[0] >= 2 * 0.3


def test_the_same_answer_to_five_viewers_is_five_different_lines() -> None:
    # Each reply is popped as soon as it is pushed (an idle queue): nothing merges, the @name tells them apart.
    queue = SendQueue()
    lines = []
    for i, login in enumerate(["ada", "bob", "cy", "dee", "eve"]):
        queue.push("you already voted for 874824834", Importance.ERROR_REPLY, i * 0.01, f"m{i}", login)
        lines.append(queue.pop_ready(i * 0.01))
    assert [line.text for line in lines if line] == [
        f"@{login} you already voted for 874824834" for login in ["ada", "bob", "cy", "dee", "eve"]
    ]
    assert [line.reply_to for line in lines if line] == [f"m{i}" for i in range(5)]  # threads kept


def test_a_line_identical_to_one_sent_within_30_s_is_not_sent_again() -> None:
    queue = SendQueue(max_age=None)
    queue.push("the audience has spoken: skipping", Importance.NOW_PLAYING, now=0.0)
    assert queue.pop_ready(0.0) == Outgoing("the audience has spoken: skipping", Importance.NOW_PLAYING)
    queue.push("the audience has spoken: skipping", Importance.NOW_PLAYING, now=10.0)
    queue.push("skip votes 1/3", Importance.ACK, now=10.0, mention="ada")
    # The repeat is passed over, and the line behind it still goes out in the same call.
    assert queue.pop_ready(10.0) == Outgoing("@ada skip votes 1/3", Importance.ACK)
    assert queue.repeats == 1 and len(queue) == 0
    queue.push("skip votes 1/3", Importance.ACK, now=20.0, mention="ada")
    assert queue.pop_ready(20.0) is None and queue.repeats == 2
    # Once the first line has left Twitch's window (31 s with the margin) the same words may go out again.
    queue.push("the audience has spoken: skipping", Importance.NOW_PLAYING, now=31.0)
    assert queue.pop_ready(31.0) == Outgoing("the audience has spoken: skipping", Importance.NOW_PLAYING)


def test_the_same_line_queued_twice_waits_once() -> None:
    queue = SendQueue()
    queue.push("now playing irish", Importance.NOW_PLAYING, now=0.0)
    queue.push("now playing irish", Importance.NOW_PLAYING, now=0.5)
    queue.push("your piece is #1", Importance.REQUEST_ACK, now=0.5, reply_to="m1", mention="ada")
    queue.push("your piece is #1", Importance.REQUEST_ACK, now=0.6, reply_to="m2", mention="ada")
    assert len(queue) == 2 and queue.repeats == 2


def test_500_viewers_at_once_are_all_answered_and_no_line_repeats_within_30_s() -> None:
    # What the issue saw: a crowd votes in 40 ms, many of them for the second time, others ask for the queue
    # and for help; every one of them gets a line that names them, and Twitch sees no repeat.
    queue = SendQueue()  # as the bot runs it: 50 lines at most, 120 s before a line is stale
    seed = 874824834
    replies = {
        0: ("your vote for {seed} is counted", Importance.ACK),
        1: ("you already voted for {seed}", Importance.ERROR_REPLY),
        2: ("3 requests in the queue", Importance.INFO),
        3: ("one request at a time: try again in 2 s", Importance.ERROR_REPLY),
    }
    logins = [f"viewer_{i:03d}" for i in range(500)]
    for i, login in enumerate(logins):
        text, importance = replies[i % 4]
        queue.push(text.format(seed=seed), importance, now=i * 0.00008, reply_to=f"m{i}", mention=login)
    sent = drain(queue, start=0.0, until=200.0)
    last_seen: dict[str, float] = {}
    for at, line in sent:
        assert line.text not in last_seen or at - last_seen[line.text] >= 30.0, line.text
        last_seen[line.text] = at
        assert len(line.text) <= MAX_CHARS
    named = {word[1:] for _, line in sent for word in line.text.split() if word.startswith("@")}
    assert named == set(logins)
    assert queue.dropped == 0
    assert len(sent) < 60  # merged: at most 18 lines per 31 s left room for all of them within 2 min


def test_a_line_is_plain_text_whatever_it_quotes() -> None:
    # Replies quote viewers ("'\x1b[31m' is not a seed"): no control, direction mark or half character
    # reaches chat, where a right-to-left override would turn the rest of the bot's line around.
    queue = SendQueue()
    queue.push("'\u202e\x1b[31m\ud800⒐' is not a seed\n\n", Importance.ERROR_REPLY, 0.0, "m1", "\u2066ada\x00")
    assert queue.pop_ready(0.0) == Outgoing("@ada '[31m⒐' is not a seed", Importance.ERROR_REPLY, "m1")
    assert queue.push("\u200f\x07", Importance.INFO, now=0.0) is None and len(queue) == 0


@pytest.mark.skipif(not HAS_REDIS, reason="needs the Redis server on 127.0.0.1:6379")
def test_500_viewers_through_the_real_commands_get_lines_that_name_them_and_never_repeat(
    tmp_path: Path,
) -> None:
    # The real handlers, store and conductor answer; the queue, on its own clock, says it in chat. A fifth of
    # the crowd had voted already ("you already voted for <seed>" to each of them), others vote, ask for the
    # queue or help, or request a piece inside the global cooldown.
    async def scenario() -> tuple[SendQueue, list[tuple[float, Outgoing]], list[str]]:
        async with running_concert(tmp_path) as concert:
            seed = await playing(concert)
            logins = [f"viewer_{i:03d}" for i in range(500)]
            commands = ["!vote", "!vote", "!queue", "!help", "!compose bach"]
            for login in logins[::5]:
                await concert.store.vote(
                    seed, f"id-{login}", concert.conductor.stream_id, concert.conductor.wall()
                )
            queue = SendQueue()  # as the bot runs it
            for i, login in enumerate(logins):
                for reply in await concert.commands.handle(viewer(login, commands[i % 5])):
                    queue.push(reply.text, reply.importance, i * 0.00008, reply.reply_to, reply.mention)
            return queue, drain(queue, start=0.0, until=200.0), logins

    queue, sent, logins = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    last_seen: dict[str, float] = {}
    for at, line in sent:
        assert line.text not in last_seen or at - last_seen[line.text] >= 30.0, line.text
        last_seen[line.text] = at
    assert any("you already voted for" in line.text for _, line in sent)
    named = {word[1:] for _, line in sent for word in line.text.split() if word.startswith("@")}
    assert named == set(logins) and queue.dropped == 0
    print(f"500 viewers answered in {len(sent)} lines")
