"""`statekv ask` (and what `statekv chat`, :mod:`.chat`, shares with it): questions about a video
from the command line.

Both load a video VLM (:func:`statekv.load`), index the video frame by frame with a progress bar
on stderr (:class:`statekv.progress.ProgressBar`), stream answers to stdout as they are decoded
(:meth:`statekv.VideoChat.stream`) and report what it cost on stderr. stdout carries answers only
(or one JSON object with ``ask --json``), so it can be piped.

Cheap checks (files exist, the video opens and decodes, option values) run before the model is
loaded, so a typo costs no model load. Errors propagate as exceptions; :func:`statekv.cli.main`
prints them as one ``statekv: error:`` line (exit 2 for :class:`UsageError`, 1 otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional, TextIO

from ..progress import ProgressBar, format_bytes, format_duration, format_rate, format_summary, peak_memory_bytes

from .errors import UsageError

__all__ = ["add_ask_arguments", "add_chat_arguments", "run_ask"]

ASK_DESCRIPTION = """\
Answer one question about a video: the video is indexed frame by frame (progress on stderr),
then the answer is streamed to stdout, then a summary (frames, cache tokens, per-frame latency,
time to first token, tokens/s, peak memory) goes to stderr."""

ASK_EPILOG = """\
examples:
  statekv ask -m InternVL3-1B-Q8_0.gguf --mmproj mmproj-InternVL3-1B-Q8_0.gguf \\
      --video match.mp4 "Who scores first?"
  statekv ask -m M.gguf --mmproj MM.gguf --video match.mp4 --save match.statekv "Who scores first?"
  statekv ask -m M.gguf --mmproj MM.gguf --load match.statekv --json "What colour is the ball?"

With --load the session options (mode, budget, window, kv type, fps, system prompt) are those
the chat was saved with; --video then adds more video after the saved part."""

CHAT_DESCRIPTION = """\
Interactive questions about a video that can keep growing. Each line read from stdin is a
question (answered over everything indexed so far; earlier questions are not part of the
context), or a command:

  /video FILE [START [END]]   add (a clip of) another video after what is indexed
  /save FILE                  save the chat (reload it with /load or --load, no re-decoding)
  /load FILE                  replace the chat with a saved one
  /stats                      frames, cache tokens and bytes, per-frame latency
  /help                       this list
  /quit                       leave (end of input does too)

