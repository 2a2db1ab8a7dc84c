"""`concertbot doctor` and `concertbot soundfonts`: each check against the real part it looks at."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from fake_twitch import BOT_SCOPES, FakeTwitch

from bot import doctor
from bot.state.lock import data_folder_lock
from config.twitch import LOGIN_SCOPES
from synth import soundfonts
from synth.soundfonts import SoundFont, find_soundfont, found_soundfonts

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The real `concertbot` in a subprocess, with no Twitch, no REDIS_URL and `env` on top of ours."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TWITCH_", "CONCERTBOT_", "REDIS_URL"))}
    base |= {"COLUMNS": "250", "CONCERTBOT_PATHS__DATA_DIR": str(cwd / "data")}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=cwd,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=100,
    )


def rows(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    return {row["name"]: row for row in json.loads(done.stdout)}


# --- the command as a streamer runs it ------------------------------------------------------------------


def test_a_healthy_setup_passes_every_check(tmp_path):
    # CI set as CI sets it: pyfluidsynth then prints where it found its library, which must not reach stdout.
    done = cli(["doctor", "--json"], tmp_path, CONCERTBOT_HTTP_PORT=str(free_port()), CI="true")
    assert done.returncode == 0, done.stdout + done.stderr
    found = rows(done)
    assert list(found) == [
        "sound devices",
        "ffmpeg",
        "SoundFont",
        "model",
        "HTTP port",
        "Redis",
        "Twitch token",
        "disk",
        "torch threads",
    ]
    assert not [r for r in found.values() if r["status"] == "FAIL"], found
    assert "libmp3lame" in found["ffmpeg"]["found"]  # the web side's /stream.mp3 needs it
    assert "bach" in found["model"]["found"]


def test_no_ffmpeg_on_path_is_a_fail_row_and_exit_status_1(tmp_path):
    (tmp_path / "bin").mkdir()
    done = cli(["doctor"], tmp_path, PATH=str(tmp_path / "bin"), CONCERTBOT_HTTP_PORT=str(free_port()))
    assert done.returncode == 1, done.stdout + done.stderr
    ffmpeg_row = next(line for line in done.stdout.splitlines() if "ffmpeg" in line and "PATH" in line)
    assert "FAIL" in ffmpeg_row and "apt-get install ffmpeg" in ffmpeg_row
    assert "would stop the concert: ffmpeg" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_broken_setting_is_one_fail_row(tmp_path):
    done = cli(["doctor", "--json"], tmp_path, CONCERTBOT_HTTP_PORT="http")
    assert done.returncode == 1
    (row,) = rows(done).values()
    assert row["name"] == "settings" and row["status"] == "FAIL" and "'http'" in row["found"]


# --- one check at a time --------------------------------------------------------------------------------


def test_a_missing_or_broken_soundfont_fails(tmp_path):
    missing = tmp_path / "nowhere" / "Grand.sf2"
    check = doctor.check_soundfont(missing)
    assert check.status == "FAIL" and str(missing) in check.found and "synth.soundfont" in check.fix
    corrupt = tmp_path / "corrupt.sf2"
    corrupt.write_bytes(b"RIFF but no SoundFont in it")
    assert "could not load" in doctor.check_soundfont(corrupt).found
    assert doctor.check_soundfont(None, tmp_path).status == "FAIL"  # it would be picked from the folder too
    good = doctor.check_soundfont(None, tmp_path / "empty")
    assert good.status == "OK" and str(find_soundfont(None, tmp_path / "empty").path) in good.found


def test_a_port_taken_by_a_listening_socket_fails_naming_port_and_setting():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        check = doctor.check_port("127.0.0.1", port)
    assert check.status == "FAIL"
    assert f"concert.http_port = {port}" in check.found and "CONCERTBOT_HTTP_PORT" in check.fix
    assert doctor.check_port("127.0.0.1", port).status == "OK"  # closed again: free
    assert doctor.check_port("127.0.0.1", 0).status == "OK"  # web side off


def test_redis_at_redis_url_must_answer(tmp_path):
    assert doctor.check_redis("redis://127.0.0.1:6379/0", tmp_path).status == "OK"
    dead = doctor.check_redis(f"redis://:hunter2@127.0.0.1:{free_port()}/0", tmp_path)
    assert dead.status == "FAIL" and "does not answer" in dead.found
    assert "hunter2" not in dead.found + dead.fix
    assert "not a Redis URL" in doctor.check_redis("http://127.0.0.1:6379", tmp_path).found
    embedded = doctor.check_redis(None, tmp_path)
    assert embedded.status == "OK" and "embedded" in embedded.found


def test_another_concertbot_on_the_data_folder_fails(tmp_path):
    with data_folder_lock(tmp_path):
        held = doctor.check_redis(None, tmp_path)
    assert held.status == "FAIL" and f"pid {os.getpid()}" in held.found
    assert doctor.check_redis(None, tmp_path).status == "OK"


@pytest.mark.anyio
async def test_the_twitch_token_is_validated_at_the_fake_twitch():
    async with FakeTwitch() as fake:
        good = await asyncio.to_thread(doctor.check_twitch, fake.settings())
        bad = await asyncio.to_thread(doctor.check_twitch, fake.settings(bot_token="not-a-token-twitch-knows"))
        narrow = fake.user_token("concertbot", scopes=("user:read:chat",))
        lacking = await asyncio.to_thread(doctor.check_twitch, fake.settings(bot_token=narrow))
        other = await asyncio.to_thread(
            doctor.check_twitch, fake.settings(bot_token=fake.user_token("someone"))
        )
    assert good.status == "OK" and "concertbot" in good.found and "user:write:chat" in good.found
    assert bad.status == "FAIL" and "rejects" in bad.found and "not-a-token" not in bad.found
    assert lacking.status == "FAIL" and "user:write:chat" in lacking.found and "user:bot" in lacking.found
    assert other.status == "FAIL" and "someone" in other.found
    assert doctor.check_twitch(None).status == "OK"


@pytest.mark.anyio
async def test_a_stored_login_is_the_token_checked_when_twitch_bot_token_is_unset(tmp_path, monkeypatch):
    from bot.chat.twitch_auth import StoredToken, run_settings, save_token, token_path

    for name in [k for k in os.environ if k.startswith("TWITCH_")]:
        monkeypatch.delenv(name)
    assert doctor.check_twitch(run_settings(tmp_path)).found.startswith("Twitch not configured")
    async with FakeTwitch() as fake:
        monkeypatch.setenv("TWITCH_ID_URL", f"{fake.url}/")
        token = fake.bot_token
        stored = StoredToken(
            fake.client_id, fake.bot.id, fake.bot.login, BOT_SCOPES, 2e9, token.value, token.refresh or ""
        )
        save_token(token_path(tmp_path), stored)
        good = await asyncio.to_thread(doctor.check_twitch, run_settings(tmp_path))
        save_token(token_path(tmp_path), replace(stored, access_token="revoked"))
        stale = await asyncio.to_thread(doctor.check_twitch, run_settings(tmp_path))
    assert good.status == "OK" and str(token_path(tmp_path)) in good.found and "concertbot" in good.found
    assert stale.status == "FAIL" and "stored token" in stale.found and "twitch status" in stale.fix


@pytest.mark.anyio
async def test_each_chat_the_bot_would_join_is_a_row_of_its_own():
    async with FakeTwitch(channel="north", channels=("south",)) as fake:
        fake.moderate(fake.bot.login, "north")
        token = fake.user_token("concertbot", scopes=LOGIN_SCOPES)
        chats = [
            ("channels 'n': twitch_channel", "north"),
            ("channels 's': twitch_channel", "south"),
            ("channels 't': twitch_channel", "sotuh"),  # a typo
            ("channels 'u': twitch_channel", "no such"),  # not even a login: Twitch would answer 400
            ("channels 'b': twitch_channel", "concertbot"),  # the bot's own channel
        ]
        found = await asyncio.to_thread(doctor.check_chats, fake.settings(bot_token=token), chats)
        narrow = await asyncio.to_thread(doctor.check_chats, fake.settings(), chats[:2])
        refused = await asyncio.to_thread(doctor.check_chats, fake.settings(bot_token="revoked"), chats)
    by_name = {c.name: c for c in found}
    assert list(by_name) == [
        "Twitch #north",
        "Twitch #south",
        "Twitch #sotuh",
        "Twitch #no such",
        "Twitch #concertbot",
    ]
    assert (
        by_name["Twitch #north"].status == "OK" and "moderator in #north: yes" in by_name["Twitch #north"].found
    )
    south = by_name["Twitch #south"]
    assert south.status == "OK" and "moderator in #south: no" in south.found and "/mod concertbot" in south.fix
    typo = by_name["Twitch #sotuh"]
    assert typo.status == "FAIL" and "not a Twitch account" in typo.found and "channels 't'" in typo.found
    assert "twitch.tv/<login>" in typo.fix
    assert by_name["Twitch #no such"].status == "FAIL"
    assert "broadcaster" in by_name["Twitch #concertbot"].found
    assert [c.status for c in narrow] == ["OK", "OK"] and "lacks user:read:moderated_channels" in narrow[
        0
    ].found
    assert refused == []  # the token's own row says Twitch rejects it


@pytest.mark.anyio
async def test_doctor_checks_every_channels_chat_and_names_the_typo(tmp_path):
    config = tmp_path / "channels.toml"
    config.write_text(
        '[[channels]]\nname = "north"\ntwitch_channel = "#North"\n\n'
        '[[channels]]\nname = "south"\ntwitch_channel = "sotuh"\n\n'
        '[[channels]]\nname = "local"\n'
    )
    async with FakeTwitch(channel="north", channels=("south",)) as fake:
        fake.moderate(fake.bot.login, "north")
        s = fake.settings()
        env = {
            "CONCERTBOT_CONFIG": str(config),
            "CONCERTBOT_HTTP_PORT": "0",
            "TWITCH_CLIENT_ID": s.client_id,
            "TWITCH_CLIENT_SECRET": s.client_secret.get_secret_value(),
            "TWITCH_BOT_ID": s.bot_id,
            "TWITCH_BOT_TOKEN": fake.user_token("concertbot", scopes=LOGIN_SCOPES),
            "TWITCH_HELIX_URL": s.helix_url,
            "TWITCH_ID_URL": s.id_url,
            "TWITCH_EVENTSUB_URL": s.eventsub_url,
        }  # no TWITCH_CHANNEL: with [[channels]] each names its own chat
        done = await asyncio.to_thread(cli, ["doctor", "--json"], tmp_path, **env)
        shown = await asyncio.to_thread(cli, ["doctor"], tmp_path, **env)
    assert done.returncode == 1, done.stdout + done.stderr
    found = rows(done)
    assert found["Twitch token"]["status"] == "OK"
    assert (
        found["Twitch #north"]["status"] == "OK" and "yes (channels 'north'" in found["Twitch #north"]["found"]
    )
    assert found["Twitch #sotuh"]["status"] == "FAIL"
    assert "channels 'south': twitch_channel" in found["Twitch #sotuh"]["found"]
    assert [n for n in found if n.startswith("Twitch #")] == ["Twitch #north", "Twitch #sotuh"]
    assert "would stop the concert: Twitch #sotuh" in shown.stderr
    assert "Traceback" not in done.stdout + done.stderr + shown.stdout + shown.stderr


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_the_shipped_model_passes_and_a_broken_copy_fails(tmp_path):
    from generator.model import DEFAULT_MODEL_DIR

    assert doctor.default_model_dir() == DEFAULT_MODEL_DIR
    shipped = doctor.check_model(None)
    assert shipped.status == "OK" and "9 styles" in shipped.found and "scottish" in shipped.found
    copy = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut off halfway
    truncated = doctor.check_model(copy)
    assert truncated.status == "FAIL" and str(copy) in truncated.found
    (copy / "vocab.json").write_text("{not json")
    assert "vocab.json is broken" in doctor.check_model(copy).found
    assert "config.json is missing" in doctor.check_model(tmp_path / "empty").found


def test_encoders_are_those_the_configured_outputs_use():
    from config.settings import load_settings

    settings = load_settings(concert={"http_port": 8080})
    assert doctor.needed_encoders(settings) == {"libmp3lame": "/stream.mp3 (concert.http_port = 8080)"}
    twitch = load_settings(concert={"http_port": 0}, outputs={"push_url": "rtmp://live.twitch.tv/app/live_key"})
    assert set(doctor.needed_encoders(twitch)) == {"aac", "libx264"}
    ice = load_settings(concert={"http_port": 0}, outputs={"push_url": "icecast://source:pw@h:8000/live.ogg"})
    assert doctor.needed_encoders(ice) == {"libopus": "outputs.push_url"}
    listing = " ------\n V....D libx264   H.264\n A..... aac       AAC\n A....D libmp3lame  MP3\n"
    assert doctor.parse_encoders("Encoders:\n V..... = Video\n" + listing) == {"libx264", "aac", "libmp3lame"}


def test_an_ffmpeg_without_a_needed_encoder_fails():
    check = doctor.check_ffmpeg({"libnosuchcodec": "outputs.push_url", "aac": "outputs.push_url"})
    assert check.status == "FAIL" and "libnosuchcodec (for outputs.push_url)" in check.found
    assert "aac" not in check.found.split("lacks")[1]
    assert doctor.check_ffmpeg({}, path="/nonexistent").status == "OK"  # nothing needs it


def test_free_disk_in_minutes_of_recording(tmp_path):
    full = doctor.judge_disk(50 << 20, tmp_path, 44100)
    low = doctor.judge_disk(500 << 20, tmp_path, 44100)
    plenty = doctor.judge_disk(20 << 30, tmp_path, 44100)
    assert (full.status, low.status, plenty.status) == ("FAIL", "WARN", "OK")
    assert "about 5 min" in full.found  # 44.1 kHz 16-bit stereo: 10.6 MB a minute
    assert "about 2,029 min" in plenty.found


def test_sound_devices_seen():
    speakers = {"name": "Speakers", "max_output_channels": 2}
    mic = {"name": "Mic", "max_output_channels": 0}
    assert doctor.check_sound("auto", [mic]).status == "WARN"
    assert doctor.check_sound("auto", [mic, speakers]).found == "1 output(s): Speakers"
    assert doctor.check_sound("speak", [speakers]).status == "OK"
    assert doctor.check_sound("USB DAC", [speakers]).status == "WARN"
    assert doctor.check_sound("1", [speakers, mic]).status == "WARN"  # a number names a device, not an output
    assert doctor.check_sound("0", [speakers, mic]).status == "OK"
    assert doctor.check_sound("off").status == "OK"


def test_torch_threads_against_cores():
    assert doctor.check_torch(1, cores=2).status == "OK"
    assert doctor.check_torch(4, cores=4).fix == "set engine.torch_threads = 3"
    assert doctor.check_torch(1, cores=1).status == "WARN"


def test_a_crashing_check_is_a_fail_row_and_the_others_still_run(tmp_path, monkeypatch, caplog):
    from config.settings import load_settings

    def broken(configured, search_dir=None):
        raise RuntimeError("a bug in the check")

    monkeypatch.setattr(doctor, "check_soundfont", broken)
    settings = load_settings(concert={"http_port": 0}, paths={"data_dir": str(tmp_path)})
    checks = doctor.run_checks(settings, lambda: None)
    assert [c.status for c in checks if c.name == "SoundFont"] == ["FAIL"]
    assert len(checks) == 9 and doctor.failed(checks)
    assert "a bug in the check" in caplog.text


# --- soundfonts/ and `concertbot soundfonts` ------------------------------------------------------------


def test_the_search_order_puts_the_working_folder_then_the_project_folder_first(tmp_path, monkeypatch):
    project = tmp_path / "project" / "soundfonts"
    here = tmp_path / "here" / "soundfonts"
    for folder, name in ((project, "b_project.sf2"), (here, "a_here.sf3")):
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"")
    monkeypatch.setattr(soundfonts, "PROJECT_SOUNDFONTS", project)
    monkeypatch.chdir(here.parent)
    listed = list(found_soundfonts())
    assert listed[:2] == [
        SoundFont(Path("soundfonts/a_here.sf3"), "soundfonts/ folder"),
        SoundFont(project / "b_project.sf2", f"{project}/ folder"),
    ]
    assert find_soundfont(None) == listed[0]
    monkeypatch.chdir(project.parent)  # in the project itself its folder is listed once
    assert [f.path.name for f in found_soundfonts()].count("b_project.sf2") == 1
    monkeypatch.chdir(tmp_path)
    assert find_soundfont(None).path == project / "b_project.sf2"


def test_the_repository_has_its_soundfonts_folder_with_fonts_kept_out_of_git():
    assert (soundfonts.PROJECT_SOUNDFONTS / "README.md").is_file()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "soundfonts/Mine.sf2"], cwd=soundfonts.PROJECT_SOUNDFONTS.parent
    )
    assert ignored.returncode == 0


def test_concertbot_soundfonts_lists_a_font_in_the_soundfonts_folder_and_marks_it(tmp_path):
    (tmp_path / "soundfonts").mkdir()
    shutil.copy(find_soundfont(None, tmp_path).path, tmp_path / "soundfonts" / "Concert Grand.sf2")
    done = cli(["soundfonts"], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    mine = next(line for line in lines if "Concert Grand.sf2" in line)
    assert "plays" in mine and "MiB" in mine and "soundfonts/ folder" in mine
    assert sum("plays" in line for line in lines) == 1
    gone = cli(["soundfonts"], tmp_path, CONCERTBOT_SYNTH__SOUNDFONT=str(tmp_path / "Gone.sf2"))
    assert gone.returncode == 2 and "does not exist" in gone.stderr
    assert "missing" in next(line for line in gone.stdout.splitlines() if "Gone.sf2" in line)
