"""Hostile input through the real paths: fuzzed chat lines through the command parser and handlers of a running
concert (real Redis, real conductor and engine), and bad HTTP requests against its real aiohttp app.

Seeded, so a failure replays: CONCERTBOT_FUZZ_SEED picks the seed, CONCERTBOT_FUZZ_LINES how many chat lines and
CONCERTBOT_FUZZ_REQUESTS how many HTTP requests (100,000 each by default; more for a longer hunt).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
REQUESTS = int(os.environ.get("CONCERTBOT_FUZZ_REQUESTS", "100000"))
# No cooldowns, so that requests reach the queue and its limits; no voteskip that could win, so that one piece
# plays throughout (composing the next would only slow the fuzz down).
QUICK: dict[str, Any] = {"viewer_cooldown_seconds": 0.0, "global_cooldown_seconds": 0.0, "voteskip_min": 10**9}
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
    async with running_concert(tmp_path, **QUICK) as concert:
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


ADMIN = "fuzz-admin-token"  # the server's real token; never sent, so no request acts as the broadcaster
JSON = "application/json"
CONTENT_TYPES = [
    JSON,
    JSON,
    JSON,
    "application/json; charset=utf-8",
    "application/json; charset=bogus",
    "application/json; charset=utf-16",
    "application/json; charset=latin-1",
    "application/json; charset=\xff",
    "application/json; x=\xff",
    "APPLICATION/JSON",
    "application/json;;;",
    "text/plain",
    "text/html",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    "",
    "*/*",
    "\xff\xfe",
]
HOSTS = ["127.0.0.1", "localhost", "[::1]", "attacker.example", "127.0.0.1.nip.io", "", "\xff", "a" * 300]
ORIGINS = ["null", "http://attacker.example", "http://127.0.0.1", "file://", "\xff\xfe", "http://localhost:1"]
AUTHORIZATIONS = [
    "Bearer wrong",
    "Bearer ",
    "Bearer",
    "bearer " + ADMIN[:-1],
    "Bearer " + ADMIN + "x",
    "Basic " + "x" * 40,
    "Bearer \xff\xfe",
    "\xff",
    "Bearer " + "x" * 4000,
    "Token " + ADMIN,
]
GET_PATHS = [
    "/api/now",
    "/api/queue",
    "/api/leaderboard",
    "/api/pieces/{seed}",
    "/p/{seed}",
    "/p/{seed}.mid",
    "/p/{seed}.wav",
    "/p/{seed}.json",
    "/top",
    "/overlay",
    "/",
    "/chat",
    "/healthz",
    "/ws",
    "/static/{word}",
    "/static/../{word}",
    "/api/{word}",
    "/{word}",
]
QUERY_KEYS = ["period", "n", "panels", "audio", "seed", "user", "", "period[]", "\xff"]
QUERY_VALUES = [
    "stream",
    "week",
    "all",
    "bogus",
    "",
    "0",
    "-1",
    "101",
    "1e9",
    "9" * 40,
    "%ff",
    "%00",
    "now,queue",
    "roll,roll,roll",
    "١٢",
    "%E2%92%90",
    "x" * 3000,
    "1",
    "true",
]
SEEDS = [
    "1",
    "0",
    "-1",
    "9" * 19,
    "9" * 40,
    "%E2%92%90",
    "%F0%9F%8E%BB",
    "1.5",
    "0x10",
    "%00",
    "..",
    "1%2F2",
    "",
    " ",
]


def _json_body(rng: random.Random, text: str) -> bytes:
    """A `{"user", "text"}` body, or something near one."""
    roll = rng.random()
    user = rng.choice(LOGINS) + str(rng.randrange(100))
    if roll < 0.5:
        return json.dumps({"user": user, "text": text}, ensure_ascii=rng.random() < 0.5).encode(
            "utf-8", "surrogatepass"
        )
    if roll < 0.6:  # wrong types and shapes
        return json.dumps(
            rng.choice(
                [
                    {"user": 5, "text": []},
                    {"text": text},
                    {"user": user},
                    [user, text],
                    None,
                    {"user": user, "text": text, "extra": {"a": [1] * 50}},
                    "text",
                    1e308,
                    {"user": {"$ne": 1}, "text": True},
                ]
            )
        ).encode()
    if roll < 0.7:  # bytes that are not UTF-8 inside the JSON
        return b'{"user": "%s", "text": "%s"}' % (
            user.encode("utf-8", "replace"),
            bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 30))),
        )
    if roll < 0.8:  # nested deep, in the text or as the whole body
        depth = rng.choice([10, 100, 1000, 5000, 50_000])
        deep = b"[" * depth + b"]" * depth if rng.random() < 0.8 else b'{"a":' * depth + b"1" + b"}" * depth
        return deep if rng.random() < 0.5 else b'{"user": "a", "text": ' + deep + b"}"
    if roll < 0.9:  # cut short, padded, or other JSON oddities
        good = json.dumps({"user": user, "text": text}).encode("utf-8", "surrogatepass")
        return rng.choice(
            [
                good[: rng.randrange(len(good))],
                good + b"}" * 3,
                b"\xef\xbb\xbf" + good,
                b"NaN",
                b"Infinity",
                b"null",
                b"",
                b" " * 1000,
                b"1" * 10_000,
                good.replace(b'"', b"'"),
            ]
        )
    return bytes(rng.randrange(256) for _ in range(rng.choice([1, 10, 200, 3000])))


def _query(rng: random.Random) -> str:
    pairs = [
        f"{rng.choice(QUERY_KEYS)}={rng.choice(QUERY_VALUES)}" for _ in range(rng.choice([0, 1, 1, 2, 4, 30]))
    ]
    return "?" + "&".join(pairs) if pairs else rng.choice(["", "?", "?&&", "?=="])


def hostile_requests(rng: random.Random, n: int) -> Iterator[tuple[str, str, dict[str, str], bytes]]:
    """`n` requests (method, path with query, headers, body): local chat lines that are hostile, malformed or
    misaddressed, the other endpoints with odd paths, queries, methods and bodies."""
    texts = (msg.text for msg in hostile_lines(rng, 10**12))
    for _ in range(n):
        headers: dict[str, str] = {}
        roll = rng.random()
        if roll < 0.55:
            method, path = "POST", "/api/chat"
            body = _json_body(rng, next(texts)[: rng.choice([50, 500, 501, 5000])])
            headers["Content-Type"] = rng.choice(CONTENT_TYPES)
        elif roll < 0.65:
            method, path = "POST", f"/api/{rng.choice(['skip', 'pause', 'resume', 'clear', 'chat'])}"
            body = rng.choice([b"", b"\x00" * 100, b"{}", b'{"user":"a","text":"!skip"}'])
        elif roll < 0.95:
            method = "GET" if rng.random() < 0.9 else rng.choice(["HEAD", "OPTIONS"])
            path = rng.choice(GET_PATHS).format(seed=rng.choice(SEEDS), word=rng.choice(WORDS[:40]).strip())
            path = (path + _query(rng))[
                :8000
            ]  # longer lines are aiohttp's parser's to refuse (one raw one below)
            body = b""
        else:
            method = rng.choice(["PUT", "DELETE", "PATCH", "POST", "TRACE", "PROPFIND"])
            path = rng.choice(GET_PATHS).format(seed=rng.choice(SEEDS), word="x")
            body = rng.choice([b"", b"x" * 100])
        if rng.random() < 0.15:
            headers["Authorization"] = rng.choice(AUTHORIZATIONS)
        if rng.random() < 0.1:
            headers["Host"] = rng.choice(HOSTS)
        if rng.random() < 0.1:
            headers["Origin"] = rng.choice(ORIGINS)
        if rng.random() < 0.05:
            headers[
                rng.choice(["Cookie", "X-Forwarded-For", "Accept", "Accept-Charset", "Range", "Upgrade"])
            ] = "".join(c for c in rng.choice(WORDS) if c >= " " and c != "\x7f") or "x"  # none can split it
        if rng.random() < 0.002:
            body = b" " * 1_100_000  # past the body limit
        yield method, path, headers, body


IN_FLIGHT = 8  # requests sent at once, each worker on its own keep-alive connection


def _check_answer(request: tuple[str, str, dict[str, str], bytes], status: int, kind: str, text: str) -> None:
    """A 2xx or 4xx, JSON under /api/, and nothing that reads like a crash."""
    method, path, headers, body = request
    where = (method, path[:120], headers, body[:60], status, text[:200])
    assert 200 <= status < 300 or 400 <= status < 500, where
    assert "Traceback" not in text and "Error handling request" not in text, where
    if path.startswith("/api/") and method != "HEAD":
        assert kind == JSON, where
        answer = json.loads(text)
        if status >= 400:
            assert isinstance(answer["error"], str) and len(answer["error"]) < 200, where
        elif path == "/api/chat":
            assert all(0 < len(r) <= MAX_CHARS and "\n" not in r for r in answer["replies"]), where
    elif status >= 400 and text:  # aiohttp's static files answer a missing one with an empty 404
        assert kind in (JSON, "text/plain", "text/html") and len(text) < 5000, where


@pytest.mark.timeout(1800)
async def test_100000_hostile_http_requests_get_a_2xx_or_4xx_and_leave_no_stray_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    rng = random.Random(SEED)
    port = free_port()
    settings: dict[str, Any] = {"http_port": port, "http_host": "127.0.0.1", "admin_token": ADMIN, **QUICK}
    async with running_concert(tmp_path, **settings) as concert:
        await playing(concert)
        base = f"http://127.0.0.1:{port}"
        requests = hostile_requests(rng, REQUESTS)
        statuses: Counter[int] = Counter()
        started = time.perf_counter()

        async def worker() -> None:
            connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection, reused request after request
            async with aiohttp.ClientSession(connector=connector, skip_auto_headers=["Content-Type"]) as http:
                for request in requests:  # one iterator shared by all workers: each request is sent once
                    method, path, headers, body = request
                    async with http.request(
                        method, base + path, headers=headers, data=body or None, allow_redirects=False
                    ) as response:
                        text = await response.text(errors="replace")
                        statuses[response.status] += 1
                        _check_answer(request, response.status, response.content_type, text)

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        took = time.perf_counter() - started
        rate = REQUESTS / took
        print(f"http fuzz: {REQUESTS} requests in {took:.1f} s ({rate:.0f}/s): {sorted(statuses.items())}")
        assert statuses.total() == REQUESTS
        assert statuses[200] > REQUESTS // 10 and statuses[400] > REQUESTS // 10  # the bodies reached a handler

        namespace = concert.store.keys.namespace
        keys = await namespace_keys(namespace)
        assert any(k.endswith(":state") for k in keys)
        assert not stray_keys(namespace, keys)
        # A request line past aiohttp's limit is refused by its parser, before any handler: a 400, and in the
        # log one line, not a traceback (`bot.web.server.ClientErrorsInOneLine`).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/now?x=" + b"x" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await reader.readline()).split()[1] == b"400"
        writer.close()
        assert concert.conductor.current is not None
        async with aiohttp.ClientSession() as http:
            line = {"user": "ada", "text": "!queue"}
            async with http.post(base + "/api/chat", json=line) as response:
                assert response.status == 200 and "in the queue" in (await response.json())["replies"][0]
    problems = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not problems, [r.getMessage() for r in problems[:5]]
