"""Hostile input through the real paths: fuzzed chat lines through the command parser and handlers of a running
concert (real Redis, real conductor and engine), and bad HTTP requests against its real aiohttp app.

Seeded, so a failure replays: CONCERTBOT_FUZZ_SEED picks the seed, CONCERTBOT_FUZZ_LINES how many chat lines
(100,000 by default; more for a longer hunt).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from chat_rig import HAS_REDIS, namespace_keys, playing, running_concert, stray_keys
from serving import free_port

from bot.chat.commands import ALIASES, EVERYONE, MODERATORS, STEERS
from bot.chat.message import ChatMessage
from bot.chat.sendqueue import BIDI_CONTROLS, MAX_CHARS, SendQueue

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not HAS_REDIS, reason="needs the Redis server on 127.0.0.1:6379"),
]

SEED = int(os.environ.get("CONCERTBOT_FUZZ_SEED", "14"))
LINES = int(os.environ.get("CONCERTBOT_FUZZ_LINES", "100000"))
AT_ONCE = 32  # lines handled concurrently, as Twitch, the web chat box and redemptions arrive together

NAMES = [
    *sorted(EVERYONE | MODERATORS | STEERS | set(ALIASES)),
    "uptime",
    "",
    "!",
    "compose\u200b",
    "ＣＯＭＰＯＳＥ",
]
WORDS = [
    # what the commands expect, right and nearly right
    "bach",
    "irish",
    "BaCh",
    "bahc",
    "folk",
    "violin",
    "cello",
    "vilin",
    "drums",
    "flute",
    "in",
    "D",
    "f#m",
    "Bb",
    "minor",
    "H",
    "week",
    "all",
    "ALL",
    "forever",
    "on",
    "off",
    "@someone",
    "@" + "a" * 30,
    "120",
    "120bpm",
    # numbers that are not what they seem
    "⒐",
    "²",
    "١٢",
    "#١٢",
    "١٢٠",
    "𝟗",
    "Ⅻ",
    "½",
    "#",
    "-1",
    "-0",
    "0",
    "9" * 19,
    "9" * 40,
    "9223372036854775807",
    "9223372036854775808",
    "1e309",
    "nan",
    "inf",
    "0x1f",
    "1_000",
    "240.5",
    "999",
    # controls, direction marks, invisible and combining characters, surrogates
    "\x00",
    "\x1b[31m",
    "\x07",
    "\x7f",
    "\u202e",
    "\u200f",
    "\u2066",
    "\u200b",
    "\ufeff",
    "\ud800",
    "e\u0301" * 30,
    "🎻",
    "👨‍👩‍👧",
    "%s%n",
    "{0}",
    "${jndi:ldap://x}",
    "<script>",
    "'; DROP TABLE",
    "\\",
    "*",
    "?",
]
LOGINS = ["ada", "bob", "Ünï", "", "x" * 40, "o'brien", "١٢٣", "\u202eevil", "local:ada", "123456789"]


def _word(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.75:
        return rng.choice(WORDS)
    if roll < 0.9:
        return "".join(chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(rng.randrange(1, 12)))
    return rng.choice(WORDS) * rng.randrange(2, 400)  # long words, some past Twitch's 500 characters


def hostile_lines(rng: random.Random, n: int) -> Iterator[ChatMessage]:
    """`n` chat lines, most of them commands with arguments nobody should type."""
    for i in range(n):
        moderator = rng.random() < 0.05
        name = rng.choice(NAMES)
        if moderator and name == "skip":
            name = "np"  # a skip composes a new piece; the fuzz is about what is typed, not about composing
        if rng.random() < 0.3:
            name = name.upper() if rng.random() < 0.5 else name.title()
        prefix = rng.choice(["!", "!", "!", " !", "! ", "！", "!!", ""])
        words = [_word(rng) for _ in range(rng.choice([0, 1, 1, 2, 3, 5, 8, 60]))]
        separator = rng.choice([" ", " ", "  ", "\t", "\u3000", "\u2028", "\n"])
        text = prefix + name + separator + separator.join(words)
        login = rng.choice(LOGINS) + str(rng.randrange(200))
        user_id = str(rng.randrange(10**9)) if rng.random() < 0.7 else f"local:{login}"
        yield ChatMessage(
            user_id,
            login.lower(),
            login,
            text,
            message_id=f"fuzz-{i}" if rng.random() < 0.9 else "",
            is_moderator=moderator,
            reward_id="r1" if rng.random() < 0.02 else None,
        )


def as_sent(
    queue: SendQueue, text: str, importance, reply_to: str | None, mention: str | None, now: float
) -> str:
    """The line the send queue would post for a reply (each alone: no merging, no repeats)."""
    queue.push(text, importance, now, reply_to=reply_to, mention=mention)
    line = queue.pop_ready(now)
    assert line is not None
    return line.text


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.timeout(600)
async def test_fuzzed_chat_lines_get_short_plain_replies_and_leave_no_stray_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    rng = random.Random(SEED)
    # No cooldowns, so that requests reach the queue and its limits; no voteskip that could win, so that one
    # piece plays throughout (composing the next would only slow the fuzz down).
    quick = {"viewer_cooldown_seconds": 0.0, "global_cooldown_seconds": 0.0, "voteskip_min": 10**9}
    async with running_concert(tmp_path, **quick) as concert:
        await playing(concert)
        queue = SendQueue(max_len=10, max_age=None, limits=(10**9, 10**9))
        lines = list(hostile_lines(rng, LINES))
        started = time.perf_counter()
        replies = 0
        for i in range(0, len(lines), AT_ONCE):
            batch = lines[i : i + AT_ONCE]
            answers = await asyncio.gather(*(concert.commands.handle(msg) for msg in batch))
            for msg, answer in zip(batch, answers, strict=True):
                assert len(answer) <= 1, (msg.text, answer)
                for reply in answer:
                    replies += 1
                    line = as_sent(
                        queue, reply.text, reply.importance, reply.reply_to, reply.mention, 100.0 * replies
                    )
                    # Whole within Twitch's 500 characters, not cut to fit by the queue.
                    assert 0 < len(line) <= MAX_CHARS and not line.endswith("…"), (msg.text, line)
                    assert not any(
                        unicodedata.category(c) in ("Cc", "Cs") or c in BIDI_CONTROLS for c in line
                    ), (
                        msg.text,
                        line,
                    )
        took = time.perf_counter() - started
        logging.getLogger(__name__).warning(
            "fuzz: %d lines, %d replies in %.1f s (%.0f lines/s)", LINES, replies, took, LINES / took
        )
        print(f"fuzz: {LINES} lines, {replies} replies in {took:.1f} s ({LINES / took:.0f} lines/s)")
        assert replies > LINES // 10  # the lines reached the handlers, not just the "not a command" exit

        namespace = concert.store.keys.namespace
        keys = await namespace_keys(namespace)
        assert any(k.endswith(":state") for k in keys)  # the check below looks where the bot writes
        assert not stray_keys(namespace, keys)
        # The concert still plays and answers a plain question.
        assert concert.conductor.current is not None
        fresh = ChatMessage("424242", "late_viewer", "late_viewer", "!queue", message_id="last")
        (answer,) = await concert.commands.handle(fresh)
        assert "in the queue" in answer.text
    problems = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not problems, [r.getMessage() for r in problems[:5]]


def _bad_requests(rng: random.Random) -> list[tuple[str, str, dict[str, str], bytes]]:
    """(method, path, headers, body) that a browser, a script or an attacker might send; none is valid."""
    json_type = {"Content-Type": "application/json"}
    deep = b"[" * 50_000 + b"]" * 50_000
    cases = [
        ("POST", "/api/chat", json_type, b'{"user": "ada", "text": "\xff\xfe!compose"}'),
        (
            "POST",
            "/api/chat",
            {"Content-Type": "application/json; charset=bogus"},
            b'{"user":"a","text":"!np"}',
        ),
        ("POST", "/api/chat", {"Content-Type": "application/json; charset=utf-16"}, b"\xff\xfe{\x00"),
        ("POST", "/api/chat", json_type, deep),
        ("POST", "/api/chat", json_type, b'{"user": "a", "text": ' + deep + b"}"),
        ("POST", "/api/chat", json_type, b'{"user": 5, "text": []}'),
        ("POST", "/api/chat", json_type, b'{"user": "a", "text": "!replay \\ud800"}'),  # half a character
        ("POST", "/api/chat", json_type, b'{"user": "a", "text": "' + b"x" * 5000 + b'"}'),
        ("POST", "/api/chat", json_type, b"1" * 100_000),
        ("POST", "/api/chat", json_type, b"NaN"),
        ("POST", "/api/chat", json_type, b""),
        ("POST", "/api/chat", json_type, b"null"),
        ("POST", "/api/chat", json_type, b"{" * 10 + b'"' * 3),
        ("POST", "/api/chat", json_type, b" " * 2_000_000),  # past the body limit
        ("POST", "/api/chat", {"Content-Type": "text/plain"}, b'{"user":"a","text":"!np"}'),
        ("POST", "/api/chat", {"Content-Type": "multipart/form-data"}, b"--x\r\n\r\n"),
        ("POST", "/api/chat", {"Content-Type": "application/x-www-form-urlencoded"}, b"user=a&text=%21np"),
        ("POST", "/api/chat", {**json_type, "Authorization": "Bearer \xff\xfe"}, b'{"user":"a","text":"!np"}'),
        ("POST", "/api/chat", {**json_type, "Authorization": "Basic x"}, b'{"user":"a","text":"!np"}'),
        ("POST", "/api/skip", {"Authorization": "Bearer wrong"}, b""),
        ("POST", "/api/pause", {}, b"\x00" * 100),
        ("GET", "/api/leaderboard?period=%ff&n=99999999999999999999", {}, b""),
        ("GET", "/api/leaderboard?n=-1", {}, b""),
        ("GET", "/api/pieces/%E2%92%90", {}, b""),
        ("GET", "/api/pieces/99999999999999999999", {}, b""),
        ("GET", "/api/pieces/-1", {}, b""),
        ("GET", "/p/%F0%9F%8E%BB", {}, b""),
        ("GET", "/p/99999999999999999999.wav", {}, b""),
        ("GET", "/p/1.mid%00", {}, b""),
        ("GET", "/top?period=%00", {}, b""),
        ("GET", "/overlay?panels=%ff%fe&period=" + "x" * 5000, {}, b""),
        ("GET", "/static/../../config/settings.py", {}, b""),
        ("GET", "/ws?period=bogus", {}, b""),
    ]
    types = [
        "application/json",
        "application/json; charset=latin-1",
        "text/html",
        "",
        "application/json; x=\xff",
    ]
    for _ in range(200):
        body = bytes(rng.randrange(256) for _ in range(rng.choice([1, 10, 200, 3000])))
        cases.append(("POST", "/api/chat", {"Content-Type": rng.choice(types)}, body))
    return cases


@pytest.mark.timeout(300)
async def test_bad_http_requests_get_a_4xx_never_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    port = free_port()
    async with running_concert(tmp_path, http_port=port, http_host="127.0.0.1"):
        base = f"http://127.0.0.1:{port}"
        statuses = []
        async with aiohttp.ClientSession() as http:
            for method, path, headers, body in _bad_requests(random.Random(SEED)):
                async with http.request(method, base + path, headers=headers, data=body) as response:
                    text = await response.text(errors="replace")
                    statuses.append(response.status)
                    assert 400 <= response.status < 500, (method, path, headers, body[:60], response.status)
                    assert "Traceback" not in text and len(text) < 5000, (path, text[:200])
            # Odd but well-formed lines are answered like any chat line.
            for text in ("!compose \u202e\x00", "!replay ⒐", "!replay 𝟗"):
                async with http.post(base + "/api/chat", json={"user": "ada", "text": text}) as response:
                    assert response.status == 200, text
                    assert all(
                        len(r) <= MAX_CHARS and "\n" not in r for r in (await response.json())["replies"]
                    )
            # And a good line still works after all that.
            line = {"user": "ada", "text": "!queue"}
            async with http.post(base + "/api/chat", json=line) as response:
                assert response.status == 200 and "in the queue" in (await response.json())["replies"][0]
    problems = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not problems, [r.getMessage() for r in problems[:5]]