Works with piped input: printf 'What happens?\\n/quit\\n' | statekv chat ..."""

CHAT_EPILOG = """\
example:
  statekv chat -m InternVL3-1B-Q8_0.gguf --mmproj mmproj-InternVL3-1B-Q8_0.gguf --video match.mp4
  > Who scores first?
  > /video second_half.mp4
  > And who scores last?"""


# ---- arguments ---------------------------------------------------------------------------------


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("-m", "--model", required=True, metavar="TEXT.gguf", help="text model GGUF (llama.cpp's)")
    g.add_argument("--mmproj", metavar="MMPROJ.gguf",
                   help="vision encoder + projector GGUF that goes with -m (required)")
    g.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default, or 0: statekv's choice)")
    g.add_argument("-dev", "--device", default=None,
                   help="device name from `statekv info` (default: the best GPU, else the CPU)")


def _check_cache_mode(args: argparse.Namespace) -> None:
    """The options _add_cache_mode_arguments adds: a budget or window the mode uses must be positive."""
    if args.mode == "statekv" and args.budget <= 0:
        raise UsageError(f"--budget must be a positive number of tokens, got {args.budget}")
    if args.mode == "window" and args.window <= 0:
        raise UsageError(f"--window must be a positive number of steps, got {args.window}")


def _add_cache_mode_arguments(g, default: str, step: str, full_note: str = "") -> None:
    """--mode/--budget/--window, shared by the commands that prefill in steps."""
    g.add_argument("--mode", choices=["full", "window", "statekv"], default=default,
                   help=f"what each {step} attends to: full (exact{full_note}), window (last --window steps) "
                        "or statekv (--budget importance-selected keys) (default: %(default)s)")
    g.add_argument("--budget", type=int, default=4096, metavar="TOKENS",
                   help="statekv: carried keys per layer and KV head (default: %(default)s)")
    g.add_argument("--window", type=int, default=16, metavar="STEPS",
                   help="window: steps attended to (default: %(default)s)")


def _add_session_arguments(p: argparse.ArgumentParser, with_save: bool) -> None:
    g = p.add_argument_group("video and session")
    g.add_argument("--video", metavar="FILE", help="video file (any container/codec FFmpeg reads)")
    g.add_argument("--start", type=float, default=None, metavar="SECONDS", help="start of the clip to index")
    g.add_argument("--end", type=float, default=None, metavar="SECONDS", help="end of the clip to index")
    g.add_argument("--load", metavar="FILE", help="continue a chat saved with --save or /save instead of (or before) "
                                                  "--video")
    _add_cache_mode_arguments(g, "statekv", "frame step", ", cost grows")
    g.add_argument("--fps", type=float, default=1.0, help="sample at most this many frames per second; 0: exactly "
                                                          "--max-frames frames spread evenly (default: %(default)s)")
    g.add_argument("--max-frames", type=int, default=512, metavar="N",
                   help="at most this many frames per video (default: %(default)s)")
    g.add_argument("-ctk", "--kv-type", default="f16", choices=["f32", "f16", "q8_0", "q4_0"], metavar="TYPE",
                   help="detailed-cache type: f32, f16, q8_0 or q4_0 (default: %(default)s)")
    g.add_argument("--system", default=None, metavar="TEXT", help="system prompt")
    if with_save:
        g.add_argument("--save", metavar="FILE",
                       help="save the chat after indexing (ask more later with --load, no re-decoding)")


def _add_answer_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("answer (llama.cpp's sampling flags)")
    g.add_argument("-n", "--max-tokens", "--n-predict", dest="max_tokens", type=int, default=256, metavar="N",
                   help="answer tokens at most (default: %(default)s)")
    g.add_argument("--temp", type=float, default=0.0, metavar="T", help="temperature; 0: greedy (default: %(default)s)")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="top-k sampling, 0: off (default: %(default)s)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="top-p sampling, 1: off (default: %(default)s)")
    g.add_argument("--min-p", type=float, default=0.0, metavar="P",
                   help="min-p sampling, 0: off (default: %(default)s)")
    g.add_argument("--repeat-penalty", type=float, default=1.0, metavar="X",
                   help="penalty of tokens among the last 64, 1: off (default: %(default)s)")
    g.add_argument("-s", "--seed", type=int, default=None, metavar="N",
                   help="sampling seed (default: a fixed one, so runs repeat)")


def add_ask_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("question", nargs="?", help="the question (or -p QUESTION)")
    p.add_argument("-p", "--prompt", dest="prompt", default=None, metavar="QUESTION",
                   help="the question, as llama.cpp's -p")
    _add_model_arguments(p)
    _add_session_arguments(p, with_save=True)
    _add_answer_arguments(p)
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true",
                     help="print one JSON object (answer, frames, tokens, timings, mode, memory) on stdout instead "
                          "of the streamed answer and the summary")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary on stderr")


def add_chat_arguments(p: argparse.ArgumentParser) -> None:
    _add_model_arguments(p)
    _add_session_arguments(p, with_save=False)
    _add_answer_arguments(p)
    out = p.add_argument_group("output")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="no progress bar, no per-answer statistics and no status lines on stderr")


# ---- checks before the model is loaded ---------------------------------------------------------


def _require_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file ({what})")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory, not a {what}")


def _check_options(args: argparse.Namespace, command: str) -> None:
    """Usage problems that need no model: raised before the (slow) model load."""
    if args.mmproj is None:
        needs = "--video" if args.video else "a video model"
        raise UsageError(f"{needs} needs --mmproj MMPROJ.gguf (the vision encoder GGUF that goes with -m); "
                         f"see `statekv {command} --help`")
    _check_cache_mode(args)
    if args.max_frames < 1:
        raise UsageError(f"--max-frames must be at least 1, got {args.max_frames}")
    if args.fps < 0:
        raise UsageError(f"--fps must be positive (or 0 for exactly --max-frames frames), got {args.fps}")
    if args.max_tokens < 1:
        raise UsageError(f"-n/--max-tokens must be at least 1, got {args.max_tokens}")
    if (args.start is not None or args.end is not None) and not args.video:
        raise UsageError("--start/--end bound the --video clip: give --video too")
    _require_file(args.model, "text model GGUF")
    _require_file(args.mmproj, "mmproj GGUF")
    if args.load:
        _require_file(args.load, "saved chat")


def _check_video(path: str, args: argparse.Namespace, start: Optional[float], end: Optional[float]) -> int:
    """Open the video as indexing will (it decodes the first chosen frame): a missing file, a
    file that is not a video or has no decodable frame fails here, in a fraction of a second.
    Returns the number of frames the flags' sampling chooses."""
    from ..video import VideoReader

    reader = VideoReader(path, fps=_fps(args.fps), max_frames=args.max_frames, start=start, end=end)
    reader.close()
    return len(reader)


