"""Which SoundFont to play with: the configured one, else the first that can be found on this machine.

This module is the one place that knows the search order; `concertbot soundfonts` and `concertbot doctor`
list what it finds in that same order.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from config.errors import ConfigError

SUFFIXES = (".sf2", ".sf3")
# The project's own soundfonts/ folder, found from this file so that the bot finds it from any working
# directory; ./soundfonts (the folder a streamer runs the bot in) is searched before it.
PROJECT_SOUNDFONTS = Path(__file__).resolve().parent.parent / "soundfonts"
DEBIAN_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
# pretty_midi ships a small General MIDI font, so a plain `pip install` already gives the bot a voice.
PRETTY_MIDI_PACKAGE = "pretty_midi"
PRETTY_MIDI_SOUNDFONT = "TimGM6mb.sf2"


@dataclass(frozen=True)
class SoundFont:
    """A SoundFont file and where it was found, for start-up logs and error messages."""

    path: Path
    origin: str


def search_dirs(search_dir: Path | None = None) -> list[Path]:
    """The folders whose fonts come after the configured one: `search_dir` alone, or ./soundfonts then ours."""
    if search_dir is not None:
        return [search_dir]
    here = Path("soundfonts")
    if here.resolve() == PROJECT_SOUNDFONTS:
        return [here]
    return [here, PROJECT_SOUNDFONTS]


def find_soundfont(configured: Path | None, search_dir: Path | None = None) -> SoundFont:
    """The SoundFont to load, searched in a fixed order.

    Args:
        configured: `synth.soundfont` from the settings; when set it must exist, nothing else is tried.
        search_dir: folder whose first `*.sf2`/`*.sf3` file (by name) wins over the system fonts; None
            searches `./soundfonts` and then the project's top-level `soundfonts/`.

    Returns:
        The configured font, else one from the folders, Debian's fluid-soundfont-gm, or pretty_midi's TimGM6mb.

    Raises:
        ConfigError: the configured file is missing or not a SoundFont, or no font exists anywhere.
    """
    if configured is not None:
        return SoundFont(_check_configured(configured), "configured")
    if (font := next(found_soundfonts(search_dir), None)) is not None:
        return font
    folders = " nor ".join(f"{d}/" for d in search_dirs(search_dir))
    raise ConfigError(
        f"no SoundFont found: synth.soundfont is not set, neither {folders} holds a .sf2 or .sf3 file, "
        f"and neither {DEBIAN_SOUNDFONT} nor pretty_midi's {PRETTY_MIDI_SOUNDFONT} is installed. "
        "Get one with `apt install fluid-soundfont-gm` or `pip install pretty_midi`, "
        f"or put a .sf2 file into {search_dirs(search_dir)[-1]}/."
    )


def found_soundfonts(search_dir: Path | None = None) -> Iterator[SoundFont]:
    """Every font the search finds when none is configured, best first: what `find_soundfont` picks from."""
    seen: set[Path] = set()
    for font in _candidates(search_dirs(search_dir)):
        # ./soundfonts may be the project's folder under another name, and default-GM.sf2 a link to FluidR3.
        if (real := font.path.resolve()) not in seen:
            seen.add(real)
            yield font


def _candidates(folders: Sequence[Path]) -> Iterator[SoundFont]:
    for folder in folders:
        if folder.is_dir():
            fonts = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
            yield from (SoundFont(p, f"{folder}/ folder") for p in fonts)
    if DEBIAN_SOUNDFONT.is_file():
        yield SoundFont(DEBIAN_SOUNDFONT, "Debian fluid-soundfont-gm")
    if (bundled := _pretty_midi_soundfont()) is not None:
        yield SoundFont(bundled, "pretty_midi TimGM6mb")


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
