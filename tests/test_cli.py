"""The `concertbot` command as a user runs it."""

from __future__ import annotations

import wave

import mido
import numpy as np
import pytest
from typer.testing import CliRunner

from bot.cli import app
from generator.model import DEFAULT_MODEL_DIR, load_model
from synth.render import rms_dbfs

runner = CliRunner()


def _wav(path):
    with wave.open(str(path)) as f:
        rate = f.getframerate()
        audio = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16).reshape(-1, f.getnchannels())
    return rate, audio


def test_compose_to_wav_is_audible_and_the_right_length(tiny_model, tmp_path):
    out = tmp_path / "piece.wav"
    result = runner.invoke(
        app,
        [
            "compose",
            "bach",
            "-i",
            "violin",
            "-i",
            "cello",
            "--seconds",
            "8",
            "--seed",
            "11",
            "--tempo",
            "100",
            "--model",
            str(tiny_model / "best"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rate, audio = _wav(out)
    seconds = len(audio) / rate
    assert 8.0 + 1.5 <= seconds <= 8.0 + 1.5 + 6.0  # the piece, the reverb tail, and a last note's ring
    assert rms_dbfs(audio) > -45


def test_compose_midi_with_the_same_seed_is_byte_identical(tiny_model, tmp_path):
    args = ["compose", "irish", "--seconds", "6", "--seed", "5", "--model", str(tiny_model / "best")]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "a.mid")]).exit_code == 0
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "b.mid")]).exit_code == 0
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()


def test_no_seed_prints_the_one_chosen(tiny_model, tmp_path):
    result = runner.invoke(
        app,
        [
            "compose",
            "bach",
            "--seconds",
            "3",
            "--model",
            str(tiny_model / "best"),
            "--out",
            str(tmp_path / "x.mid"),
        ],
    )
    assert result.exit_code == 0
    assert "use --seed" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compose", "bahc"], "Did you mean bach"),
        (["compose", "bach", "-i", "vilin"], "Did you mean violin"),
        (["compose", "bach", "--tempo", "900"], "tempo 900 is out of range"),
        (["compose", "bach", "--temperature", "-1"], "temperature -1 is out of range"),
        (["compose", "bach", "--top-p", "0"], "top-p 0 is out of range"),
        (["compose", "bach", "--out", "x.mp3"], "must end in .mid or .wav"),
    ],
)
def test_bad_requests_exit_non_zero_with_a_clear_message(tiny_model, tmp_path, args, message):
    full = [*args, "--model", str(tiny_model / "best")]
    if "--out" not in full:
        full += ["--out", str(tmp_path / "x.mid")]
    result = runner.invoke(app, full)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_styles_and_instruments_are_listed(tiny_model):
    styles = runner.invoke(app, ["styles", "--model", str(tiny_model / "best")])
    assert styles.exit_code == 0 and "anthems" in styles.output and "bach" in styles.output
    instruments = runner.invoke(app, ["instruments"])
    assert instruments.exit_code == 0
    for name in ("violin", "cello", "harpsichord", "choir", "trumpet"):
        assert name in instruments.output


def test_shipped_model_composes_every_style(tmp_path):
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size < 25_000_000
    loaded = load_model()
    assert loaded.vocab.styles
    for style in loaded.vocab.styles:
        out = tmp_path / f"{style}.mid"
        result = runner.invoke(app, ["compose", style, "--seconds", "10", "--seed", "1", "--out", str(out)])
        assert result.exit_code == 0, result.output
        notes = [m for m in mido.MidiFile(out) if m.type == "note_on" and m.velocity > 0]
        assert len(notes) >= 4, style  # folk and palestrina are notated in half notes: few, long notes


def test_play_streams_live_to_a_recording_and_reports_as_json(tmp_path):
    import json

    out = tmp_path / "live.wav"
    args = ["play", "irish", "--seconds", "3", "--seed", "4", "--record", str(out), "--device", "off", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"time_to_first_audio_ms", "underruns", "generation_rtf", "seconds_played"}
    # Speeds are figures for bench/, not assertions: here only that each was measured.
    assert summary["time_to_first_audio_ms"] > 0
    assert isinstance(summary["underruns"], int) and summary["generation_rtf"] > 0
    assert 3.0 <= summary["seconds_played"] <= 3.0 + 4.0  # the piece, its last note, then the reverb tail
    rate, audio = _wav(out)
    assert rate == 44100
    assert rms_dbfs(audio) > -45  # music, levelled, not silence
    assert len(audio) / rate >= summary["seconds_played"]