def _fps(value: float) -> Optional[float]:
    return None if value == 0 else value


def _threads(value: Optional[int]) -> Optional[int]:
    return None if not value else value


# ---- the pieces both commands use --------------------------------------------------------------


def _load_model(args: argparse.Namespace):
    import statekv

    return statekv.load(args.model, args.mmproj, device=args.device, threads=_threads(args.threads))


def _open_chat(vlm, args: argparse.Namespace):
    import statekv

    if args.load:
        return statekv.load_chat(vlm, args.load)
    return vlm.video_chat(mode=args.mode, budget=args.budget, window=args.window, fps=_fps(args.fps),
                          max_frames=args.max_frames, kv_type=args.kv_type, system=args.system)


def _index_video(chat, path: str, start: Optional[float], end: Optional[float], quiet: bool,
                 expected_frames: Optional[int] = None) -> tuple[int, float]:
    """Add a video to the chat with a progress bar; returns (frames added, seconds).
    ``expected_frames`` lets the bar show its total before the first batch of frames is done."""
    began = time.perf_counter()
    with ProgressBar(os.path.basename(path) or path, unit="frames", enabled=not quiet) as bar:
        bar.update(0, expected_frames)
        added = chat.add_video(path, start=start, end=end, progress=bar.update)
    return added, time.perf_counter() - began


def _sampling(args: argparse.Namespace) -> dict:
    """The keyword arguments of :meth:`VideoChat.ask` / ``stream`` set by the flags."""
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repeat_penalty=args.repeat_penalty, seed=args.seed)


@dataclass
class Answer:
    text: str
    n_tokens: int
    first_token_seconds: Optional[float]
    seconds: float

    @property
    def tokens_per_second(self) -> Optional[float]:
        """Decoding speed after the first token (whose time is mostly the question's prefill)."""
        if self.first_token_seconds is None or self.n_tokens < 2:
            return None
        decoding = self.seconds - self.first_token_seconds
        return (self.n_tokens - 1) / decoding if decoding > 0 else None


def _stream_answer(chat, question: str, args: argparse.Namespace, out: Optional[TextIO]) -> Answer:
    """Stream the answer's text pieces to ``out`` (None: keep them) and time them."""
    began = time.perf_counter()
    first: Optional[float] = None
    pieces: list[str] = []
    completed = False
    try:
        for piece in chat.stream(question, max_tokens=args.max_tokens, **_sampling(args)):
            if first is None:
                first = time.perf_counter() - began
            pieces.append(piece)
            if out is not None:
                out.write(piece)
                out.flush()
        completed = True
    finally:
        # End the answer's line, also when it is interrupted half-way; a question that fails
        # before the first piece (e.g. too long) leaves stdout untouched.
        if out is not None and (completed or pieces):
            out.write("\n")
            out.flush()
    # The token count is the chat's own record of the ids it decoded (pieces of text can hold
    # several tokens, or none while a multi-byte character is incomplete).
    return Answer("".join(pieces), len(chat.last_answer_ids), first, time.perf_counter() - began)


def _mode_text(options: dict) -> str:
    mode = options["mode"]
    if mode == "statekv":
        return f"statekv, budget {options['budget']}"
    if mode == "window":
        return f"window of {options['window']} steps"
    return mode


