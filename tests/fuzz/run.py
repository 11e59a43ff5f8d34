"""The fuzz harness: mutated model, mmproj, session and chat files, each run in its own process.

    python -m fuzz.run --cases 100000 --out /tmp/statekv-fuzz          # from tests/, long run
    python -m fuzz.run --cases 300 --kinds text,session --seed 7     # a short one

Each case is a forked child of one server process (which has imported statekv and, for session
and chat cases, loaded the seed model once), so a case costs milliseconds. The child loads the
mutated file and uses it (logits, generation, frame steps, encoding, questions); its outcome is
one of:

- ``ran``: the file was accepted and everything ran (the mutation was harmless or unobservable);
- ``clean``: statekv.ModelError or ValueError whose message names the file;
- ``unnamed``: statekv.ModelError or ValueError whose message does not name the file;
- ``traceback``: any other exception (KeyError, TypeError, MemoryError, UnicodeDecodeError, ...);
- ``crash``: the child died of a signal (SIGSEGV, SIGABRT from a GGML_ASSERT, SIGFPE, ...);
- ``hang``: it ran past the timeout.

Children run with an address-space limit 4 GiB above the server's, so an absurd allocation fails instead of taking the
machine's memory. Cases other than ran/clean are written to ``--out`` (the mutated file, its
recipe and the child's stderr) so they can be replayed (``--replay FILE``) and kept as regression
tests.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import mutate, seeds

OUTCOMES = ("ran", "clean", "unnamed", "traceback", "crash", "hang")
KINDS = ("text", "mmproj", "session", "chat", "cli")
ADDRESS_HEADROOM = 4 * 2**30  # address space a child may add to what the server had mapped


class Context:
    """What the children share: seed files and the models loaded once in the server."""

    def __init__(self, work: Path, kinds, chat_files=None):
        import statekv
        self.statekv = statekv
        self.work = work
        self.seeds = seeds.write_all(work / "seeds")
        self.text_seeds = [k for k in self.seeds if k.startswith("text-")]
        self.mmproj_seeds = [k for k in self.seeds if k.startswith("mmproj-")]
        self.session_model = None
        self.gemma3_model = None
        self.session_seeds = {}
        if "session" in kinds:
            # threads=1: the CPU backend then computes in the calling thread, and a forked child
            # (which has only that thread) can use the model.
            self.session_model = statekv.Model(self.seeds["text-qwen3"], threads=1)
            self.session_seeds = seeds.save_sessions(self.session_model, work / "seeds")
            # sliding-window layers: session files hold their window (a ring in D)
            self.gemma3_model = statekv.Model(self.seeds["text-gemma3"], threads=1)
            self.session_seeds.update(seeds.save_sessions(self.gemma3_model, work / "seeds", "gemma3-"))
        self.vlm = None
        self.chat_seeds = {}
        if ("chat" in kinds or "cli" in kinds) and chat_files is not None:
            self.vlm, self.chat_seeds = chat_files(work / "seeds")

    def seed_path(self, kind: str, rng: random.Random) -> tuple[str, Path]:
        if kind == "text":
            name = rng.choice(self.text_seeds)
            return name, self.seeds[name]
        if kind == "mmproj":
            name = rng.choice(self.mmproj_seeds)
            return name, self.seeds[name]
        if kind == "session":
            name = rng.choice(sorted(self.session_seeds))
            return f"session-{name}", self.session_seeds[name]
        if kind == "cli" and (not self.chat_seeds or rng.random() < 0.5):
            name = rng.choice(self.text_seeds)
            return f"cli-{name}", self.seeds[name]
        name = rng.choice(sorted(self.chat_seeds))
        return f"{'cli-' if kind == 'cli' else ''}chat-{name}", self.chat_seeds[name]


# ---- what a child does with a mutated file ---------------------------------------------------

def use_text(ctx: Context, path: str, seed_name: str) -> None:
    m = ctx.statekv.Model(path, threads=1)
    m.info()
    n_vocab = m.n_vocab
    ids = [i % n_vocab for i in (1, 2, 3, 4)]
    m.logits(ids)
    m.generate(ids[:2], 3, ignore_eos=True)
    s = m.session(mode="statekv", budget=5)
    s.prefill(ids[:2])
    for _ in range(3):
        s.add_step(ids)
    s.generate(ids[:1], 2, ignore_eos=True)
    s.carried(0)
    w = m.session(mode="window", window=1)
    w.prefill(ids[:1])
    w.add_step(ids)
    w.question_logits(ids[:2])


def use_mmproj(ctx: Context, path: str, seed_name: str) -> None:
    family = seed_name.split("-", 1)[1]
    text, shape = seeds.MMPROJ_PAIRS[family]
    m = ctx.statekv.Model(ctx.seeds[f"text-{text}"], mmproj=path, threads=1)
    info = m.info()
    if family == "internvl" and int(info.get("vision.image_size", 0)) > 0:
        size = min(int(info["vision.image_size"]), 448)
        shape = (1, 3, size, size)
    pixels = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    vis = m.encode_frames(pixels)
    k = vis.shape[1]
    s = m.session(mode="statekv", budget=8)
    s.prefill([1, 2])
    s.add_step([3] * (k + 2), embeddings=vis[0], embedding_rows=np.arange(1, k + 1))
    s.generate([4, 5], 2, ignore_eos=True)


def use_session(ctx: Context, path: str, seed_name: str) -> None:
    model = ctx.gemma3_model if seed_name.startswith("session-gemma3-") else ctx.session_model
    s = model.load_session(path)
    s.stats()
    s.carried(0)
    s.question_logits([1, 2])
    s.add_step([3, 4])
    s.generate([5], 2, ignore_eos=True)
    s.fork().add_step([6])


def use_chat(ctx: Context, path: str, seed_name: str) -> None:
    chat = ctx.statekv.load_chat(ctx.vlm, path)
    chat.stats()
    chat.ask("What happens?", max_tokens=2)
    repr(chat)


def use_cli(ctx: Context, path: str, seed_name: str) -> None:
    """The command line on the mutated file (``info -m`` for a model, ``ask --load`` for a
    chat): an exit code of 1 with one ``statekv: error:`` line is a clean error; a traceback
    escapes main() and is reported as such."""
    import contextlib
    import io

    from statekv import cli
    if seed_name.startswith("cli-chat-"):
        argv = ["ask", "-m", ctx.vlm.model.path, "--mmproj", ctx.vlm.model.mmproj, "--load", path, "-n", "2", "-q",
                "-t", "1", "What happens?"]
    else:
        argv = ["info", "-m", path, "--json", "-t", "1"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(argv)
    if rc != 0:
        lines = [x for x in err.getvalue().splitlines() if x.startswith("statekv: error:")]
        if rc != 1 or len(lines) != 1:
            raise RuntimeError(f"exit code {rc}, stderr {err.getvalue()[-500:]!r}")
        raise ValueError(lines[0])


USERS = {"text": use_text, "mmproj": use_mmproj, "session": use_session, "chat": use_chat, "cli": use_cli}


def _mapped_bytes() -> int:
    """The process's current virtual size (VmSize), so the limit leaves the same headroom
    whatever the server (a pytest process, say) has already mapped."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def child(ctx: Context, kind: str, path: str, seed_name: str, result_fd: int, stderr_path: str) -> None:
    try:
        limit = _mapped_bytes() + ADDRESS_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        os.dup2(fd, 1)
        try:
            USERS[kind](ctx, path, seed_name)
            out = {"outcome": "ran"}
        except (ctx.statekv.ModelError, ValueError) as e:
            msg = str(e)
            out = {"outcome": "clean" if path in msg else "unnamed", "error": f"{type(e).__name__}: {msg[:500]}"}
        except BaseException as e:  # noqa: BLE001 - every other exception is the finding
            import traceback
            out = {"outcome": "traceback", "error": f"{type(e).__name__}: {str(e)[:300]}",
                   "traceback": traceback.format_exc()[-3000:]}
        os.write(result_fd, json.dumps(out).encode())
    finally:
        os._exit(0)


