"""The `statekv` command line: `statekv ask`, `statekv chat`, `statekv run`, `statekv info`,
`statekv convert`, `statekv eval ...`, `statekv bench ...`."""
from __future__ import annotations

import argparse
import json
import os
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from ..model import Model, backends, ggml_info

    ggml = ggml_info()
    if args.model is None:
        if args.json:
            print(json.dumps({"ggml": ggml, "devices": backends()}, indent=2))
            return 0
        for k, v in ggml.items():
            print(f"{'ggml.' + k:>17}: {v}")
        for d in backends():
            print(f"{d['name']}: {d['description']} ({d['type']}, {d['memory_total'] / 2**30:.1f} GiB)")
        return 0
    info = Model(args.model, device=args.device, threads=args.threads).info()
    info.update({"ggml." + k: v for k, v in ggml.items()})
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>17}: {v}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error convention: a usage error is one ``statekv: error:`` line
    (pointing at ``--help``) and exit code 2, like every other error of the command line."""

    def error(self, message: str):
        print(f"statekv: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from .. import convert, demo
    from ..bench import frames, make_model, text
    from . import chat as cli_chat
    from . import video as cli_video

    p = _Parser(prog="statekv", description="Linear-time long-video VLM inference on ggml.")
    sub = p.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a question about a video (streamed), with a summary of the cost",
                         description=cli_video.ASK_DESCRIPTION, epilog=cli_video.ASK_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_video.add_ask_arguments(ask)
    ask.set_defaults(func=cli_video.run_ask)

    chat = sub.add_parser("chat", help="interactive questions about a video that can keep growing",
                          description=cli_video.CHAT_DESCRIPTION, epilog=cli_video.CHAT_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_video.add_chat_arguments(chat)
    chat.set_defaults(func=cli_chat.run_chat)

    dm = sub.add_parser("demo", help="run the three modes on a long document with the trained Gemma 3 270M "
                                     "(pip install \".[demo]\") and on a random-weight video model "
                                     "(no download; cached under ~/.cache/statekv)",
                        description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(dm)
    dm.set_defaults(func=demo.run)

    info = sub.add_parser("info", help="describe a GGUF model (or list devices without -m)")
    info.add_argument("-m", "--model", help="text GGUF file")
    info.add_argument("--device", default=None)
    info.add_argument("-t", "--threads", type=int, default=None)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_cmd_info)

    conv = sub.add_parser("convert", help="convert a Hugging Face checkpoint to GGUF (llama.cpp layout)")
    convert.add_arguments(conv)
    conv.set_defaults(func=convert.run)

    from . import run as cli_run
    from ..eval import long_context as eval_long_context
    from ..eval import video as eval_video

    def command(subparsers, name: str, module, help: str) -> None:
        """A subcommand whose module gives add_arguments(parser) and run(args); its docstring is the
        description."""
        c = subparsers.add_parser(name, help=help, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(c)
        c.set_defaults(func=module.run)

    command(sub, "run", cli_run, "text-only: prefill a prompt (optionally in steps, in a cache mode) and generate")
    ev = sub.add_parser("eval", help="evaluations: long-context fidelity of the cache modes, video benchmarks")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    command(esub, "long-context", eval_long_context,
            "how close each cache mode stays to full attention on a trained text model (text chunks as steps)")
    command(esub, "video", eval_video, "multiple-choice video benchmarks you bring (VideoMME, MLVU, OVOBench rows)")

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    bt = bsub.add_parser("text", help="prompt tokens/s at KV depths (comparable with llama-bench -fa 1)")
    text.add_arguments(bt)
    bt.set_defaults(func=text.run)
    bf = bsub.add_parser("frames", help="per-step latency, FLOPs and memory of frame steps per mode")
    frames.add_arguments(bf)
    bf.set_defaults(func=frames.run)
    bm = bsub.add_parser("make-model", help="write a random-weight GGUF at a real model's shapes")
    make_model.add_arguments(bm)
    bm.set_defaults(func=make_model.run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code: 0, 1 (error), 2 (usage), 130 (interrupted).
    Errors are reported as one ``statekv: error:`` line on stderr, without a traceback."""
    from .. import ModelError
    from .errors import UsageError, error_line

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout was closed early (e.g. `statekv ask ... | head -1`): nothing left to report to.
        _discard_stdout()
        return 141
    except (ModelError, ValueError, OSError) as exc:  # VideoError is a ValueError, FileNotFoundError an OSError
        print(error_line(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("statekv: interrupted", file=sys.stderr)
        return 130


def _discard_stdout() -> None:
    # Python flushes stdout at exit; into a closed pipe that would print another error.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
