"""A doubled instrument (a quartet's two violins): two parts to the model, each heard as what it is."""

from __future__ import annotations

import dataclasses

import mido
import pytest

from config.errors import ConcertbotError
from generator.corpus import Piece
from generator.decode import midi_bytes, to_midi
from generator.events import piece_events
from generator.model import load_model
from generator.recipes import RequestError, learn_sounds, make_request, recipe_from_dict
from generator.sampling import Composer, PieceRequest
from generator.steer import SteerState


@pytest.fixture(scope="module")
def loaded():
    return load_model()


def _with_card(loaded, style: str, **fields):
    card = {**loaded.card, "style_defaults": {**loaded.card["style_defaults"]}}
    card["style_defaults"][style] = {**card["style_defaults"][style], **fields}
    return dataclasses.replace(loaded, card=card)


def _programs_heard(midi: mido.MidiFile) -> list[int]:
    return sorted(m.program for m in midi.tracks[0] if m.type == "program_change")


def test_the_default_quartet_is_two_violins_a_viola_and_a_cello(loaded):
    # The data set gave each quartet's second violin the clarinet's program (a part needs one of its own), and
    # the card learnt that from the scores: the default ensemble is heard as the quartet it was written for.
    assert loaded.card["style_defaults"]["classical"]["sounds"] == {"clarinet": "violin"}
    request = make_request(loaded, "classical", seconds=6, seed=5)
    assert request.heard() == ("violin", "violin", "viola", "cello")
    assert request.programs() == [40, 41, 42, 71]
    assert request.sound_programs() == {71: 40}
    # Typed out by a viewer, in any order, it is the same piece, named in the order typed.
    typed = make_request(loaded, "classical", ["cello", "violin", "viola", "violin"], seconds=6, seed=5)
    assert (typed.programs(), typed.sounds) == (request.programs(), request.sounds)
    assert typed.heard() == ("cello", "violin", "violin", "viola")


def test_only_the_sound_changes_never_a_note(loaded):
    request = make_request(loaded, "classical", seconds=6, seed=5)
    composer = Composer(loaded)
    heard = composer.compose(request)
    as_scored = composer.compose(dataclasses.replace(request, sounds=()))
    assert heard.tokens == as_scored.tokens and heard.notes
    midi = to_midi(heard.notes, request.tempo, sounds=request.sound_programs())
    plain = to_midi(as_scored.notes, request.tempo)
    assert _programs_heard(plain) == [40, 41, 42, 71]
    assert _programs_heard(midi) == [40, 40, 41, 42]  # the clarinet's channel plays a violin
    notes = [(m.type, m.channel, m.note, m.time) for m in midi.tracks[0] if m.type.startswith("note")]
    assert notes == [(m.type, m.channel, m.note, m.time) for m in plain.tracks[0] if m.type.startswith("note")]
    assert midi_bytes(midi) != midi_bytes(plain)
    # Live, the first batch sets the same programs as the file.
    first = next(piece_events(loaded.vocab, heard.tokens, request.tempo, request.programs(), None, {71: 40}))
    assert sorted(m.program for _, m in first.events) == [40, 40, 41, 42]


def test_a_repeat_takes_a_free_spare_and_a_named_instrument_keeps_its_own(loaded):
    # In a style that learnt no spare, the repeat takes the first free one that holds the part's register.
    irish = make_request(loaded, "irish", ["violin", "violin"], seconds=6, seed=1)
    assert irish.heard() == ("violin", "violin") and len(irish.programs()) == 2
    ((spare, heard),) = irish.sounds
    assert heard == "violin" and spare in irish.instruments and spare != "violin"
    # A clarinet asked for is a clarinet; the second violin then plays on another spare.
    mixed = make_request(loaded, "classical", ["violin", "violin", "clarinet"], seconds=6, seed=1)
    assert mixed.heard() == ("violin", "violin", "clarinet")
    assert dict(mixed.sounds).get("clarinet") is None and len(mixed.programs()) == 3
    # Drums are one kit, however often they are named.
    assert make_request(loaded, "irish", ["drums", "violin", "drums"], seconds=6, seed=1).heard() == (
        "drums",
        "violin",
    )
    with pytest.raises(RequestError, match="at most 6"):
        make_request(loaded, "classical", ["violin"] * 7, seconds=6, seed=1)


def test_a_card_without_sounds_plays_as_before(loaded):
    old = _with_card(loaded, "classical", sounds={})
    request = make_request(old, "classical", seconds=6, seed=5)
    assert request.sounds == () and request.heard() == ("violin", "viola", "cello", "clarinet")


