"""`statekv ask` / `statekv chat` on tiny converted models of both families and generated videos:
the answers printed are the product API's (statekv.load / VideoChat) for the same options, saved
chats answer identically, the REPL reads piped stdin, and every bad input ends in one
`statekv: error:` line and a non-zero exit code, without a traceback. Also the progress bar and
summary helpers (statekv.progress) on their own."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import statekv
from statekv.cli import main
from statekv.progress import ProgressBar, format_bytes, format_duration, format_summary
from statekv.video import write_test_video

QUESTION = "What is shown in the video?"
N = "6"  # answer tokens: enough to compare, cheap on two cores
REPO = Path(__file__).resolve().parents[1]


# ---- fixtures (built once per module) ----------------------------------------------------------


@pytest.fixture(scope="module")
def internvl_files(tmp_path_factory):
    from test_internvl import make_internvl

    from statekv.convert import convert

    root = tmp_path_factory.mktemp("cli-internvl")
    text, mmproj = root / "internvl-f32.gguf", root / "mmproj-internvl-f32.gguf"
    convert(make_internvl(root / "hf"), text, "f32", mmproj_out=mmproj)
    return types.SimpleNamespace(text=str(text), mmproj=str(mmproj), budget=600)


@pytest.fixture(scope="module")
def qwen3vl_files(tmp_path_factory, tiny_hf_dir):
    from statekv.convert import convert

    root = tmp_path_factory.mktemp("cli-qwen3vl")
    text, mmproj = root / "qwen3vl-f32.gguf", root / "mmproj-qwen3vl-f32.gguf"
    convert(tiny_hf_dir("qwen3vl"), text, "f32", mmproj_out=mmproj)
    return types.SimpleNamespace(text=str(text), mmproj=str(mmproj), budget=40)


@pytest.fixture(scope="module")
def vlms(internvl_files, qwen3vl_files):
    """The API side of each comparison, with the thread count the commands are given."""
    return {"internvl": statekv.load(internvl_files.text, internvl_files.mmproj, threads=1),
            "qwen3vl": statekv.load(qwen3vl_files.text, qwen3vl_files.mmproj, threads=1)}


@pytest.fixture(scope="module")
def files(internvl_files, qwen3vl_files):
    return {"internvl": internvl_files, "qwen3vl": qwen3vl_files}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from test_video import _zeroed_payload

    root = tmp_path_factory.mktemp("cli-clips")
    a = write_test_video(root / "a.mp4", 10, 2.0, size=(96, 64))   # 5 s: 5 frames at 1 fps
    notes = root / "notes.mp4"
    notes.write_text("not a video\n")
    return types.SimpleNamespace(
        a=a,
        b=write_test_video(root / "b.mkv", 6, 3.0, size=(96, 64)),      # 2 s: 2 frames at 1 fps
        even=write_test_video(root / "even.mp4", 8, 2.0, size=(96, 64)),  # 4 frames: whole Qwen3-VL pairs
        not_video=str(notes),
        undecodable=str(_zeroed_payload(a, root / "zeroed.mp4")),
    )


def model_args(f) -> list[str]:
    return ["-m", f.text, "--mmproj", f.mmproj, "-t", "1", "--budget", str(f.budget)]


def run(capfd, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, expected_code=None, match: str = "") -> None:
    assert code != 0 if expected_code is None else code == expected_code, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("statekv: error: "), err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]


# ---- statekv ask -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["internvl", "qwen3vl"])
def test_ask_prints_the_api_answer_and_a_summary(capfd, files, vlms, clips, family):
    f = files[family]
    code, out, err = run(capfd, "ask", *model_args(f), "--video", clips.a, "-n", N, QUESTION)
    want = vlms[family].ask(clips.a, QUESTION, budget=f.budget, max_tokens=int(N))
    assert code == 0, err
    assert out == want + "\n"
    for field in ("mode", "frames", "cache", "per frame", "first token", "tokens/s", "peak memory"):
        assert field in err
    assert "5, indexed in" in err and "statekv, budget" in err


def test_ask_options_reach_the_api(capfd, files, vlms, clips):
    """Every session and sampling flag, against VideoChat called with the same values."""
    f = files["internvl"]
    code, out, err = run(capfd, "ask", "-m", f.text, "--mmproj", f.mmproj, "-t", "1", "--video", clips.a,
                         "--mode", "window", "--window", "2", "--fps", "2", "--max-frames", "3", "--start", "1",
                         "--end", "4", "--kv-type", "f32", "--system", "Be brief.", "-n", N, "--temp", "0.8",
                         "--top-k", "20", "--top-p", "0.9", "--min-p", "0.05", "--repeat-penalty", "1.1",
                         "--seed", "7", "--quiet", "-p", QUESTION)
    chat = vlms["internvl"].video_chat(mode="window", window=2, fps=2.0, max_frames=3, kv_type="f32",
                                       system="Be brief.")
    assert chat.add_video(clips.a, start=1, end=4) == 3
    want = chat.ask(QUESTION, max_tokens=int(N), temperature=0.8, top_k=20, top_p=0.9, min_p=0.05,
                    repeat_penalty=1.1, seed=7)
    assert code == 0, err
    assert out == want + "\n"
    assert err == ""  # --quiet


def test_ask_json(capfd, files, vlms, clips):
    f = files["internvl"]
    code, out, err = run(capfd, "ask", *model_args(f), "--video", clips.a, "-n", N, "--json", "--quiet", QUESTION)
    assert code == 0, err
    report = json.loads(out)
    assert report["answer"] == vlms["internvl"].ask(clips.a, QUESTION, budget=f.budget, max_tokens=int(N))
    assert report["frames"] == 5 and report["mode"] == "statekv" and report["budget"] == f.budget
    assert report["tokens"]["detailed"] > report["tokens"]["carried"] == f.budget
    assert 0 < report["tokens"]["answer"] <= int(N)
    timings = report["timings"]
    assert timings["frames_indexed"] == 5 and timings["frame_seconds_median"] > 0
    assert timings["first_token_seconds"] > 0 and timings["answer_seconds"] >= timings["first_token_seconds"]
    assert report["memory"]["peak_rss_bytes"] > 0 and report["memory"]["detailed_bytes"] > 0


def test_ask_save_then_load(capfd, files, clips, tmp_path):
    f = files["qwen3vl"]
    saved = tmp_path / "even.statekv"
    code, first, err = run(capfd, "ask", *model_args(f), "--video", clips.even, "--save", saved, "-n", N, QUESTION)
    assert code == 0, err
    code, again, err = run(capfd, "ask", *model_args(f), "--load", saved, "-n", N, "--quiet", QUESTION)
    assert code == 0, err
    assert again == first


def test_ask_in_a_subprocess(files, vlms, clips, tmp_path):
    """A real process, `python -m statekv ask --json`: exit code 0, one JSON line on stdout (the
    API's answer), statekv's summary left out and nothing alarming on stderr."""
    f = files["qwen3vl"]
    env = dict(os.environ, SKBUILD_EDITABLE_VERBOSE="0")  # an editable install's rebuild stays quiet
    argv = [sys.executable, "-m", "statekv", "ask", *model_args(f), "-n", N, "--video", clips.a, "--json", QUESTION]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    want = vlms["qwen3vl"].ask(clips.a, QUESTION, budget=f.budget, max_tokens=int(N))
    assert json.loads(done.stdout)["answer"] == want
    # A stale editable build may print ninja's warnings; statekv itself prints nothing with --json.
    assert "Traceback" not in done.stderr
    assert not [line for line in done.stderr.splitlines() if line.startswith("statekv")]


# ---- statekv chat ------------------------------------------------------------------------------


def test_chat_reads_piped_stdin(capfd, monkeypatch, files, vlms, clips, tmp_path):
    f = files["internvl"]
    vlm = vlms["internvl"]
    saved = tmp_path / "chat.statekv"
    reference = vlm.video_chat(budget=f.budget)
    reference.add_video(clips.a)
    first = reference.ask(QUESTION, max_tokens=int(N))
    reference.add_video(clips.b)
    second = reference.ask(QUESTION, max_tokens=int(N))

    script = (f"{QUESTION}\n/video {clips.b}\n\n{QUESTION}\n/save {saved}\n/stats\n/bogus\n/help\n/quit\n"
              "never asked\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    code, out, err = run(capfd, "chat", *model_args(f), "--video", clips.a, "-n", N)
    assert code == 0, err
    assert out.startswith(first + "\n" + second + "\n")
    stats, help_text = out[len(first + second) + 2:], "/video FILE [START [END]]"
    assert re.search(r"^frames +7$", stats, re.M) and help_text in stats
    errors = [line for line in err.splitlines() if line.startswith("statekv: error:")]
    assert errors == ["statekv: error: unknown command /bogus (/help lists them)"]
    assert "added 2 frames" in err and "saved the chat (7 frames)" in err and "Traceback" not in err
    assert statekv.load_chat(vlm, saved).ask(QUESTION, max_tokens=int(N)) == second

    # No video at first: errors are reported and the loop goes on; /load continues the saved chat.
    script = f"{QUESTION}\n/video {tmp_path / 'missing.mp4'}\n/save\n/load {saved}\n{QUESTION}\n"  # EOF quits
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    code, out, err = run(capfd, "chat", *model_args(f), "-n", N, "--quiet")
    assert code == 0, err
    assert out == second + "\n"
    assert err.splitlines() == ["statekv: error: the chat has no video yet: add_video() or add_frames() first",
                                f"statekv: error: {tmp_path / 'missing.mp4'}: no such file",
                                "statekv: error: usage: /save FILE"]


# ---- errors ------------------------------------------------------------------------------------


ERROR_CASES = {
    # name: (argv after the model files, expected exit code, text the message contains)
    "missing video": (["--video", "{tmp}/missing.mp4", QUESTION], 1, "missing.mp4: no such file"),
    "not a video": (["--video", "{not_video}", QUESTION], 1, "notes.mp4: not a video file"),
    "no decodable frame": (["--video", "{undecodable}", QUESTION], 1, "no decodable video frame"),
    "budget 0": (["--video", "{a}", "--budget", "0", QUESTION], 2, "--budget"),
    "question too long": (["--video", "{a}", "word " * 600], 1, "512 tokens"),
    "not a saved chat": (["--load", "{a}", QUESTION], 1, "not a GGUF file"),
    "no video or chat": ([QUESTION], 2, "--video"),
    "unwritable save": (["--video", "{a}", "--save", "{tmp}/no/such/dir/x.statekv", QUESTION], 1, "x.statekv"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_ask_errors(capfd, files, clips, tmp_path, case):
    argv, expected_code, match = ERROR_CASES[case]
    paths = dict(tmp=tmp_path, a=clips.a, not_video=clips.not_video, undecodable=clips.undecodable)
    code, out, err = run(capfd, "ask", *model_args(files["internvl"]), "-n", "2",
                         *[a.format(**paths) for a in argv])
    assert_one_error_line(code, err, expected_code, match)
    assert out == ""


def test_model_file_errors(capfd, files, clips, tmp_path):
    ivl, q3 = files["internvl"], files["qwen3vl"]
    code, _, err = run(capfd, "ask", "-m", ivl.text, "--video", clips.a, QUESTION)
    assert_one_error_line(code, err, 2, "--video needs --mmproj")
    code, _, err = run(capfd, "ask", "-m", ivl.text, "--mmproj", q3.mmproj, "--video", clips.a, QUESTION)
    assert_one_error_line(code, err, 1, "not a pair")
    code, _, err = run(capfd, "ask", "-m", tmp_path / "missing.gguf", "--mmproj", ivl.mmproj, "--video", clips.a,
                       QUESTION)
    assert_one_error_line(code, err, 1, "missing.gguf: no such file")
    code, _, err = run(capfd, "chat", *model_args(ivl), "--video", clips.not_video)
    assert_one_error_line(code, err, 1, "not a video file")


def test_interrupt_exits_130(capfd, monkeypatch, files, clips):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(statekv, "load", interrupted)
    code, out, err = run(capfd, "ask", *model_args(files["internvl"]), "--video", clips.a, QUESTION)
    assert code == 130 and err == "statekv: interrupted\n" and out == ""


@pytest.mark.parametrize("command", ["ask", "chat"])
def test_help_shows_an_example(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"statekv {command} -m" in text and "--mmproj" in text and "--budget" in text and "example" in text


def test_existing_commands_still_work(capfd, files):
    code, out, err = run(capfd, "info", "-m", files["internvl"].text, "--json")
    assert code == 0 and json.loads(out)["architecture"] == "qwen2"


# ---- statekv.progress ----------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_bar_on_a_terminal_redraws_one_line():
    clock, term = FakeClock(), FakeTerminal()
    bar = ProgressBar("clip.mp4", stream=term, clock=clock)
    bar.update(0, 10)  # the total is shown before anything is done
    clock.now += 2.0
    bar.update(4, 10)
    clock.now += 0.01  # too soon to redraw
    bar.update(5, 10)
    clock.now += 1.0
    bar.update(10, 10)
    bar.close()
    text = term.getvalue()
    assert text.count("\r\x1b[K") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert text.startswith("\r\x1b[Kclip.mp4 [") and "] 0/10 frames\r" in text and "4/10 frames  2.0 frames/s  ETA 3.0 s" in text
    assert "10/10 frames" in text and "in 3.0 s" in text


def test_progress_bar_elsewhere_prints_a_few_lines_for_long_jobs_only():
    clock, log = FakeClock(), io.StringIO()
    bar = ProgressBar("clip.mp4", stream=log, clock=clock, quiet_seconds=5.0)
    bar.update(3, 100)
    bar.close()
    assert log.getvalue() == ""  # short: nothing
    bar = ProgressBar("clip.mp4", stream=log, clock=clock, quiet_seconds=5.0)
    for done in range(1, 101):
        clock.now += 1.0
        bar.update(done, 100)
    bar.close()
    lines = log.getvalue().splitlines()
    assert 5 <= len(lines) <= 10 and all("\r" not in line for line in lines)
    assert lines[-1] == "clip.mp4: 100/100 frames  1.0 frames/s  in 1:40"
    quiet = ProgressBar("x", stream=FakeTerminal(), enabled=False)
    quiet.update(1, 2)
    quiet.close()
    assert quiet.stream.getvalue() == ""


def test_summary_formatting():
    assert format_summary([("frames", "5"), ("peak memory", "1.0 MiB")]) == "  frames       5\n  peak memory  1.0 MiB"
    assert [format_duration(s) for s in (0.004, 0.25, 12.34, 125, 3725, None)] == \
        ["4.0 ms", "250 ms", "12.3 s", "2:05", "1:02:05", "-"]
    assert [format_bytes(b) for b in (512, 3 * 2**20, 5 * 2**30, None)] == ["512 B", "3.0 MiB", "5.0 GiB", "-"]


def test_argument_errors_are_one_line(capsys):
    """argparse's own errors (unknown flag, non-numeric value, missing option) follow the same
    convention as every other error: one `statekv: error:` line, exit code 2."""
    from statekv.cli import main

    for argv in (["ask", "--bogus"], ["ask", "-m", "x.gguf", "--budget", "many", "q"], ["chat"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("statekv: error:") and "--help" in err[0], (argv, err)
