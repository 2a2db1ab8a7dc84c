"""The `concertbot` command: one entry point, a subcommand per job."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from config import ConcertbotError, Settings, load_settings

if TYPE_CHECKING:  # generator is imported by the commands that need it: it takes seconds to load
    from generator.model import LoadedModel
    from generator.sampling import PieceRequest

app = typer.Typer(
    help="An interactive concert bot: a Transformer composes, FluidSynth plays.", no_args_is_help=True
)
data_app = typer.Typer(help="Build the training data set.", no_args_is_help=True)
app.add_typer(data_app, name="data")
from bot.cli_twitch import twitch_app  # noqa: E402 (its commands live in bot/cli_twitch.py)

app.add_typer(twitch_app, name="twitch")
from bot.titles_cli import data_titles  # noqa: E402 (learns the title model: bot/titles_cli.py)

data_app.command("titles")(data_titles)
console = Console()
err = Console(stderr=True)


def _settings(job: Literal["sample", "train"] | None = "sample") -> Settings:
    """The settings; torch's threads set for `job` too (generator.threads), None for a command without torch."""
    try:
        settings = load_settings()
        if job is not None:
            from generator.threads import use_torch_threads

            use_torch_threads(job, settings.engine.torch_threads)
        return settings
    except ConcertbotError as exc:
        raise fail(exc) from None


def fail(exc: Exception) -> typer.Exit:
    """Say what the operator must fix (a ConcertbotError, or a ValueError about a file name) and exit 2."""
    # One line however long (a path is never folded), and brackets in the message are text, not markup.
    err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(2)


