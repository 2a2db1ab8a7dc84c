"""Settings are validated once, and a bad value is quoted back."""

from __future__ import annotations

import pytest

from config import ConfigError, load_settings


def test_defaults_load():
    s = load_settings()
    assert s.synth.sample_rate == 44100
    assert 0 < s.sampling.top_p <= 1


def test_environment_overrides_and_bad_values_are_quoted(monkeypatch):
    monkeypatch.setenv("CONCERTBOT_SAMPLING__TEMPERATURE", "0.7")
    assert load_settings().sampling.temperature == 0.7
    monkeypatch.setenv("CONCERTBOT_SYNTH__SAMPLE_RATE", "lots")
    with pytest.raises(ConfigError, match=r"synth.sample_rate = 'lots'"):
        load_settings()


def test_user_file_overrides_defaults(tmp_path, monkeypatch):
    path = tmp_path / "mine.toml"
    path.write_text("[train]\nn_layer = 7\n")
    monkeypatch.setenv("CONCERTBOT_CONFIG", str(path))
    assert load_settings().train.n_layer == 7
    monkeypatch.setenv("CONCERTBOT_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_settings()


def test_short_names_a_streamer_sets_by_hand(monkeypatch):
    monkeypatch.setenv("CONCERTBOT_RECORD", "tonight.flac")
    monkeypatch.setenv("REDIS_URL", "redis://user:hunter2@example:6379/0")
    monkeypatch.setenv("CONCERTBOT_ADMIN_TOKEN", "letmein")
    monkeypatch.setenv("CONCERTBOT_HTTP_PORT", "9090")
    s = load_settings()
    assert str(s.outputs.record) == "tonight.flac"
    assert s.concert.redis_url.get_secret_value().endswith("@example:6379/0")
    assert s.concert.admin_token.get_secret_value() == "letmein"
    assert s.concert.http_port == 9090
    assert "hunter2" not in repr(s) and "letmein" not in repr(s)  # secrets stay out of logs and tracebacks
    # The long form wins when both are set.
    monkeypatch.setenv("CONCERTBOT_CONCERT__HTTP_PORT", "7070")
    assert load_settings().concert.http_port == 7070
    monkeypatch.setenv("CONCERTBOT_HTTP_PORT", "not-a-port")
    monkeypatch.delenv("CONCERTBOT_CONCERT__HTTP_PORT")
    with pytest.raises(ConfigError, match=r"concert.http_port = 'not-a-port'"):
        load_settings()


def test_a_recording_named_in_the_environment_becomes_an_output(monkeypatch, tmp_path):
    from bot.concert.player import build_sinks

    monkeypatch.setenv("CONCERTBOT_RECORD", str(tmp_path / "concert.wav"))
    sinks = build_sinks(load_settings(), device="off")
    assert [s.name for s in sinks] == [f"recording {tmp_path / 'concert.wav'}"]


@pytest.mark.parametrize("tempo", ["25", "29", "241", "300"])
def test_a_tempo_no_request_may_have_stops_the_concert_at_start_up(monkeypatch, tmp_path, tempo):
    from typer.testing import CliRunner

    from bot.cli import app
    from generator.recipes import MAX_TEMPO, MIN_TEMPO

    monkeypatch.setenv("CONCERTBOT_SAMPLING__TEMPO", str(MIN_TEMPO))
    assert load_settings().sampling.tempo == MIN_TEMPO
    monkeypatch.setenv("CONCERTBOT_SAMPLING__TEMPO", str(MAX_TEMPO))
    assert load_settings().sampling.tempo == MAX_TEMPO
    monkeypatch.setenv("CONCERTBOT_SAMPLING__TEMPO", tempo)
    with pytest.raises(ConfigError, match=rf"sampling.tempo = '{tempo}'"):
        load_settings()
    env = {"CONCERTBOT_PATHS__DATA_DIR": str(tmp_path), "CONCERTBOT_HTTP_PORT": "0"}
    result = CliRunner().invoke(app, ["run", "--device", "off", "--seconds", "1"], env=env)
    assert result.exit_code == 2 and f"sampling.tempo = '{tempo}'" in result.output
    assert "Traceback" not in result.output
