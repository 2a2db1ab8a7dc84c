"""Live audio through an ffmpeg child process: pushed to RTMP (Twitch), Icecast, or any output ffmpeg writes.

The engine's samples go to ffmpeg's stdin as raw s16le PCM. The pipe is non-blocking, so a stalled ffmpeg (a
network that stopped taking data) makes `write` fail after a bounded wait instead of hanging the sink thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from config.errors import ConcertbotError, ConfigError

log = logging.getLogger(__name__)

PIPE_BYTES = 1 << 20  # 1 MiB, Linux's default ceiling: about 6 s of 44.1 kHz stereo rides out a network hiccup
PIPE_ATOM = select.PIPE_BUF  # writes up to this size into a pipe are all-or-nothing (4096 on Linux)
STDERR_TAIL = 1500  # characters of ffmpeg's own words quoted in an error
RTMP_SCHEMES = ("rtmp", "rtmps", "rtmpt", "rtmpte", "rtmpts")
REDACTED = "***"


class FfmpegError(ConcertbotError):
    """ffmpeg is missing, exited, or stopped taking audio; the message quotes its stderr, secrets removed."""


def find_ffmpeg(name: str = "ffmpeg") -> str:
    """The path of the ffmpeg executable; `ConfigError` saying how to install it if there is none."""
    path = shutil.which(name)
    if path is None:
        raise ConfigError(
            f"{name!r} is not on PATH; the stream outputs need it (Debian/Ubuntu: apt-get install ffmpeg)"
        )
    return path


def pcm_bytes(block: np.ndarray) -> bytes:
    """The s16le bytes of one int16 stereo block of shape [n, 2]; `ValueError` for anything else."""
    if block.dtype != np.int16 or block.ndim != 2 or block.shape[1] != 2:
        raise ValueError(f"expected int16 audio of shape [n, 2], got {block.dtype} {block.shape}")
    return block.astype("<i2", copy=False).tobytes()


def secrets_in(url: str) -> list[str]:
    """The parts of an output URL that must never reach a log: password, stream key, query; longest first."""
    parts = urlsplit(url)
    if len(parts.scheme) < 2:  # a plain file name, or a Windows drive letter
        return []
    found = [parts.password or "", parts.query]
    if parts.scheme in RTMP_SCHEMES:
        # rtmp://host/app/key: everything after the application name is the stream key (or names it).
        _, _, key = parts.path.lstrip("/").partition("/")
        found += [key, *key.split("/")]
    return sorted({s for s in found if s}, key=len, reverse=True)


def hide_secrets(url: str) -> tuple[str, dict[str, str]]:
    """`url` without its stream key or password, and the ffmpeg protocol options that carry them instead.

    `rtmp://host/app/<key>` becomes `rtmp://host/app` and `rtmp_playpath=<key>`; `icecast://source:<pw>@host/m`
    becomes `icecast://source@host/m` and `password=<pw>`. Anything else comes back as it is.
    """
    parts = urlsplit(url)
    if parts.scheme in RTMP_SCHEMES:
        app, _, key = parts.path.lstrip("/").partition("/")
        if key:
            # ffmpeg takes whatever follows the application name, query and all, as the stream name.
            playpath = key + (f"?{parts.query}" if parts.query else "")
            return urlunsplit((parts.scheme, parts.netloc, f"/{app}", "", "")), {"rtmp_playpath": playpath}
    if parts.scheme == "icecast" and parts.password:
        netloc = f"{parts.username or 'source'}@{parts.netloc.rpartition('@')[2]}"
        return urlunsplit(parts._replace(netloc=netloc)), {"password": parts.password}
    return url, {}


def options_pipe(options: dict[str, str]) -> int:
    """A pipe holding `options` as an ffmpeg preset file (`key=value` lines); the end that ffmpeg reads.

    `-fpre /dev/fd/N` makes ffmpeg read its output's protocol options from there, so that a stream key or a
    password is never on its command line, where any local user can read it (`ps -eo args`).
    """
    # No value holds a line break: urlsplit drops them from URLs.
    text = "".join(f"{key}={value}\n" for key, value in options.items())
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, text.encode())  # a few bytes: far below a pipe's capacity, so this never waits
    finally:
        os.close(write_end)
    return read_end


def redact(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret replaced by `***`."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def redact_url(url: str) -> str:
    """A URL fit for logs: `rtmp://live.twitch.tv/app/***`, `icecast://source:***@host:8000/live.mp3`."""
    return redact(url, secrets_in(url))


class FfmpegProcess:
    """One ffmpeg child reading s16le stereo PCM on stdin; its stderr goes to a temporary file for errors.

    Writes never block: `feed` waits a bounded time for room in the pipe, `offer` takes only what fits now.
    """

    def __init__(
        self,
        args: Sequence[str],
        label: str,
        secrets: Sequence[str] = (),
        stdout: bool = False,
        pass_fds: Sequence[int] = (),
    ) -> None:
        """Start `args` (ffmpeg first); `label` names it in errors; `stdout` keeps its stdout as a pipe.

        `pass_fds` are handed to ffmpeg under the same numbers (see `options_pipe`).
        """
        self.label = label
        self._secrets = list(secrets)
        # A file, not a pipe: nobody has to drain it, and its tail is still there after ffmpeg exits.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (it lives as long as the process; `close` frees it)
        try:
            self.proc = subprocess.Popen(
                list(args),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                stderr=self._stderr,
                # Ctrl-C in a terminal must not kill ffmpeg mid-stream: closing stdin ends it cleanly.
                start_new_session=True,
                pass_fds=tuple(pass_fds),
            )
        except OSError as exc:
            self._stderr.close()
            raise FfmpegError(f"could not start ffmpeg for {label}: {exc.strerror}") from None
        assert self.proc.stdin is not None
        self._stdin = self.proc.stdin
        self._fd = self._stdin.fileno()
        # Only Linux can grow a pipe; elsewhere the default size still works, with less slack.
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(self._fd, False)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLOUT)
        self.stalled = False

    @property
    def stdout_fd(self) -> int:
        """The file descriptor of ffmpeg's stdout (only when started with `stdout=True`)."""
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def feed(self, data: bytes, timeout: float) -> None:
        """Write all of `data`, waiting at most `timeout` s in all for ffmpeg to make room.

        Raises:
            FfmpegError: ffmpeg exited, or took nothing for `timeout` s; the message quotes its stderr.
        """
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            try:
                view = view[os.write(self._fd, view) :]
                continue
            except BlockingIOError:
                pass
            except OSError:  # a broken pipe: ffmpeg has exited
                raise self.failure() from None
            left = deadline - time.monotonic()
            if left <= 0:
                self.stalled = True
                raise self.failure(f"took no audio for {timeout:g} s")
            self._poll.poll(left * 1000)

    def offer(self, data: bytes) -> int:
        """Write what fits in the pipe now, in whole frames, never waiting; the number of bytes taken.

        Raises:
            FfmpegError: ffmpeg exited.
        """
        taken = 0
        # Slices no longer than PIPE_BUF go in whole or not at all, so a short write never splits a frame.
        for start in range(0, len(data), PIPE_ATOM):
            try:
                taken += os.write(self._fd, data[start : start + PIPE_ATOM])
            except BlockingIOError:
                break
            except OSError:
                raise self.failure() from None
        return taken

    def failure(self, what: str = "") -> FfmpegError:
        """An error for this process that quotes the tail of its stderr."""
        if not what:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)  # its last words reach the file as it exits
            code = self.proc.returncode
            what = "stopped" if code is None else f"exited with code {code}"
        tail = self.stderr_tail()
        return FfmpegError(f"ffmpeg for {self.label} {what}" + (f": {tail}" if tail else " and said nothing"))

    def stderr_tail(self) -> str:
        """The last lines ffmpeg wrote to stderr, on one line, secrets removed."""
        try:
            size = os.fstat(self._stderr.fileno()).st_size
            start = max(0, size - 4 * STDERR_TAIL)
            self._stderr.seek(start)
            text = self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        lines = text.splitlines()[1 if start else 0 :]  # a cut first line could hold half a secret
        lines = [line.strip() for line in lines if line.strip()]
        return redact(" | ".join(lines), self._secrets)[-STDERR_TAIL:]

    def end_input(self) -> None:
        """Close stdin: ffmpeg then finishes the stream (trailer, last packets) and exits on its own."""
        with contextlib.suppress(OSError):
            self._stdin.close()

    def close(self, timeout: float = 5.0) -> None:
        """End the input, wait for ffmpeg to exit (kill it after `timeout` s) and free everything."""
        self.end_input()
        try:
            # One that stopped reading will not finish the stream either; do not wait the full time for it.
            self.proc.wait(timeout=0.5 if self.stalled else timeout)
        except subprocess.TimeoutExpired:  # its message quotes the command line, stream key and all
            log.warning("ffmpeg for %s did not finish within %g s; killing it", self.label, timeout)
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def output_args(
    url: str,
    *,
    audio_bitrate: str = "160k",
    video: bool | None = None,
    video_size: str = "640x360",
    video_fps: int = 5,
    video_color: str = "black",
    format: str | None = None,
) -> list[str]:
    """ffmpeg's arguments after the PCM input: the encoders and muxer that suit `url` (see `FfmpegPush`)."""
    scheme = urlsplit(url).scheme if len(urlsplit(url).scheme) > 1 else ""
    rtmp = scheme in RTMP_SCHEMES
    args: list[str] = []
    if video if video is not None else rtmp:
        # The colour is a filter source, not a second input: ffmpeg then makes a frame only when the audio
        # has reached its time, so the picture follows the live clock (a second input would race ahead).
        # `stillimage` with `ultrafast` encodes an unchanging frame for next to nothing; a keyframe every
        # 2 s is what Twitch asks for.
        gop = str(2 * video_fps)
        args += ["-filter_complex", f"color=c={video_color}:s={video_size}:r={video_fps}[v]"]
        args += ["-map", "0:a", "-map", "[v]", "-shortest"]
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "stillimage", "-pix_fmt", "yuv420p"]
        args += ["-g", gop, "-keyint_min", gop, "-sc_threshold", "0"]
    if rtmp:
        args += ["-c:a", "aac", "-b:a", audio_bitrate]
        args += ["-f", format or "flv", "-flvflags", "no_duration_filesize"]
    elif scheme == "icecast":
        mount = urlsplit(url).path.lower()
        if mount.endswith((".ogg", ".opus", ".oga")):
            args += ["-c:a", "libopus", "-b:a", audio_bitrate, "-f", format or "ogg"]
            args += ["-content_type", "audio/ogg"]
        else:
            args += ["-c:a", "libmp3lame", "-b:a", audio_bitrate, "-f", format or "mp3"]
            args += ["-content_type", "audio/mpeg"]
    else:
        if format:
            args += ["-f", format]
        args += ["-b:a", audio_bitrate]
    if scheme and scheme != "file":
        # A server that stops reading makes ffmpeg give up (in microseconds) instead of waiting forever.
        args += ["-rw_timeout", "10000000"]
    return [*args, url]