def test_a_recipe_from_outside_is_checked_for_its_sounds():
    fields = PieceRequest("classical", ("violin", "clarinet"), 112.0, 10.0, 3, sounds=(("clarinet", "violin"),))
    assert recipe_from_dict(fields.to_dict()) == fields
    for sounds, said in [
        ({"oboe": "violin"}, "parts the piece does not have"),
        ({"clarinet": "kazoo"}, "kazoo"),
        (["clarinet"], "not a recipe"),
        ({"clarinet": 7}, "7"),
    ]:
        with pytest.raises(RequestError, match=said):
            recipe_from_dict({**fields.to_dict(), "sounds": sounds})


def test_steering_drops_and_adds_by_what_is_heard():
    state = SteerState.of(("violin", "viola", "cello", "clarinet"), 112.0, "G", (("clarinet", "violin"),))
    once = state.after("drop", "violin")  # the part named violin first
    assert once.instruments == ("viola", "cello", "clarinet") and once.sounds == (("clarinet", "violin"),)
    twice = once.after("drop", "violin")  # then the part heard as one
    assert twice.instruments == ("viola", "cello") and twice.sounds == ()
    with pytest.raises(ConcertbotError, match="plays a violin"):
        state.after("add", "clarinet")
    with pytest.raises(ConcertbotError, match=r"now: viola, cello\)"):
        twice.after("drop", "violin")


def test_the_card_learns_a_spare_only_where_it_mostly_stands_in():
    rows = [
        {"ranges": {"40": [60, 90], "71": [55, 80]}, "stand_ins": {"71": 40}},
        {"ranges": {"40": [60, 90], "71": [55, 80]}, "stand_ins": {"71": 40}},
        {"ranges": {"71": [50, 90], "42": [36, 60]}},  # a real clarinet
        {"ranges": {"73": [60, 90], "68": [58, 80]}, "stand_ins": {"68": 73}},
        {"ranges": {"68": [58, 80]}},
    ]
    # The clarinet stood in for a violin in two pieces of three; the oboe for a flute in one of two: not most.
    assert learn_sounds(rows) == {"clarinet": "violin"}
    assert learn_sounds([{"ranges": {"40": [1, 2]}}]) == {}  # a data set from before stand-ins


def test_a_quartet_score_remembers_its_second_violin():
    from generator import data

    for source in data.corpus_sources(["classical"]):
        pieces: list[Piece] = data._extract(source).pieces
        quartets = [p for p in pieces if 71 in p.programs and 40 in p.programs]
        if quartets:
            assert quartets[0].stand_ins == {71: 40}
            return
    raise AssertionError("no quartet with a second violin in the corpus")


def test_the_api_and_the_overlay_name_the_parts_as_heard(loaded):
    from bot.web.data import now_fields
    from bot.web.view import NowView

    request = make_request(loaded, "classical", seconds=6, seed=5)
    assert now_fields(NowView(request, None, 0, 0.0))["instruments"] == ["violin", "violin", "viola", "cello"]


def test_a_users_midi_with_two_violin_tracks_has_two_parts_and_one_piano(tmp_path):
    from generator.corpus import extract_midi

    midi = mido.MidiFile(ticks_per_beat=480)
    tracks = [
        (40, 0, 76),
        (40, 1, 67),
        (0, 2, 60),
        (0, 2, 48),
    ]  # (program, channel, pitch): violins I and II, a
    for program, channel, pitch in tracks:  # piano's right and left hands
        track = mido.MidiTrack()
        track.append(mido.Message("program_change", program=program, channel=channel))
        for i in range(8):
            track.append(mido.Message("note_on", note=pitch + i % 3, velocity=80, channel=channel, time=0))
            track.append(mido.Message("note_off", note=pitch + i % 3, velocity=0, channel=channel, time=480))
        midi.tracks.append(track)
    path = tmp_path / "quartet.mid"
    midi.save(path)
    (piece,) = extract_midi(str(path), "quartet.mid", "mine").pieces
    assert len(piece.programs) == 3 and {0, 40} < set(piece.programs)  # the hands stay one piano
    (spare,) = set(piece.programs) - {0, 40}
    assert piece.stand_ins == {spare: 40}
    second = piece.notes[piece.notes[:, 3] == spare]
    assert sorted(set(second[:, 2].tolist())) == [67, 68, 69]  # the lower violin's part, on its own program