def _chat_rows(chat, index_seconds: Optional[float] = None, indexed_frames: int = 0) -> list[tuple[str, str]]:
    """Summary rows of the chat's video state."""
    st = chat.stats()
    frames = str(st["frames"])
    if index_seconds is not None and indexed_frames:
        now = "" if indexed_frames == st["frames"] else f"{indexed_frames} "
        frames += f", {now}indexed in {format_duration(index_seconds)} " \
                  f"({format_rate(indexed_frames, index_seconds, 'frames')})"
    return [
        ("mode", _mode_text(chat.options)),
        ("frames", frames),
        ("cache", f"{st.get('tokens_detailed', 0)} tokens detailed ({format_bytes(st.get('bytes_detailed'))}), "
                  f"{st.get('tokens_carried', 0)} carried ({format_bytes(st.get('bytes_carried'))})"),
        ("per frame", f"{format_duration(st['frame_seconds_median'])} median, "
                      f"{format_duration(st['frame_seconds_last'])} last"),
    ]


def _answer_rows(answer: Answer) -> list[tuple[str, str]]:
    rate = answer.tokens_per_second
    return [
        ("first token", format_duration(answer.first_token_seconds)),
        ("answer", f"{answer.n_tokens} tokens in {format_duration(answer.seconds)}, "
                   f"{'-' if rate is None else f'{rate:.1f}'} tokens/s"),
    ]


def _answer_line(answer: Answer) -> str:
    rate = answer.tokens_per_second
    return (f"({answer.n_tokens} tokens, first token {format_duration(answer.first_token_seconds)}, "
            f"{'-' if rate is None else f'{rate:.1f}'} tokens/s)")


# ---- statekv ask -------------------------------------------------------------------------------


def run_ask(args: argparse.Namespace) -> int:
    if args.question is not None and args.prompt is not None:
        raise UsageError("give the question once: as the last argument or with -p, not both")
    question = args.question if args.question is not None else args.prompt
    if question is None:
        raise UsageError("no question: statekv ask -m TEXT.gguf --mmproj MMPROJ.gguf --video FILE \"question\"")
    if not args.video and not args.load:
        raise UsageError("nothing to ask about: give --video FILE (or --load FILE, a saved chat)")
    _check_options(args, "ask")
    expected_frames = _check_video(args.video, args, args.start, args.end) if args.video else None
    if args.load:  # the saved chat's sampling applies, not the flags'
        expected_frames = None

    began = time.perf_counter()
    vlm = _load_model(args)
    chat = _open_chat(vlm, args)
    load_seconds = time.perf_counter() - began

    indexed, index_seconds = 0, 0.0
    if args.video:
        indexed, index_seconds = _index_video(chat, args.video, args.start, args.end, args.quiet, expected_frames)
    if args.save:
        chat.save(args.save)

    answer = _stream_answer(chat, question, args, out=None if args.json else sys.stdout)

    if args.json:
        print(json.dumps(_ask_report(args, question, vlm, chat, answer, load_seconds, index_seconds, indexed)))
    elif not args.quiet:
        rows = _chat_rows(chat, index_seconds, indexed) + _answer_rows(answer)
        rows.append(("peak memory", format_bytes(peak_memory_bytes())))
        print(format_summary(rows), file=sys.stderr)
    return 0


def _ask_report(args, question, vlm, chat, answer: Answer, load_seconds: float, index_seconds: float,
                indexed: int) -> dict:
    st = chat.stats()
    options = chat.options
    return {
        "answer": answer.text,
        "question": question,
        "frames": st["frames"],
        "mode": options["mode"],
        "budget": options["budget"],
        "window": options["window"],
        "kv_type": options["kv_type"],
        "family": vlm.family,
        "model": args.model,
        "mmproj": args.mmproj,
        "video": args.video,
        "loaded": args.load,
        "saved": args.save,
        "tokens": {"detailed": st.get("tokens_detailed"), "carried": st.get("tokens_carried"),
                   "steps": st.get("steps"), "answer": answer.n_tokens},
        "timings": {"load_seconds": load_seconds, "index_seconds": index_seconds, "frames_indexed": indexed,
                    "frame_seconds_median": st["frame_seconds_median"], "frame_seconds_last": st["frame_seconds_last"],
                    "first_token_seconds": answer.first_token_seconds, "answer_seconds": answer.seconds,
                    "answer_tokens_per_second": answer.tokens_per_second},
        "memory": {"peak_rss_bytes": peak_memory_bytes(), "detailed_bytes": st.get("bytes_detailed"),
                   "carried_bytes": st.get("bytes_carried")},
    }
