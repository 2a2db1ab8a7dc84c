"""Chat steers the piece that plays (issue 16): votes, where a steer lands, and exact replays of steered pieces.

The model is the shipped one (generator/default_model); the concert is the real one, on the real Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from browser import find_chromium, launch_chromium
from chat_rig import HAS_REDIS, REDIS_URL, drop_namespace, playing, running_concert, viewer
from serving import free_port

from bot.chat.commands import Command, parse
from bot.concert.steer_votes import SteerRules, SteerVotes, VoteStatus
from bot.concert_view import LiveConcertView
from bot.state.store import PieceRecord, open_store
from config.errors import UnknownNameError
from generator.decode import NoteDecoder, decode, midi_bytes, to_midi
from generator.events import piece_events
from generator.model import load_model
from generator.performance import planned
from generator.plan import Phrase, Plan, Section
from generator.recipes import make_request
from generator.sampling import Composer
from generator.steer import (
    LOUD_STEP,
    TEMPO_STEP,
    SteerError,
    SteerEvent,
    Steering,
    SteerState,
    steered_performance,
)
from generator.vocab import KIND_DURATION, KIND_TIMESHIFT, Vocab

# --- votes, with an injected clock ---------------------------------------------------------------------


def test_the_vote_window_counts_passes_runs_out_and_cools_down_on_its_clock():
    votes = SteerVotes(SteerRules(window_seconds=15.0, share=0.25, minimum=2, cooldown_seconds=10.0))
    # 12 recent chatters: a quarter is 3 votes.
    first = votes.vote(7, "ann", "faster", "", 12, now=100.0)
    assert (first.status, first.votes, first.needed, first.seconds) == (VoteStatus.COUNTED, 1, 3, 15.0)
    assert votes.vote(7, "ann", "faster", "", 12, now=101.0).status is VoteStatus.ALREADY
    assert votes.vote(7, "bob", "faster", "", 12, now=104.0).seconds == 11.0  # the same window counts down
    [open_vote] = votes.open(now=105.0)
    assert (open_vote.said(), open_vote.votes, open_vote.closes_at) == ("!faster", 2, 115.0)
    passed = votes.vote(7, "cy", "faster", "", 12, now=106.0)
    assert (passed.status, passed.votes, passed.needed) == (VoteStatus.PASSED, 3, 3)
    assert votes.open(now=106.0) == []
    # A cooldown after a steer passes: nobody opens another for 10 s, a moderator still may.
    cooling = votes.vote(7, "dee", "louder", "", 12, now=110.0)
    assert cooling.status is VoteStatus.COOLING and cooling.seconds == 6.0
    assert votes.vote(7, "mod", "louder", "", 12, now=110.0, privileged=True).status is VoteStatus.PASSED
    # A window that does not fill runs out at its end, and says how far it got.
    assert votes.vote(7, "eve", "add", "harp", 12, now=130.0).status is VoteStatus.COUNTED
    assert votes.expire(now=144.9) == []
    [gone] = votes.expire(now=145.0)
    assert (gone.said(), gone.votes, gone.needed) == ("!add harp", 1, 3)
    # A new piece starts afresh: no window, no cooldown.
    assert votes.vote(8, "eve", "add", "harp", 12, now=145.5).votes == 1
    assert votes.needed(2) == 2  # never fewer than the minimum


def test_steer_commands_parse_as_one_command_with_their_instrument():
    assert parse("!faster") == Command("steer", ("faster",))
    assert parse("!ADD Harp") == Command("steer", ("add", "Harp"))
    assert parse("!drop") == Command("steer", ("drop",))
    assert parse("!fasterer") is None


# --- what a piece can follow ----------------------------------------------------------------------------


def test_a_steer_the_piece_cannot_follow_says_why_in_a_few_words():
    state = SteerState.of(("flute",), 120.0, "D")
    cases = [
        (("add", "flute"), "the flute is already playing"),
        (("drop", "flute"), "the flute is the last instrument playing; !add another first"),
        (("drop", "harp"), "the harp is not playing (now: flute)"),
        (("add", "drums"), "drums cannot join a piece that is playing; ask for them in !compose"),
        (("major", ""), "it is already in D major"),
        (("add", ""), "say which instrument, e.g. !add harp (see !instruments)"),
    ]
    for (kind, arg), reply in cases:
        with pytest.raises(SteerError) as caught:
            state.after(kind, arg)
        assert str(caught.value) == reply
    with pytest.raises(UnknownNameError, match="unknown instrument 'kazoo'"):
        state.after("add", "kazoo")
    full = SteerState.of(("flute", "harp", "violin", "viola", "cello", "piano"), 120.0, "D")
    with pytest.raises(SteerError, match="6 instruments play already"):
        full.after("add", "oboe")
    fast = state
    for _ in range(4):
        fast = fast.after("faster")
    assert fast.tempo * fast.share == pytest.approx(120 * TEMPO_STEP**4)
    with pytest.raises(SteerError, match="already as fast as it goes"):
        fast.after("faster")
    assert SteerState.of(("flute",), 120.0, None).after("add", "fiddle").instruments == ("flute", "violin")
    with pytest.raises(SteerError, match="without keys"):
        SteerState.of(("flute",), 120.0, None).after("minor")


# --- the performance: tempo and loudness ramp over a bar from where the steer landed ---------------------

BAR = 32
PLAN = Plan(BAR, 8, (Section("A", 0, 8),), (Phrase(0, 4, 7, 0), Phrase(4, 4, 0, 0)))


def test_tempo_and_loudness_change_over_a_bar_and_nothing_before_the_step():
    base = planned(PLAN, 120.0, [40, 42])
    steered = steered_performance(
        PLAN, 120.0, [40, 42], [SteerEvent("faster", "", 2 * BAR, 2), SteerEvent("louder", "", 2 * BAR, 2)]
    )
    for step in range(0, 2 * BAR + 1):
        assert steered.seconds(step) == base.seconds(step)
        if step < 2 * BAR:
            assert steered.velocity(step, 2) == base.velocity(step, 2)

    def bar_seconds(played, bar: int) -> float:
        return played.seconds((bar + 1) * BAR) - played.seconds(bar * BAR)

    # The bar where it lands quickens beat by beat; the next is the whole step faster.
    beats = [steered.seconds(2 * BAR + 8 * (k + 1)) - steered.seconds(2 * BAR + 8 * k) for k in range(4)]
    assert beats == sorted(beats, reverse=True) and beats[0] < 0.5
    assert bar_seconds(steered, 3) == pytest.approx(bar_seconds(base, 3) / TEMPO_STEP)
    # Louder by a bar's end, part of the way there mid-bar.
    assert steered.velocity(3 * BAR, 2) == base.velocity(3 * BAR, 2) + LOUD_STEP
    assert (
        base.velocity(2 * BAR + 16, 2) < steered.velocity(2 * BAR + 16, 2) < base.velocity(2 * BAR + 16, 2) + 8
    )
    # The MIDI file carries the ramp as tempo changes, and the final ritardando on top of the new tempo.
    changes = dict(steered.tempo_changes())
    assert changes[2 * BAR + 24] == pytest.approx(120 * TEMPO_STEP)
    assert min(changes.values()) < 120 * TEMPO_STEP * 0.8


# --- the real model: where steers land, and the same piece again -----------------------------------------


@pytest.fixture(scope="module")
def steered() -> dict:
    """One short piece sampled plain and with steers asked at given token counts, as the live thread does."""
    loaded = load_model()
    composer = Composer(loaded)
    request = make_request(loaded, "irish", ["flute", "harp"], tempo=168, seconds=9.0, seed=31)
    plain = list(composer.stream(request))
    steering = Steering()
    tokens = []
    for token in composer.stream(request, steering=steering):
        tokens.append(token)
        if len(tokens) == 30:
            steering.ask("add", "violin", asked_at=1.0)
        if len(tokens) == 60:
            steering.ask("faster", "", asked_at=2.0)
            steering.ask("drop", "harp", asked_at=2.0)
    landed = list(steering.landed)
    return dict(loaded=loaded, composer=composer, request=request, plain=plain, tokens=tokens, landed=landed)


def test_a_steer_lands_on_a_bar_line_and_the_notes_before_it_are_unchanged(steered):
    vocab, plan = steered["loaded"].vocab, steered["composer"].plan(steered["request"])
    landed = steered["landed"]
    assert [e.kind for e in landed] == ["add", "faster", "drop"]
    assert all(e.step % plan.bar == 0 and e.bar == e.step // plan.bar for e in landed)
    # Asked between tokens on the sampler's own thread: seen at its first look after, landed by the rule.
    looks = sampler_looks(vocab, steered["tokens"], plan.bar, bar_wise=steered["request"].critic > 1)
    for event, asked in zip(landed, (30, 60, 60), strict=True):
        assert event.seen == next(i for i, _, _ in looks if i >= asked)
        assert event.step == landing_step(looks, event.seen, plan.bar)
    first = landed[0].step
    plain, tokens = decode(vocab, steered["plain"]), decode(vocab, steered["tokens"])
    assert [n for n in tokens if n.start < first] == [n for n in plain if n.start < first]
    assert 40 not in {n.program for n in plain}
    violin = [n for n in tokens if n.program == 40]
    assert violin and min(n.start for n in violin) >= first
    dropped = landed[2].step
    assert all(n.start < dropped for n in tokens if n.program == 46)  # the harp plays no new note after
    assert {n.program for n in tokens if n.start >= dropped} <= {73, 40}


def test_a_steered_piece_is_made_and_played_again_byte_for_byte(steered):
    composer, request, landed = steered["composer"], steered["request"], steered["landed"]
    again = Steering(landed)
    assert list(composer.stream(request, steering=again)) == steered["tokens"]
    assert again.landed == landed
    plan, vocab, programs = composer.plan(request), composer.vocab, request.programs()
    live = steered_performance(plan, request.tempo, programs, landed)
    replay = steered_performance(plan, request.tempo, programs, list(again.given))
    notes = decode(vocab, steered["tokens"])
    assert midi_bytes(to_midi(notes, request.tempo, live)) == midi_bytes(to_midi(notes, request.tempo, replay))
    events = [list(piece_events(vocab, steered["tokens"], request.tempo, programs, p)) for p in (live, replay)]
    assert events[0] == events[1]
    # Steered, it plays faster than as it was: the same bars in less time.
    assert live.seconds(plan.end()) < planned(plan, request.tempo, programs).seconds(plan.end())


@pytest.mark.skipif(not HAS_REDIS, reason="needs the Redis server on 127.0.0.1:6379")
@pytest.mark.anyio
async def test_the_store_keeps_a_pieces_steers_with_its_tokens(steered, tmp_path: Path):
    request = steered["request"]
    namespace = f"steer-{uuid.uuid4().hex[:10]}"
    async with open_store(REDIS_URL, tmp_path, namespace) as store:
        claim = PieceRecord(request, "v")
        await store.save_piece(claim)
        done = replace(claim, tokens=tuple(steered["tokens"]), steers=tuple(steered["landed"]))
        await store.save_piece(done)
        loaded = await store.load_piece(request.seed)
        assert loaded is not None
        assert loaded.steers == tuple(steered["landed"]) and loaded.tokens == tuple(steered["tokens"])
    await drop_namespace(namespace)


# --- the real concert -----------------------------------------------------------------------------------


def sampler_looks(vocab: Vocab, tokens: Sequence[int], bar: int, bar_wise: bool) -> list[tuple[int, int, bool]]:
    """Where the sampler looks for steers as it writes `tokens`: (tokens written, step, its first look at that
    step), as generator.sampling calls generator.steer.Steering.turn; restated here for the test.

    It looks at every note boundary, or with the critic (`bar_wise`, whole bars written) where it starts a bar:
    the first boundary at or past the end of the bar it started.
    """
    decoder = NoteDecoder(vocab)
    looks, end = [(0, 0, True)], bar
    for index, token in enumerate(tokens, 1):
        decoder.feed(int(token))
        if vocab.kind[token] == KIND_TIMESHIFT and (not bar_wise or decoder.time >= end):
            looks.append((index, decoder.time, True))
            end = (decoder.time // bar + 1) * bar
        elif not bar_wise and vocab.kind[token] == KIND_DURATION:
            looks.append((index, decoder.time, False))  # a note struck: the step is no longer fresh
    return looks


def landing_step(looks: list[tuple[int, int, bool]], seen: int, bar: int) -> int:
    """Where a steer the sampler saw at its look `seen` lands (generator.steer.Steering._due): on the bar line
    it is on if it struck no note there yet, else on the next; at its first fresh look on or after that line."""
    [(at, fresh)] = [(step, fresh) for i, step, fresh in looks if i == seen]
    line = at if fresh and at % bar == 0 else (at // bar + 1) * bar
    return next(step for i, step, fresh in looks if i >= seen and fresh and step >= line)


def step_handed_over(vocab: Vocab, tokens: Sequence[int]) -> int:
    """The step of the last batch of events the generator had handed over, and waited on, before these tokens'
    last time shift (generator.events.piece_events gives one batch per step reached)."""
    decoder, handed = NoteDecoder(vocab), 0
    for token in tokens:
        before = decoder.time
        decoder.feed(int(token))
        if decoder.time != before:
            handed = before
    return handed


@pytest.mark.skipif(not HAS_REDIS, reason="needs the Redis server on 127.0.0.1:6379")
@pytest.mark.anyio
async def test_chat_steers_the_concert_and_a_replay_plays_the_steered_piece(tmp_path: Path):
    async with running_concert(tmp_path, seconds=10.0) as concert:
        seed = await playing(concert)
        conductor = concert.conductor
        slot = conductor.current
        playing_now = slot.record.recipe.instruments
        newcomer = next(n for n in ("violin", "flute", "cello", "harp") if n not in playing_now)

        async def say(text: str, login: str = "ann", moderator: bool = False) -> list[str]:
            return [r.text for r in await concert.commands.handle(viewer(login, text, moderator))]

        assert await say(f"!drop {newcomer}") == [
            f"the {newcomer} is not playing (now: {', '.join(playing_now)})"
        ]
        assert (await say("!add kazoo", "bob"))[0].startswith("unknown instrument 'kazoo'")
        for login, hostile in (("hal", "!add " + "x" * 400), ("ida", "!drop \u202e"), ("jon", "!add ⒐")):
            [reply] = await say(hostile, login)
            assert reply.startswith("unknown instrument") and len(reply) <= 200
        assert await say(f"!add {newcomer}", "cy") == [f"!add {newcomer}: 1/2 votes, 15 s left"]
        # How far the generator had written when the vote landed: between these two counts of tokens.
        written = len(slot.live.tokens)
        assert await say(f"!add {newcomer}", "mod", moderator=True) == [f"!add {newcomer}: from the next bar"]
        written_after = len(slot.live.tokens)
        async with asyncio.timeout(90):
            while not (conductor.last is slot and slot.saved):
                await asyncio.sleep(0.1)
        record = await conductor.store.load_piece(seed)
        [event] = record.steers
        assert (event.kind, event.arg) == ("add", newcomer)
        played = conductor.performance_of(record)
        plan = conductor.plan_of(record)
        lookahead = concert.settings.engine.lookahead_seconds
        # How late a steer may land is not one number of seconds: under load the old bound (look-ahead plus
        # a bar) read 7.16 s against 6.25 s, which the code allows. It is three rules of the code, checked on
        # what the test read when the vote landed (`written`: tokens the generator had handed to the engine)
        # and on what the piece recorded (`seen`: tokens written when the sampler saw the steer).
        # 1. The generator was at most the look-ahead past playback: synth.feed.EventFeed.put adds a step's
        #    events, then waits while it is more than `lookahead` ahead; so every step it had handed over and
        #    gone on from was within the look-ahead of what played when the vote closed (`asked_at`).
        # 2. The sampler saw the steer at its first look for steers after the vote: at a note boundary, or with
        #    the critic (which writes whole bars, so it may have a bar written that the engine has not taken
        #    yet) at the next bar it starts. That bar may begin past a bar line: a bar ends on a time shift,
        #    which may cross the line (up to 12 beats).
        # 3. It landed at the first bar line the sampler had not written yet (generator.steer.Steering._due).
        # Latency is then at most the look-ahead plus the music from the last step handed over to the landing,
        # whatever the load; a steer seen a look late, held back a bar, or a generator running past its
        # look-ahead still fails. (Here the sampler is the piece's own thread; a shared BatchLoop samples up
        # to 32 tokens past what it handed over.)
        vocab, bar = conductor.loaded.vocab, plan.bar
        looks = sampler_looks(vocab, record.tokens, bar, bar_wise=record.recipe.critic > 1)
        first_look = next(i for i, _, _ in looks if i >= written)
        last_look = next(i for i, _, _ in looks if i > written_after)  # the sampler may be past a look
        assert first_look <= event.seen <= last_look, (written, written_after, event.seen)
        assert event.step == landing_step(looks, event.seen, bar)
        handed = played.seconds(step_handed_over(vocab, record.tokens[:written]))
        assert handed - event.asked_at <= lookahead + 1e-6
        latency = played.seconds(event.step) - event.asked_at
        bound = lookahead + played.seconds(event.step) - handed
        print(
            f"steer latency {latency:.2f} s from the vote to bar {event.bar}; the generator had handed over "
            f"{handed - event.asked_at:.2f} s past playback (look-ahead {lookahead} s); bound {bound:.2f} s"
        )
        assert 0 <= latency <= bound
        notes = decode(conductor.loaded.vocab, record.tokens)
        program = {"violin": 40, "flute": 73, "cello": 42, "harp": 46}[newcomer]
        assert min(n.start for n in notes if n.program == program) >= event.step
        view = await LiveConcertView(concert).piece(seed)
        assert view is not None and view.steers[0]["steer"] == f"!add {newcomer}"  # the piece page lists it
        # !replay plays the stored tokens with the stored steers: the same notes, tempo and loudness.
        assert "plays again" in (await say(f"!replay {seed}", "dee"))[0]
        async with asyncio.timeout(60):
            while (
                conductor.current is None or conductor.current.record.seed != seed or conductor.current is slot
            ):
                await asyncio.sleep(0.1)
        replay = conductor.current
        assert replay.live.replay == record.tokens and tuple(replay.live.steering.given) == record.steers
        assert (await say("!faster", "eve"))[0] == "a replay plays as it was first heard; steer a new piece"


@pytest.mark.skipif(not HAS_REDIS, reason="needs the Redis server on 127.0.0.1:6379")
@pytest.mark.skipif(find_chromium() is None, reason="needs Debian's chromium (scripts/setup.sh installs it)")
@pytest.mark.anyio
async def test_the_overlay_shows_an_open_vote_counting_down_and_the_change_as_it_lands(tmp_path: Path):
    port = free_port()
    async with running_concert(tmp_path, seconds=20.0, http_port=port) as concert:
        await playing(concert)
        instruments = concert.conductor.current.record.recipe.instruments
        newcomer = next(n for n in ("violin", "flute", "cello", "harp") if n not in instruments)
        async with launch_chromium() as browser:
            page = await browser.new_page(f"http://127.0.0.1:{port}/overlay")
            steers = "document.getElementById('now-steers').textContent"
            await concert.commands.handle(viewer("ann", "!faster"))
            shown = await page.wait_for(f"{steers}.includes('!faster 1/2') && {steers}", timeout=15)
            assert int(shown.split("·")[1].split()[0]) <= 15  # seconds left, counting down
            await concert.commands.handle(viewer("mod", f"!add {newcomer}", moderator=True))
            await page.wait_for(f"{steers}.includes('!add {newcomer} · landed')", timeout=30)
