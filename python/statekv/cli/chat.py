"""`statekv chat`: interactive questions about a video that can keep growing (the pieces it shares
with `statekv ask` are in :mod:`.video`)."""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Iterator

from ..progress import format_duration, format_summary
from .errors import UsageError, error_line
from .video import _answer_line, _chat_rows, _check_options, _check_video, _index_video, _load_model, _mode_text, \
    _open_chat, _require_file, _stream_answer

__all__ = ["run_chat", "Repl"]

REPL_HELP = """\
a plain line                ask it about the video so far
/video FILE [START [END]]   add (a clip of) another video, START/END in seconds
/save FILE                  save the chat
/load FILE                  load a saved chat (same model files)
/stats                      frames, cache tokens and bytes, per-frame latency
/help                       this list
/quit                       leave (so does end of input)"""


def run_chat(args: argparse.Namespace) -> int:
    _check_options(args, "chat")
    expected_frames = _check_video(args.video, args, args.start, args.end) if args.video else None
    if args.load:  # the saved chat's sampling applies, not the flags'
        expected_frames = None
    vlm = _load_model(args)
    chat = _open_chat(vlm, args)
    if args.video:
        _index_video(chat, args.video, args.start, args.end, args.quiet, expected_frames)
    repl = Repl(vlm, chat, args)
    interactive = _is_tty(sys.stdin)
    if interactive:
        repl.status(f"statekv chat: {vlm.family} model, {chat.n_frames} frames indexed. "
                    "Type a question, /help for commands, /quit to leave.", always=True)
    return repl.run(_read_lines(interactive))


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _read_lines(interactive: bool) -> Iterator[str]:
    """Lines from stdin until end of input; on a terminal with a prompt and line editing."""
    if not interactive:
        for line in sys.stdin:
            yield line.rstrip("\n")
        return
    try:
        import readline  # gives input() history and line editing
        del readline
    except ImportError:
        pass
    while True:
        try:
            yield input("> ")
        except EOFError:
            sys.stderr.write("\n")
            return


class Repl:
    """The chat loop: questions and /commands; an error is reported in one line and the loop goes on."""

    def __init__(self, vlm, chat, args: argparse.Namespace):
        self.vlm = vlm
        self.chat = chat
        self.args = args
        self.commands = {"/video": self.add_video, "/save": self.save, "/load": self.load, "/stats": self.stats,
                         "/help": self.help}

    def status(self, text: str, always: bool = False) -> None:
        """A message about what happened (not an answer): on stderr, unless --quiet."""
        if always or not self.args.quiet:
            print(text, file=sys.stderr, flush=True)

    def run(self, lines: Iterator[str]) -> int:
        from .. import ModelError

        for line in lines:
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit", "/q"):
                break
            try:
                self.handle(line)
            except BrokenPipeError:  # nobody reads the answers any more
                raise
            except (ModelError, ValueError, OSError, UsageError) as exc:
                print(error_line(exc), file=sys.stderr, flush=True)
        return 0

    def handle(self, line: str) -> None:
        if line.startswith("/"):
            name, _, rest = line.partition(" ")
            command = self.commands.get(name)
            if command is None:
                raise UsageError(f"unknown command {name} (/help lists them)")
            command(rest.strip())
        else:
            self.ask(line)

    def ask(self, question: str) -> None:
        try:
            answer = _stream_answer(self.chat, question, self.args, sys.stdout)
        except KeyboardInterrupt:
            # Asking does not change the video state, so the chat goes on after a stopped answer.
            self.status("statekv: answer interrupted", always=True)
            return
        self.status(_answer_line(answer))

    def add_video(self, rest: str) -> None:
        words = shlex.split(rest)
        if not 1 <= len(words) <= 3:
            raise UsageError("usage: /video FILE [START [END]] (seconds)")
        try:
            bounds = [float(w) for w in words[1:]]
        except ValueError:
            raise UsageError(f"/video: START and END are seconds, got {' '.join(words[1:])!r}") from None
        start = bounds[0] if bounds else None
        end = bounds[1] if len(bounds) > 1 else None
        path = words[0]
        added, seconds = _index_video(self.chat, path, start, end, self.args.quiet)
        self.status(f"added {added} frames in {format_duration(seconds)} ({self.chat.n_frames} in the chat)")

    def save(self, rest: str) -> None:
        words = shlex.split(rest)
        if len(words) != 1:
            raise UsageError("usage: /save FILE")
        self.chat.save(words[0])
        self.status(f"saved the chat ({self.chat.n_frames} frames) to {words[0]}")

    def load(self, rest: str) -> None:
        import statekv

        words = shlex.split(rest)
        if len(words) != 1:
            raise UsageError("usage: /load FILE")
        _require_file(words[0], "saved chat")
        self.chat = statekv.load_chat(self.vlm, words[0])
        self.status(f"loaded {words[0]} ({self.chat.n_frames} frames, {_mode_text(self.chat.options)})")

    def stats(self, rest: str) -> None:
        print(format_summary(_chat_rows(self.chat), indent=""), flush=True)

    def help(self, rest: str) -> None:
        print(REPL_HELP, flush=True)