class FfmpegPush:
    """An `AudioSink` that sends the live audio through ffmpeg to a streaming server or a file.

    The output is chosen by the URL:

    - `rtmp://` / `rtmps://` (Twitch ingest, YouTube, a local nginx-rtmp): FLV with AAC audio and a cheap still
      picture, since Twitch wants a video track; `rtmps://live.twitch.tv/app/<stream key>`.
    - `icecast://source:<password>@host:port/<mount>`: audio only, Ogg/Opus when the mount ends in `.ogg` or
      `.opus`, MP3 otherwise.
    - anything else ffmpeg can write (`out.mp3`, `srt://...`): format from the name or `format`.

    `name` is the URL with the stream key, password and query replaced by `***`; ffmpeg's messages quoted in
    errors are cleaned the same way. The stream key and the Icecast password are not on ffmpeg's command line
    either (which any local user can list): ffmpeg reads them from a pipe, as protocol options.
    """

    def __init__(
        self,
        url: str,
        *,
        audio_bitrate: str = "160k",
        video: bool | None = None,
        video_size: str = "640x360",
        video_fps: int = 5,
        video_color: str = "black",
        format: str | None = None,
        stall_timeout: float = 5.0,
        ffmpeg: str | None = None,
    ) -> None:
        """Check that ffmpeg exists and prepare the command; nothing starts before `open`.

        Args:
            url: where to send the stream (see the class docs); it may hold a stream key or password.
            audio_bitrate: the audio encoder's bit rate, in ffmpeg's notation ("160k").
            video: add the still picture; None means only for RTMP.
            video_size: the picture's size, "WIDTHxHEIGHT".
            video_fps: its frame rate; a keyframe comes every 2 s whatever the rate.
            video_color: its colour, any name or 0xRRGGBB that ffmpeg knows.
            format: ffmpeg's output format (`-f`), when the URL does not imply one.
            stall_timeout: how long `write` waits for ffmpeg to take audio before it fails.
            ffmpeg: the ffmpeg executable; found on PATH by default.

        Raises:
            ConfigError: no ffmpeg on PATH.
        """
        self._url = url
        self._secrets = secrets_in(url)
        self.name = redact(url, self._secrets)
        self.stall_timeout = stall_timeout
        self._ffmpeg = ffmpeg or find_ffmpeg()
        self._output = output_args(
            url,
            audio_bitrate=audio_bitrate,
            video=video,
            video_size=video_size,
            video_fps=video_fps,
            video_color=video_color,
            format=format,
        )
        self._public_url, self._protocol_options = hide_secrets(url)
        self._process: FfmpegProcess | None = None
        self._opens = 0

    def open(self, sample_rate: int) -> None:
        """Start ffmpeg; a refused connection shows up as an `FfmpegError` from the next `write`s."""
        self.close()
        args = [self._ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error"]
        args += ["-f", "s16le", "-ar", str(sample_rate), "-ac", "2", "-i", "pipe:0", *self._output[:-1]]
        fds: list[int] = []
        if self._protocol_options:
            fds.append(options_pipe(self._protocol_options))
            args += ["-fpre", f"/dev/fd/{fds[0]}"]
        args.append(self._public_url)
        try:
            self._process = FfmpegProcess(args, self.name, self._secrets, pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
        self._opens += 1
        # Said once: a push that keeps failing is reopened with backoff, and the runner reports that.
        log.log(logging.INFO if self._opens == 1 else logging.DEBUG, "pushing audio to %s", self.name)

    def write(self, block: np.ndarray) -> None:
        """Hand one block to ffmpeg, waiting at most `stall_timeout` s; `FfmpegError` if it died or stalled."""
        if self._process is None:
            raise FfmpegError(f"{self.name} is not open")
        self._process.feed(pcm_bytes(block), self.stall_timeout)

    def close(self) -> None:
        """Let ffmpeg finish the stream and exit (killed after a few seconds); safe to repeat."""
        process, self._process = self._process, None
        if process is not None:
            process.close()
