"""A new streamer's first hour: errors in plain words, the piece page's key and title, the link to the local
chat, and the MIDI of the piece playing before it is all composed."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_midi
from typer.testing import CliRunner

from bot.cli import app
from generator.corpus import midi_problem
from generator.model import load_model

runner = CliRunner()
TUNE = [(i * 4, 60 + (i * 5) % 12, 4) for i in range(40)]


def _one_line(text: str) -> str:
    return " ".join(text.split())


# Unknown styles


def test_an_unknown_style_names_the_styles_the_model_has(tiny_model, tmp_path):
    model = tiny_model / "best"
    styles = load_model(model).vocab.styles
    assert "scottish" not in styles
    out = tmp_path / "x.mid"
    result = runner.invoke(app, ["compose", "scottish", "--model", str(model), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not out.exists()
    assert result.output.splitlines() == [
        f"error: unknown style 'scottish': this model has {', '.join(styles)}."
    ]


def test_a_misspelt_style_is_still_offered_its_closest_name(tiny_model, tmp_path):
    args = ["compose", "bahc", "--model", str(tiny_model / "best"), "--out", str(tmp_path / "x.mid")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "this model has anthems, bach, irish. Did you mean bach?" in _one_line(result.output)


# Broken MIDI files in a data build


def _broken_files(folder: Path) -> dict[str, str]:
    """A user's folder: two good tunes, then one file of each kind of breakage, with the reason each gets."""
    write_midi(folder / "anthems" / "good.mid", TUNE, program=56)
    write_midi(folder / "anthems" / "also_good.mid", [(s, p + 2, n) for s, p, n in TUNE], program=57)
    (folder / "anthems" / "notes.mid").write_text("Remember to buy strings.\n")
    (folder / "anthems" / "nothing.mid").write_bytes(b"")
    whole = (folder / "anthems" / "good.mid").read_bytes()
    (folder / "anthems" / "cut.mid").write_bytes(whole[: len(whole) // 2])  # a download that stopped halfway
    return {
        "notes.mid": "not a MIDI file",
        "nothing.mid": "empty file",
        "cut.mid": "truncated",
    }


def test_each_broken_midi_file_is_named_with_its_reason_and_the_build_goes_on(tmp_path):
    folder = tmp_path / "mine"
    expected = _broken_files(folder)
    out = tmp_path / "dataset"
    args = ["data", "build", "--no-corpus", "--midi", str(folder), "--workers", "1", "--out", str(out)]
    env = {"CONCERTBOT_PATHS__DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "MiniMidi" not in result.output and "Invaild" not in result.output
    lines = result.output.splitlines()
    for name, reason in expected.items():
        said = [line for line in lines if line.startswith(f"skipped mine/anthems/{name}: ")]
        assert len(said) == 1 and said[0].split(": ", 1)[1].startswith(reason), (name, said)
    summary = next(line for line in lines if line.startswith("skipped 3 pieces"))
    for reason in expected.values():
        assert f"1 {reason}" in summary
    # The build went on: both good tunes are in the data set, and the table says what each column counts.
    header = next(line for line in lines if "style" in line and "pieces" in line)
    for column in ("held out (pieces)", "notes", "tokens", "hours of music"):
        assert column in header
    assert " valid " not in header
    cells = next([c.strip() for c in line.split("│")] for line in lines if "│ anthems" in line)
    assert cells[2:4] == ["2", "1"]  # two pieces, one of them held out (every style of two holds one out)


def test_midi_problems_are_read_from_the_bytes(tmp_path):
    write_midi(tmp_path / "good.mid", TUNE)
    whole = (tmp_path / "good.mid").read_bytes()
    assert midi_problem(whole) is None
    assert midi_problem(b"") == "empty file"
    assert midi_problem(b"RIFF\x00\x00") == "not a MIDI file (it does not start with MThd)"
    assert midi_problem(whole[:10]) == "truncated (the file ends 4 bytes into its header)"
    assert midi_problem(whole[:-5]) == "truncated (track 1 of 1 is 5 bytes short)"
    assert midi_problem(whole[:14]) == "truncated (the header names 1 track, the file holds 0)"
    assert midi_problem(whole[:14] + b"e th\x00\x00").startswith("damaged (no chunk starts at byte 14")


@pytest.mark.parametrize("name", ["nothing.mid", "cut.mid", "notes.mid"])
def test_a_broken_file_gets_its_reason_from_the_extractor_too(tmp_path, name):
    from generator.corpus import extract_midi

    reason = _broken_files(tmp_path)[name]
    result = extract_midi(str(tmp_path / "anthems" / name), name, "anthems")
    assert result.pieces == [] and result.skipped[0][1].startswith(reason)