@data_app.command("build")
def data_build(
    midi: Annotated[
        list[Path] | None, typer.Option(help="A folder of <style>/*.mid files; repeatable.")
    ] = None,
    styles: Annotated[str | None, typer.Option(help="Only these corpus styles, comma-separated.")] = None,
    no_corpus: Annotated[bool, typer.Option("--no-corpus", help="Leave out the music21 corpus.")] = False,
    max_per_style: Annotated[int | None, typer.Option(help="Most pieces per style (0 = all).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: one per core).")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the data set.")] = None,
) -> None:
    """Extract and tokenize the music21 corpus and your MIDI folders (cached, resumable)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from generator import data
    from generator.styles import CORPUS_BY_NAME

    settings = _settings(job=None)  # extraction and tokenizing: numpy, no torch
    try:
        sources: list[data.Source] = []
        if not no_corpus:
            wanted = [s.strip() for s in styles.split(",")] if styles else None
            for name in wanted or []:
                if name not in CORPUS_BY_NAME:
                    from config.errors import UnknownNameError

                    raise UnknownNameError("corpus style", name, CORPUS_BY_NAME, owner="the corpus")
            sources += data.corpus_sources(wanted)
        for folder in midi or []:
            sources += data.midi_sources(folder)
        if not sources:
            raise ConcertbotError("nothing to build: no corpus styles and no --midi folder")
        n_workers = workers or settings.data.workers or os.cpu_count() or 1
        cap = settings.data.max_pieces_per_style if max_per_style is None else max_per_style
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
        ) as bar:
            task = bar.add_task("extracting", total=len(sources))
            report = data.extract_all(
                sources,
                settings.paths.data_dir / "cache",
                n_workers,
                cap,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        out_dir = out or settings.paths.data_dir / "dataset"
        data.write_dataset(report, out_dir, settings.data.valid_percent)
    except ConcertbotError as exc:
        raise fail(exc) from None
    rows = data.summarize(data.read_index(out_dir))
    table = Table(title=f"data set in {out_dir} ({report.from_cache} of {len(sources)} sources from cache)")
    # Each header says what it counts: "valid" read as a count of good files, but it is the held-out pieces.
    for col in ("style", "pieces", "held out (pieces)", "notes", "tokens", "hours of music"):
        table.add_column(col, justify="left" if col == "style" else "right")
    for r in rows:
        table.add_row(
            r["style"],
            str(r["pieces"]),
            str(r["held_out"]),
            f"{r['notes']:,}",
            f"{r['tokens']:,}",
            f"{r['hours']:.2f}",
        )
    console.print(table)
    if report.skipped:
        _print_broken_files(report.skipped, {s.rel for s in sources if s.kind == "midi"})
        reasons: dict[str, int] = {}
        for _, _, why in report.skipped:
            key = why.split(":")[0].split(" (")[0]  # "truncated (track 1 of 1 is 9 bytes short)": "truncated"
            reasons[key] = reasons.get(key, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        console.print(
            f"skipped {len(report.skipped)} pieces ({summary}); details in {out_dir / 'skipped.jsonl'}"
        )


def _print_broken_files(skipped: list[tuple[str, str, str]], midi_files: set[str], most: int = 10) -> None:
    """Name the user's own MIDI files that were left out and why: those are theirs to fix or remove."""
    mine = [(source, why) for source, _, why in skipped if source in midi_files]
    for source, why in mine[:most]:
        console.print(f"skipped {escape(source)}: {escape(why)}", soft_wrap=True)
    if len(mine) > most:
        console.print(f"... and {len(mine) - most} more of your MIDI files")


@data_app.command("forms")
def data_forms(
    model: Annotated[
        Path | None, typer.Option(help="The model whose card learns them (default: ours).")
    ] = None,
    dataset: Annotated[Path | None, typer.Option(help="The data set to learn from.")] = None,
) -> None:
    """Learn each style's forms (metre, sections, phrases, cadences) and which spare instruments stand for a
    doubled one (a quartet's second violin) from the data set into a model's card.

    Training does this on its own; this refreshes a model trained before they were learnt, without retraining.
    """
    import json

    from generator.data import read_index
    from generator.model import DEFAULT_MODEL_DIR, load_model
    from generator.plan import learn_forms
    from generator.recipes import summarize_styles

    settings = _settings()
    directory = model or DEFAULT_MODEL_DIR
    source = dataset or settings.paths.data_dir / "dataset"
    try:
        loaded = load_model(directory)
        forms = learn_forms(source, loaded.vocab)
        summaries = summarize_styles(read_index(source))
    except ConcertbotError as exc:
        raise fail(exc) from None
    card_path = Path(directory) / "card.json"
    card = json.loads(card_path.read_text())
    for style, form in forms.items():
        saved = card.setdefault("style_defaults", {}).setdefault(style, {})
        saved["form"] = form
        saved["sounds"] = summaries.get(style, {}).get("sounds", {})
    card["forms_from"] = str(source)
    card_path.write_text(json.dumps(card, indent=1))
    table = Table(title=f"forms learnt into {card_path}")
    for col in ("style", "bar (beats)", "commonest shape", "phrase bars", "cadence roots"):
        table.add_column(col)
    for style, form in sorted(forms.items()):
        shapes = form.get("forms") or [{"sections": []}]
        shape = " ".join(f"{b}{'x2' if r else ''}" for b, r in shapes[0]["sections"]) or "-"
        phrases = max(form.get("phrase_bars", {"-": 0}).items(), key=lambda kv: kv[1])[0]
        cadences = ", ".join(k for k, _ in sorted(form.get("cadences", {}).items(), key=lambda kv: -kv[1])[:3])
        table.add_row(style, f"{form.get('bar', 32) / 8:g}", shape, phrases, cadences)
    console.print(table)


@app.command("train")
def train_cmd(
    dataset: Annotated[Path | None, typer.Option(help="A data set made by `data build`.")] = None,
    run_dir: Annotated[Path, typer.Option(help="Where checkpoints, metrics.csv and curves.png go.")] = Path(
        "runs/default"
    ),
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --run-dir.")] = False,
    max_steps: Annotated[int | None, typer.Option(help="Training steps (default from config).")] = None,
    export: Annotated[Path | None, typer.Option(help="Copy the best model here at the end.")] = None,
    init: Annotated[
        Path | None,
        typer.Option(help="Fine-tune: start from this model's weights (same styles and [train] shape)."),
    ] = None,
) -> None:
    """Train the composer; run through `accelerate launch` for several GPUs."""
    import shutil

    from generator.train import train

    settings = _settings("train")
    cfg = settings.train if max_steps is None else settings.train.model_copy(update={"max_steps": max_steps})
    try:
        result = train(
            dataset or settings.paths.data_dir / "dataset",
            run_dir,
            cfg,
            resume=resume,
            log=console.print,
            init=init,
        )
    except ConcertbotError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:  # train() has saved a checkpoint and said how to resume from it
        raise typer.Exit(130) from None
    if not result.main_process:
        return
    console.print(
        f"done: {result.steps} steps in {result.seconds / 60:.1f} min, best held-out loss "
        f"{result.best_valid_loss:.3f}; best model in {run_dir / 'best'}"
    )
    if export:
        if export.exists():
            shutil.rmtree(export)
        shutil.copytree(run_dir / "best", export)
        console.print(f"exported to {export}")


def _load_model(settings: Settings, model: Path | None) -> LoadedModel:
    from generator.model import load_model

    return load_model(model or settings.paths.model_dir)


def _request(
    settings: Settings,
    loaded: LoadedModel,
    style: str,
    instruments: list[str] | None,
    tempo: float | None,
    seconds: float | None,
    seed: int | None,
    temperature: float | None = None,
    top_p: float | None = None,
    key: str | None = None,
) -> PieceRequest:
    """A PieceRequest from command-line values, the settings filling in what was left out."""
    from generator.recipes import make_request

    s = settings.sampling
    return make_request(
        loaded,
        style,
        instruments,
        tempo if tempo is not None else s.tempo,
        seconds if seconds is not None else s.seconds,
        seed,
        temperature if temperature is not None else s.temperature,
        top_p if top_p is not None else s.top_p,
        key,
        s.critic,
    )


@app.command("styles")
def styles_cmd(model: Annotated[Path | None, typer.Option(help="Model directory.")] = None) -> None:
    """List the styles the model can play."""
    from generator.recipes import make_request
    from generator.styles import CORPUS_BY_NAME

    settings = _settings()
    try:
        loaded = _load_model(settings, model)
    except ConcertbotError as exc:
        raise fail(exc) from None
    table = Table(title=f"styles of {loaded.version}")
    for col in ("style", "instruments", "tempo", "music"):
        table.add_column(col)
    for style in loaded.vocab.styles:
        defaults = make_request(loaded, style, seed=0)  # its parts as heard: a quartet's second violin a violin
        about = CORPUS_BY_NAME[style].description if style in CORPUS_BY_NAME else "from your MIDI folder"
        table.add_row(style, " ".join(defaults.heard()), f"{defaults.tempo:g}", about)
    console.print(table)


@app.command("instruments")
def instruments_cmd() -> None:
    """List the instruments a piece can ask for."""
    from generator.instruments import INSTRUMENTS

    table = Table(title="instruments")
    for col in ("instrument", "GM program", "range", "also"):
        table.add_column(col)
    for inst in INSTRUMENTS:
        program = "drum kit" if inst.program < 0 else str(inst.program)
        table.add_row(inst.name, program, f"{inst.low}-{inst.high}", ", ".join(inst.aliases))
    console.print(table)


@app.command("compose")
def compose_cmd(
    style: Annotated[str, typer.Argument(help="A style from `concertbot styles`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file: .mid or .wav.")],
    instrument: Annotated[list[str] | None, typer.Option("--instrument", "-i", help="Repeatable.")] = None,
    tempo: Annotated[float | None, typer.Option(help="Quarter notes per minute.")] = None,
    seconds: Annotated[float | None, typer.Option(help="Length of the piece.")] = None,
    seed: Annotated[int | None, typer.Option(help="Same seed, same piece. Random if left out.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Higher is wilder.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass.")] = None,
    key: Annotated[
        str | None, typer.Option(help="Key, e.g. D or F#m (default: one the style uses, picked by the seed).")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the shipped model).")] = None,
) -> None:
    """Compose one piece and write it as MIDI, or as WAV rendered through FluidSynth."""
    import time

    from generator.decode import midi_bytes, timed_messages, to_midi
    from generator.performance import planned
    from generator.sampling import Composer

    settings = _settings()
    suffix = out.suffix.lower()
    if suffix not in (".mid", ".midi", ".wav"):
        raise fail(ConcertbotError(f"--out {str(out)!r}: the file name must end in .mid or .wav"))
    from synth.loudness import leveler_for
    from synth.render import FluidSynthRenderer, write_wav

    renderer = None
    try:
        loaded = _load_model(settings, model)
        request = _request(settings, loaded, style, instrument, tempo, seconds, seed, temperature, top_p, key)
        if suffix == ".wav":  # a missing or broken SoundFont is said before the wait for the piece, not after
            renderer = FluidSynthRenderer.from_settings(settings.synth)
    except ConcertbotError as exc:
        raise fail(exc) from None
    if seed is None:
        err.print(f"seed {request.seed} (use --seed {request.seed} to make this piece again)")
    started = time.perf_counter()
    try:
        piece = Composer(loaded).compose(request)
    except BaseException:
        if renderer is not None:
            renderer.close()
        raise
    took = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    if renderer is not None:
        with renderer:
            err.print(f"soundfont: {renderer.soundfont.path} ({renderer.soundfont.origin})")
            played = planned(piece.plan, request.tempo, request.programs())
            heard = request.sound_programs()
            messages = list(timed_messages(piece.notes, request.tempo, request.programs(), played, heard))
            # A piece may end on a rest: the file lasts the whole requested length, then the reverb's tail.
            last = messages[-1][0] if messages else 0.0
            tail = max(request.seconds, last) - last + 1.5
            # Levelled as the stream is, so the file sounds as loud as the piece would live.
            leveler = leveler_for(settings.loudness, settings.synth.sample_rate)
            audio = renderer.render(messages, tail_seconds=tail, leveler=leveler)
        write_wav(out, audio, settings.synth.sample_rate)
    else:
        played = planned(piece.plan, request.tempo, request.programs())
        out.write_bytes(midi_bytes(to_midi(piece.notes, request.tempo, played, request.sound_programs())))
    err.print(
        f"{request.style} for {', '.join(request.heard())} at {request.tempo:g} BPM, seed {request.seed}: "
        f"{len(piece.notes)} notes, {len(piece.tokens)} tokens in {took:.1f} s "
        f"({request.seconds / took:.1f}x real time) -> {out}"
    )


@app.command("play")
def play_cmd(
    style: Annotated[str, typer.Argument(help="A style from `concertbot styles`.")],
    instrument: Annotated[list[str] | None, typer.Option("--instrument", "-i", help="Repeatable.")] = None,
    tempo: Annotated[float | None, typer.Option(help="Quarter notes per minute.")] = None,
    seconds: Annotated[float | None, typer.Option(help="Length of the piece.")] = None,
    seed: Annotated[int | None, typer.Option(help="Same seed, same piece. Random if left out.")] = None,
    record: Annotated[Path | None, typer.Option(help="Also record to this .wav or .flac file.")] = None,
    device: Annotated[
        str | None, typer.Option(help="Sound device: auto, off, or a name or number (default from config).")
    ] = None,
    push: Annotated[str | None, typer.Option(help="Also push to this rtmp:// or icecast:// URL.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the shipped model).")] = None,
) -> None:
    """Play one piece live, streamed as it is composed, to the sound card and the other outputs."""
    import json
    import logging
    import time
    from dataclasses import asdict

    from bot.concert.player import LiveSession, build_sinks

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = _settings()
    try:
        loaded = _load_model(settings, model)
        request = _request(settings, loaded, style, instrument, tempo, seconds, seed)
        sinks = build_sinks(settings, record, device, push, warn=lambda m: err.print(f"[yellow]{m}[/yellow]"))
        session = LiveSession(settings, loaded, sinks)
    except (ConcertbotError, ValueError) as exc:
        raise fail(exc) from None
    if not as_json:
        err.print(f"soundfont: {session.renderer.soundfont.path} ({session.renderer.soundfont.origin})")
        err.print(
            f"playing {request.style} for {', '.join(request.heard())} at {request.tempo:g} BPM, "
            f"seed {request.seed}, to {', '.join(x.name for x in sinks) or 'no output'}"
        )
    with session:
        piece = session.request("play", request, requested_at=time.monotonic())
        try:
            session.wait_for(piece.id, ("end", "skip", "error"))
            session.engine.wait_idle()
        except KeyboardInterrupt:
            session.engine.skip()
            session.wait_for(piece.id, ("end", "skip", "error"), timeout=2)
        summary = session.summary(piece)
    if as_json:
        keys = ("time_to_first_audio_ms", "underruns", "generation_rtf", "seconds_played")
        data = asdict(summary)
        print(json.dumps({k: data[k] for k in keys} | {k: v for k, v in data.items() if k not in keys}))
    else:
        ttfa = "-" if summary.time_to_first_audio_ms is None else f"{summary.time_to_first_audio_ms:.0f} ms"
        console.print(
            f"first audio after {ttfa}; {summary.underruns} underruns ({summary.underrun_seconds:.2f} s); "
            f"generation {summary.generation_rtf:.1f}x real time; {summary.seconds_played:.1f} s played"
        )


@app.command("run")
def run_cmd(
    seconds: Annotated[
        float | None, typer.Option(help="Stop after this long (default: run until Ctrl-C).")
    ] = None,
    record: Annotated[
        Path | None,
        typer.Option(
            help="Record the concert (the first channel's, with [[channels]]) to this .wav or .flac file."
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Sound device (the first channel's): auto, off, or a name or number."),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Use local chat even if Twitch is configured.")
    ] = False,
) -> None:
    """Run the concert: Twitch chat when TWITCH_* is set, else local chat typed in this terminal; with
    [[channels]] in the config, one concert per channel, each on its own web port."""
    import asyncio
    import logging
    import signal

    from bot.app import run_concert, stdin_if_interactive
    from bot.chat.twitch_auth import config_chats, run_settings
    from bot.concert.player import build_sinks
    from config.settings import channel_plans

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # every overlay poll is not news
    settings = _settings()
    try:
        chats = [login for _, login in config_chats(settings) or []]  # with them, TWITCH_CHANNEL is not needed
        twitch = None if local else run_settings(settings.paths.data_dir, chats)
        plans = channel_plans(settings, "concertbot", twitch.channel if twitch else None)
        # The command line's outputs are the first channel's: the one this terminal's chat speaks to.
        first = plans[0].settings
        sinks = build_sinks(first, record, device, warn=lambda m: err.print(f"[yellow]{m}[/yellow]"))
    except (ConcertbotError, ValueError) as exc:
        raise fail(exc) from None
    if twitch is None:
        err.print(
            "local chat: type commands such as [bold]!compose bach violin cello[/bold] "
            "(or 'name: !vote' to speak as a viewer); Ctrl-C stops"
        )
    for plan in plans:
        web = plan.settings.concert
        if web.http_port and (twitch is None or plan.twitch_channel is None):
            # The same box in a browser, where the replies stay on screen; a channel without Twitch has no other
            # chat.
            host = "127.0.0.1" if web.http_host in ("", "0.0.0.0", "::") else web.http_host
            host = f"[{host}]" if ":" in host else host
            where = "" if plan.name == "default" else f" of channel {plan.name}"
            err.print(f"local chat{where} in a browser: http://{host}:{web.http_port}/chat", soft_wrap=True)
    # A service manager stops the bot with SIGTERM: close everything as after Ctrl-C, the embedded Redis too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # And Ctrl-C (SIGINT) always stops it: a program started in the background by a shell (`concertbot run &`,
    # a script, the soak bench) inherits SIGINT ignored, and asyncio then never hears it: the soak's "hang".
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        asyncio.run(
            run_concert(settings, twitch, local_input=stdin_if_interactive(), sinks=sinks, seconds=seconds)
        )
    except KeyboardInterrupt:
        err.print("stopped")
    except ConcertbotError as exc:
        raise fail(exc) from None


@app.command("eval")
def eval_cmd(
    dataset: Annotated[Path | None, typer.Option(help="The data set the model was trained on.")] = None,
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the shipped model).")] = None,
    pieces: Annotated[int, typer.Option(help="Pieces generated per style.")] = 10,
    seconds: Annotated[float, typer.Option(help="Length of each generated piece.")] = 30.0,
    seed: Annotated[int, typer.Option(help="First seed; piece i uses seed + i.")] = 0,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature (default: the settings', as concerts play).")
    ] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling share (default: settings').")] = None,
    style: Annotated[
        list[str] | None, typer.Option(help="Only this style (repeatable); the classifier still learns all.")
    ] = None,
    voice_leading: Annotated[
        bool, typer.Option(help="Give each voice only its style's leaps, as concerts do (off: to compare).")
    ] = True,
    plan: Annotated[
        bool, typer.Option(help="Follow a plan of phrases, returns and cadences, as concerts do.")
    ] = True,
    markdown: Annotated[Path | None, typer.Option(help="Also write the table as Markdown here.")] = None,
    critic: Annotated[
        int | None,
        typer.Option(min=1, help="Candidates per bar, the critic keeping the best (default: settings')."),
    ] = None,
) -> None:
    """Measure the model per style against real held-out pieces: style, then form and texture.

    Two tables: how close each style's pieces come to the real ones, then how they end, repeat and sound
    (generated, and in brackets real). With --markdown, the second goes next to the first as NAME.form.md.
    """
    from dataclasses import asdict

    from generator.evaluate import FORM_FIELDS, evaluate
    from generator.recipes import check_sampling

    settings = _settings()
    temperature = settings.sampling.temperature if temperature is None else temperature
    top_p = settings.sampling.top_p if top_p is None else top_p
    critic = settings.sampling.critic if critic is None else critic
    try:
        check_sampling(temperature, top_p)
        loaded = _load_model(settings, model)
        reports = evaluate(
            loaded,
            dataset or settings.paths.data_dir / "dataset",
            pieces,
            seconds,
            seed,
            progress=lambda name: err.print(f"evaluated {name}"),
            temperature=temperature,
            top_p=top_p,
            only=style or (),
            voice_leading=voice_leading,
            plan=plan,
            critic=critic,
        )
    except ConcertbotError as exc:
        raise fail(exc) from None

    def pair(key: str, fmt: str) -> Callable[[dict[str, Any]], str]:
        return lambda v: f"{v[key]:{fmt}} ({v[key + '_real']:{fmt}})"

    columns = [
        ("held-out pieces", lambda v: str(v["real_pieces"])),
        ("held-out loss", lambda v: "-" if v["valid_loss"] is None else f"{v['valid_loss']:.3f}"),
        ("pitch-class JS (real)", pair("pitch_class_js", ".3f")),
        ("interval JS (real)", pair("interval_js", ".3f")),
        ("note-length JS (real)", pair("length_js", ".3f")),
        ("notes/s (real)", pair("notes_per_second", ".1f")),
        ("degenerate", lambda v: f"{v['degenerate_share']:.0%}"),
        ("on instruments", lambda v: f"{v['on_instruments_share']:.0%}"),
        ("recognised (real)", pair("recognised", ".0%")),
        ("else taken for", lambda v: v["mistaken_for"]),
        ("real openings recognised", lambda v: f"{v['recognised_real_openings']:.0%}"),
        ("key-free pitch-class JS (real)", pair("key_free_pitch_class_js", ".3f")),
        ("real re-orchestrated recognised", lambda v: f"{v['recognised_real_reorchestrated']:.0%}"),
    ]
    values = [asdict(r) for r in reports]
    form_keys = {*FORM_FIELDS, *(f"{k}_real" for k in FORM_FIELDS)}
    means = {
        k: sum(v[k] for v in values) / max(1, len(values))
        for k in values[0]
        if k not in ("style", "valid_loss", "mistaken_for", *form_keys)
    }
    means["mistaken_for"] = ""  # a guess per style; there is none for all of them together
    means["valid_loss"] = loaded.card.get("valid_loss")
    means["real_pieces"] = sum(v["real_pieces"] for v in values)
    means |= _form_means(values, form_keys)
    title = (
        f"{loaded.version}: {pieces} pieces of {seconds:g} s per style, temperature {temperature:g}, "
        f"top-p {top_p:g}, voice leading {'on' if voice_leading else 'off'}, plan {'on' if plan else 'off'}"
        f", critic {critic}"
    )
    header, rows = _eval_rows(columns, values, means)
    _print_table(title, header, rows)
    form_header, form_rows = _eval_rows(_FORM_COLUMNS, values, means)
    _print_table(
        f"{title}: form and texture, real pieces' openings (endings: whole pieces)", form_header, form_rows
    )
    if markdown:
        markdown.write_text(_markdown(header, rows))
        markdown.with_suffix(".form.md").write_text(_markdown(form_header, form_rows))


def _form_figure(key: str, fmt: str) -> Callable[[dict[str, Any]], str]:
    """'generated (real)' for one form figure, with '-' for a figure that had nothing to measure (nan)."""

    def shown(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:{fmt}}"

    return lambda v: f"{shown(v[key])} ({shown(v[key + '_real'])})"


# The form and texture figures of generator.form_metrics, generated (real), in the second eval table.
_FORM_COLUMNS = [
    ("ends on a downbeat (real)", _form_figure("ends_on_downbeat", ".0%")),
    ("ends long (real)", _form_figure("ends_long", ".0%")),
    ("ends on the tonic (real)", _form_figure("ends_on_tonic", ".0%")),
    ("chordal onsets (real)", _form_figure("chordal_onset_share", ".0%")),
    ("leaps over 4 semitones (real)", _form_figure("leap_share", ".0%")),
    ("2 bars recur (real)", _form_figure("recurring_share", ".0%")),
    ("2 bars recur, real as written", lambda v: f"{v['recurring_share_written_real']:.0%}"),
    ("longest recurring bars (real)", _form_figure("longest_recurring_bars", ".1f")),
    ("key kept (real)", _form_figure("key_kept", ".0%")),
    ("smallest instrument share (real)", _form_figure("smallest_instrument_share", ".0%")),
    ("most notes at once (real)", _form_figure("most_simultaneous", ".0f")),
    ("self-overlap (real)", _form_figure("self_overlap_share", ".0%")),
    ("outer parts apart, semitones (real)", _form_figure("outer_span", ".0f")),
    ("chord roots by 4ths/5ths (real)", _form_figure("fifth_moves", ".0%")),
    ("chords in the key (real)", _form_figure("diatonic_share", ".0%")),
    ("chord changes a bar (real)", _form_figure("chord_changes_per_bar", ".1f")),
    ("strong beats clashing (real)", _form_figure("strong_beat_clashes", ".0%")),
]


def _form_means(values: list[dict[str, Any]], keys: set[str]) -> dict[str, Any]:
    """The 'all' row's form figures: the most notes at once of any style, else the mean over the styles.

    A style with nothing to measure (nan) is left out of the mean, as a piece is within a style.
    """
    out: dict[str, Any] = {}
    for key in keys:
        figures = [v[key] for v in values if not math.isnan(v[key])]
        if key.startswith("most_simultaneous"):
            out[key] = max(figures, default=0)
        else:
            out[key] = sum(figures) / len(figures) if figures else float("nan")
    return out


def _eval_rows(
    columns: Sequence[tuple[str, Callable[[dict[str, Any]], str]]],
    values: list[dict[str, Any]],
    means: dict[str, Any],
) -> tuple[list[str], list[list[str]]]:
    header = ["style"] + [name for name, _ in columns]
    rows = [[v["style"]] + [fmt(v) for _, fmt in columns] for v in values]
    rows.append(["all"] + [fmt(means) for _, fmt in columns])
    return header, rows


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for col in header:
        table.add_column(col, justify="left" if col == "style" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@app.command("worker")
def worker_cmd(
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the shipped model).")] = None,
    device: Annotated[str, typer.Option(help="Torch device to sample on: cpu, cuda, cuda:1 ...")] = "cpu",
    name: Annotated[str | None, typer.Option(help="Consumer name (default: host-pid-random).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Pieces sampled together (1: one at a time).")] = 1,
    ahead: Annotated[
        float | None, typer.Option(min=0.0, help="With --batch: hold a piece this many seconds ahead.")
    ] = None,
) -> None:
    """Sample pieces for concerts with generation.remote = true, taken from the Redis at REDIS_URL."""
    import logging
    import signal

    import redis

    from bot.concert.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()
    url = settings.concert.redis_url
    if url is None:
        raise fail(
            ConcertbotError("`concertbot worker` needs REDIS_URL: the Redis the concerts send pieces to")
        )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop, as Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # heard even when started in the background
    try:
        loaded = _load_model(settings, model)
        g = settings.generation
        run_worker(
            url.get_secret_value(), loaded, g.namespace, g.claim_idle_seconds, device, name, batch, ahead
        )
    except KeyboardInterrupt:
        err.print("stopped")
    except redis.ConnectionError as exc:
        raise fail(ConcertbotError(f"cannot reach the Redis at REDIS_URL: {exc}")) from None
    except ConcertbotError as exc:
        raise fail(exc) from None


from bot.doctor_cli import doctor_cmd, soundfonts_cmd  # noqa: E402 (registered here, written there)

app.command("doctor")(doctor_cmd)
app.command("soundfonts")(soundfonts_cmd)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
