"""Which SoundFont to play with: the configured one, else the first that can be found on this machine."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from config.errors import ConfigError

SUFFIXES = (".sf2", ".sf3")
DEBIAN_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
# pretty_midi ships a small General MIDI font, so a plain `pip install` already gives the bot a voice.
PRETTY_MIDI_PACKAGE = "pretty_midi"
PRETTY_MIDI_SOUNDFONT = "TimGM6mb.sf2"


@dataclass(frozen=True)
class SoundFont:
    """A SoundFont file and where it was found, for start-up logs and error messages."""

    path: Path
    origin: str


def find_soundfont(configured: Path | None, search_dir: Path = Path("soundfonts")) -> SoundFont:
    """The SoundFont to load, searched in a fixed order.

    Args:
        configured: `synth.soundfont` from the settings; when set it must exist, nothing else is tried.
        search_dir: folder whose first `*.sf2`/`*.sf3` file (by name) wins over the system fonts.

    Returns:
        The configured font, else one from `search_dir`, Debian's fluid-soundfont-gm, or pretty_midi's TimGM6mb.

    Raises:
        ConfigError: the configured file is missing or not a SoundFont, or no font exists anywhere.
    """
    if configured is not None:
        return SoundFont(_check_configured(configured), "configured")
    if search_dir.is_dir():
        fonts = sorted(p for p in search_dir.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
        if fonts:
            return SoundFont(fonts[0], f"{search_dir}/ folder")
    if DEBIAN_SOUNDFONT.is_file():
        return SoundFont(DEBIAN_SOUNDFONT, "Debian fluid-soundfont-gm")
    if (bundled := _pretty_midi_soundfont()) is not None:
        return SoundFont(bundled, "pretty_midi TimGM6mb")
    raise ConfigError(
        f"no SoundFont found: synth.soundfont is not set, {search_dir}/ holds no .sf2 or .sf3 file, "
        f"and neither {DEBIAN_SOUNDFONT} nor pretty_midi's {PRETTY_MIDI_SOUNDFONT} is installed. "
        "Get one with `apt install fluid-soundfont-gm` or `pip install pretty_midi`, "
        f"or put a .sf2 file into {search_dir}/."
    )


def _check_configured(path: Path) -> Path:
    path = path.expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"synth.soundfont = '{path}' is not a SoundFont (expected a .sf2 or .sf3 file)")
    if not path.is_file():
        raise ConfigError(f"synth.soundfont = '{path}' does not exist")
    return path


def _pretty_midi_soundfont() -> Path | None:
    # find_spec locates the package without importing it: only the file is wanted, not the module.
    spec = importlib.util.find_spec(PRETTY_MIDI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if (font := Path(location) / PRETTY_MIDI_SOUNDFONT).is_file():
            return font
    return None
