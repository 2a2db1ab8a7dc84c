"""Imports point one way (STYLE.md, "The shape"): every module is parsed with `ast`, nothing is imported.

generator/ never imports bot/ or synth/; synth/ never imports generator/ or bot/; config/ (settings and the one
exception root, which all three use) imports none of them; and no shipped module imports a test module (a
fixture or fake that works in tests would be missing from an installed bot).

Inside bot/ the rooms point one way too: state/ (Redis, its keys and scripts) stands alone; concert/ (where
generator and synth meet) uses state/; chat/ uses state/ and the conductor; web/ sees only state/ and its own
view types, never the engine or the conductor. The modules at the top of bot/ (app, cli, concert_view, doctor)
wire the rooms together, and no room imports them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("bot", "generator", "synth", "config")  # pyproject's packages
FORBIDDEN = {
    "generator": frozenset({"bot", "synth"}),
    "synth": frozenset({"generator", "bot"}),
    "config": frozenset({"bot", "generator", "synth"}),
}
# bot/'s rooms: what each may import from the others (its own room always).
ROOMS = {
    "state": frozenset(),
    "concert": frozenset({"state"}),
    "chat": frozenset({"state", "concert"}),
    "web": frozenset({"state"}),
}


@dataclass(frozen=True)
class Violation:
    path: str  # relative to the root
    line: int
    imported: str  # the module as written, made absolute
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported} ({self.rule})"


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import anywhere in the file, in functions and TYPE_CHECKING too,
    and for `importlib.import_module("...")` / `__import__("...")` with a literal name."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from ..bot import x` in generator/a/b.py is generator.bot
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:  # `from generator import model` names a module too
                yield node.lineno, f"{name}.{alias.name}".lstrip(".")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def names_of_test_modules(root: Path) -> frozenset[str]:
    """What a shipped module would import to reach test code: `tests...`, or a module of tests/ by its bare
    name, as the tests themselves do (tests/ is on their path)."""
    folder = root / "tests"
    names = {p.stem for p in folder.glob("*.py")} - {"__init__"} if folder.is_dir() else set()
    return frozenset(names | {"tests"})


def crossing(module: str, imported: str) -> str:
    """Why `module` may not import `imported` across bot/'s rooms; "" when it may."""
    here, there = module.split("."), imported.split(".")
    if len(here) < 3 or here[0] != "bot" or here[1] not in ROOMS or there[0] != "bot" or len(there) < 2:
        return ""
    room, target = here[1], there[1]
    if target == room or target in ROOMS[room]:
        return ""
    if target in ROOMS:
        return f"bot/{room}/ never imports bot/{target}/"
    return f"bot/{room}/ never imports bot/'s top ({target})"


def violations(root: Path, packages: tuple[str, ...] = SHIPPED) -> list[Violation]:
    """Every import in `root`'s `packages` that goes against the direction of the pipeline."""
    tests = names_of_test_modules(root)
    found = []
    for top in packages:
        for path in sorted((root / top).rglob("*.py")):
            module = module_name(root, path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, name in imported_modules(tree, module, path.name == "__init__.py"):
                head = name.split(".")[0]
                rule = ""
                if head in FORBIDDEN.get(top, ()):
                    rule = f"{top}/ never imports {head}/"
                elif room_rule := crossing(module, name):
                    rule = room_rule
                elif head in tests:
                    rule = "no shipped module imports a test module"
                if rule:
                    found.append(Violation(str(path.relative_to(root)), line, name, rule))
    # `from bot import x` yields both bot and bot.x on one line: one report is enough.
    unique: dict[tuple[str, int, str], Violation] = {}
    for v in found:
        unique.setdefault((v.path, v.line, v.rule), v)
    return list(unique.values())


def test_our_imports_point_one_way() -> None:
    assert [str(v) for v in violations(ROOT)] == []


def test_every_package_is_checked() -> None:
    # A renamed or moved package would otherwise pass by having no files to check.
    for top in SHIPPED:
        assert len(list((ROOT / top).rglob("*.py"))) >= 3, top


def write(root: Path, relative: str, *lines: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def test_the_checker_finds_each_kind_of_violation(tmp_path: Path) -> None:
    for package in (*SHIPPED, "generator/sub", "tests"):
        write(tmp_path, f"{package}/__init__.py")
    write(tmp_path, "tests/fake_twitch.py", "class FakeTwitch: ...")
    # Allowed: the bot wires the other three together; everyone uses config; relative imports stay home.
    write(
        tmp_path,
        "bot/concert/conductor.py",
        "import generator.model",
        "from synth import engine",
        "from config import x",
    )
    write(tmp_path, "synth/ok.py", "from config.errors import ConcertbotError", "from . import render")
    write(tmp_path, "generator/sub/near.py", "from .. import model", "from ..vocab import Vocab")
    # Each violation on its own line number, so that the report can be compared exactly.
    write(tmp_path, "generator/model.py", "import os", "", "from bot.chat.message import ChatMessage")
    write(
        tmp_path,
        "generator/sub/lazy.py",
        "def f():",
        "    from synth import engine",
        "    import importlib",
        "    importlib.import_module('bot.web.server')",
    )
    write(
        tmp_path,
        "synth/engine.py",
        "from typing import TYPE_CHECKING",
        "if TYPE_CHECKING:",
        "    import generator",
    )
    write(tmp_path, "synth/render.py", "from . import feed", "from bot import cli")
    write(tmp_path, "config/settings.py", "from synth.engine import Engine")
    write(tmp_path, "bot/app.py", "x = 1", "from fake_twitch import FakeTwitch", "import tests.fake_twitch")
    # Rooms: chat may use the conductor and the store; the web side neither the conductor nor the top.
    write(
        tmp_path,
        "bot/chat/handlers.py",
        "from bot.concert.conductor import Conductor",
        "from bot.state import store",
    )
    write(
        tmp_path,
        "bot/web/server.py",
        "from bot.web.view import NowView",
        "from bot.concert.conductor import Conductor",
        "from bot import app",
    )
    write(
        tmp_path,
        "bot/state/store.py",
        "from bot.state.keys import Keys",
        "from bot.chat.message import ChatMessage",
    )

    found = {(v.path, v.line, v.imported) for v in violations(tmp_path)}
    assert found == {
        ("generator/model.py", 3, "bot.chat.message"),
        ("generator/sub/lazy.py", 2, "synth"),
        ("generator/sub/lazy.py", 4, "bot.web.server"),
        ("synth/engine.py", 3, "generator"),
        ("synth/render.py", 2, "bot"),
        ("config/settings.py", 1, "synth.engine"),
        ("bot/app.py", 2, "fake_twitch"),
        ("bot/app.py", 3, "tests.fake_twitch"),
        ("bot/web/server.py", 2, "bot.concert.conductor"),
        ("bot/web/server.py", 3, "bot.app"),
        ("bot/state/store.py", 2, "bot.chat.message"),
    }