def run_case(ctx: Context, kind: str, path: str, seed_name: str, timeout: float) -> dict:
    r, w = os.pipe()
    stderr_path = path + ".stderr"
    pid = os.fork()
    if pid == 0:
        os.close(r)
        child(ctx, kind, path, seed_name, w, stderr_path)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    hung = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            hung = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if ready:
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
    if hung:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(r)
    if hung:
        out = {"outcome": "hang"}
    elif os.WIFSIGNALED(status):
        out = {"outcome": "crash", "signal": signal.Signals(os.WTERMSIG(status)).name}
    else:
        try:
            out = json.loads(b"".join(chunks).decode())
        except ValueError:
            out = {"outcome": "crash", "signal": f"exit status {os.WEXITSTATUS(status)} without a result"}
    if out["outcome"] in ("crash", "hang", "traceback", "unnamed"):
        try:
            err = Path(stderr_path).read_text(errors="replace")
            # ggml prints the failed assertion first, then a debugger backtrace: keep the head.
            out["stderr"] = err[:2500] + ("\n...\n" + err[-500:] if len(err) > 3000 else err[2500:])
        except OSError:
            pass
    try:
        os.unlink(stderr_path)
    except OSError:
        pass
    return out


def make_case(ctx: Context, kind: str, case: int, base_seed: int):
    """The mutated bytes of case number ``case`` (deterministic) and its recipe."""
    rng = random.Random(f"{base_seed}:{kind}:{case}")
    seed_name, seed_path = ctx.seed_path(kind, rng)
    data = seed_path.read_bytes()
    extra = mutate.session_extra if "session" in seed_name or "chat" in seed_name else None
    try:
        out, log = mutate.mutate_gguf(data, rng, extra)
    except Exception as e:  # noqa: BLE001 - a mutation bug: report, do not stop the run
        out, log = data, [f"mutation failed: {e!r}"]
    return seed_name, out, log


