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