def test_play_refuses_a_bad_recording_name_and_an_unknown_style(tmp_path):
    bad = runner.invoke(app, ["play", "irish", "--record", str(tmp_path / "x.mp3"), "--device", "off"])
    assert bad.exit_code == 2 and ".wav or .flac" in " ".join(bad.output.split())
    unknown = runner.invoke(app, ["play", "bahc", "--device", "off"])
    assert unknown.exit_code == 2 and "bach" in unknown.output


def test_eval_measures_every_style_against_its_real_held_out_pieces(tiny_model, dataset, tmp_path):
    out = tmp_path / "eval.md"
    args = ["eval", "--model", str(tiny_model / "best"), "--dataset", str(dataset), "--pieces", "2"]
    result = runner.invoke(app, [*args, "--seconds", "4", "--markdown", str(out)])
    assert result.exit_code == 0, result.output
    header, _rule, *rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
    ]
    col = {name: i for i, name in enumerate(header)}
    styles = [r[0] for r in rows[:-1]]
    assert (
        rows[-1][0] == "all"
        and len(styles) >= 2
        and set(styles) <= set(load_model(tiny_model / "best").vocab.styles)
    )
    for row in rows[:-1]:
        generated, real = row[col["recognised (real)"]].rstrip("%)").split("% (")
        assert 0 <= int(generated) <= 100 and 0 <= int(real) <= 100
        # A piece the classifier does not recognise is taken for another style it was trained on.
        taken = row[col["else taken for"]]
        assert (taken == "-") == (generated == "100") and (taken == "-" or taken in set(styles) - {row[0]})
        assert row[col["on instruments"]].endswith("%") and int(row[col["held-out pieces"]]) >= 1
        assert 0 <= int(row[col["real openings recognised"]].rstrip("%")) <= 100

    # One style alone: the same figures as in the full table, since the classifier still learns every style.
    first = rows[0][0]
    alone = tmp_path / "alone.md"
    result = runner.invoke(app, [*args, "--seconds", "4", "--style", first, "--markdown", str(alone)])
    assert result.exit_code == 0, result.output
    assert alone.read_text().splitlines()[2] == out.read_text().splitlines()[2]
    assert len(alone.read_text().splitlines()) == 4  # header, rule, the style, all

    for bad, named in ((["--temperature", "0"], "temperature 0"), (["--top-p", "1.5"], "top-p 1.5")):
        result = runner.invoke(app, [*args, *bad])
        assert result.exit_code != 0 and named in " ".join(result.output.split())
    result = runner.invoke(app, [*args, "--style", "zydeco"])
    assert result.exit_code != 0 and "zydeco" in result.output


def _broken_copy(model, tmp_path, name):
    """A copy of `model` whose file `name` is cut short, as an interrupted download or copy leaves it."""
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    data = (copy / name).read_bytes()
    (copy / name).write_bytes(data[: len(data) // 3])
    return copy


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
@pytest.mark.parametrize("command", ["compose", "play", "eval", "run"])
def test_a_broken_model_file_is_named_in_one_line_and_exits_2(tiny_model, tmp_path, name, command):
    model = _broken_copy(tiny_model / "best", tmp_path, name)
    args = {
        "compose": ["compose", "bach", "--model", str(model), "--out", str(tmp_path / "x.mid")],
        "play": ["play", "bach", "--model", str(model), "--device", "off"],
        "eval": ["eval", "--model", str(model)],
        "run": ["run", "--local", "--device", "off", "--seconds", "5"],
    }[command]
    env = {
        "CONCERTBOT_PATHS__MODEL_DIR": str(model),
        "CONCERTBOT_PATHS__DATA_DIR": str(tmp_path / "data"),
        "CONCERTBOT_HTTP_PORT": "0",
    }
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(model / name) in errors[0] and "broken" in errors[0]


def test_compose_with_a_missing_soundfont_says_so_before_composing(tiny_model, tmp_path):
    out = tmp_path / "piece.wav"
    missing = tmp_path / "gone.sf2"
    args = ["compose", "bach", "--model", str(tiny_model / "best"), "--out", str(out)]
    result = runner.invoke(app, args, env={"CONCERTBOT_SYNTH__SOUNDFONT": str(missing)})
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [f"error: synth.soundfont = '{missing}' does not exist"]
    assert not out.exists()