def fuzz(ctx: Context, kinds, n_cases: int, base_seed: int, out_dir: Path, timeout: float, progress=True) -> dict:
    counts = {k: {o: 0 for o in OUTCOMES} for k in kinds}
    findings = []
    scratch = Path(tempfile.mkdtemp(prefix="statekv-fuzz-case-"))
    t0 = time.monotonic()
    try:
        for case in range(n_cases):
            kind = kinds[case % len(kinds)]
            seed_name, data, log = make_case(ctx, kind, case, base_seed)
            path = str(scratch / f"case-{kind}-{case}.gguf")
            Path(path).write_bytes(data)
            # A CLI case loads a full-vocabulary VLM and builds its tokenizer: seconds, not
            # milliseconds, and many more on a loaded machine.
            res = run_case(ctx, kind, path, seed_name, timeout * (10 if kind == "cli" else 1))
            counts[kind][res["outcome"]] += 1
            if res["outcome"] not in ("ran", "clean"):
                out_dir.mkdir(parents=True, exist_ok=True)
                keep = out_dir / f"{res['outcome']}-{kind}-{base_seed}-{case}.gguf"
                shutil.copy(path, keep)
                rec = {"kind": kind, "case": case, "seed": base_seed, "seed_file": seed_name, "mutations": log, **res}
                keep.with_suffix(".json").write_text(json.dumps(rec, indent=1, default=str))
                findings.append(rec)
            os.unlink(path)
            if progress and (case + 1) % 500 == 0:
                rate = (case + 1) / (time.monotonic() - t0)
                print(f"[{case + 1}/{n_cases}] {rate:.1f} cases/s {json.dumps(counts)}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"counts": counts, "findings": findings, "seconds": time.monotonic() - t0}


def chat_files_from_tests(work: Path):
    """A tiny converted InternVL pair with the real Qwen vocabulary (as the test suite builds it)
    and chats saved from it; needs torch/transformers and the shared vocabulary."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from test_internvl import make_internvl  # noqa: E402

    import statekv
    from statekv.convert import convert
    root = work / "vlm"
    root.mkdir(parents=True, exist_ok=True)
    text, mmproj = root / "internvl-f16.gguf", root / "mmproj-internvl-f16.gguf"
    if not text.exists():
        convert(make_internvl(root / "hf"), text, "f16", mmproj_out=mmproj)
    vlm = statekv.load(text, mmproj, threads=1)
    out = {}
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    for mode, kw in (("statekv", dict(budget=300)), ("window", dict(window=1))):
        chat = vlm.video_chat(mode=mode, **kw)
        chat.add_frames(frames)
        p = work / f"chat-{mode}.statekv"
        chat.save(p)
        out[mode] = p
    return vlm, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--kinds", default="text,mmproj,session")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="statekv-fuzz-findings")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--replay", help="run one saved case (its .gguf; the .json next to it says the kind)")
    a = p.parse_args(argv)
    kinds = [k for k in a.kinds.split(",") if k]
    if any(k not in KINDS for k in kinds):
        p.error(f"kinds are {', '.join(KINDS)}")
    work = Path(tempfile.mkdtemp(prefix="statekv-fuzz-"))
    try:
        if a.replay:
            rec = json.loads(Path(a.replay).with_suffix(".json").read_text())
            ctx = Context(work, [rec["kind"]], chat_files_from_tests)
            res = run_case(ctx, rec["kind"], str(Path(a.replay).resolve()), rec["seed_file"], a.timeout)
            print(json.dumps(res, indent=1))
            return 0 if res["outcome"] in ("ran", "clean") else 1
        ctx = Context(work, kinds, chat_files_from_tests)
        report = fuzz(ctx, kinds, a.cases, a.seed, Path(a.out), a.timeout)
        print(json.dumps({"cases": a.cases, "seconds": round(report["seconds"], 1), "counts": report["counts"],
                          "findings": len(report["findings"])}, indent=1))
        return 0 if not report["findings"] else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
