"""`statekv eval video` and what it is made of, on tiny random-weight VLMs and synthetic videos:
the published row layouts (VideoMME, MLVU, OVO-Bench, generic, --columns), the prompts and answer
parsing of lmms-eval's tasks (expected strings transcribed here from lmms-eval's task code), the
option-likelihood scorer against logits computed independently through the evaluation API, one
decode + encode pass shared by several chats (equal to each chat indexed alone), resume, bad rows,
CLI errors, and the accuracy table against a direct count and an independent Wilson interval.

The accuracies of random weights mean nothing; only the plumbing is checked.
"""
from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest

import statekv
from statekv.cli import main
from statekv.eval import multiple_choice as mc
from statekv.eval import video as ev
from statekv.eval.stats import accuracy, wilson_interval
from statekv.families import internvl as ivl
from statekv.text.tokenizer import tokenizer_from_gguf
from statekv.video import VideoReader, write_test_video
from test_vlm import internvl_files, internvl_vlm, qwen3vl_files, qwen3vl_vlm  # noqa: F401 (fixtures)

OPTIONS4 = ["a red square", "a blue circle", "a green line", "nothing"]


def write_json(path, rows):
    path.write_text(json.dumps(rows))
    return str(path)


def touch(folder, *names):
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def load(path, video_dir, fmt=None, columns=None):
    rows = mc.read_rows(path)
    f = mc.FORMATS[fmt] if fmt else mc.detect_format(rows, str(path))
    f = mc.with_columns(f, mc.parse_columns(columns))
    return (f, *mc.questions(rows, f, video_dir, str(path)))


# ------------------------------------------------------------------------------ row layouts
def test_videomme_rows(tmp_path):
    touch(tmp_path, "fFjv93ACGo8.mp4", "x2.mkv")
    rows = [{"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
             "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
             "task_type": "Counting Problem", "question": "When demonstrating the Germany modern Christmas tree is "
             "initially decorated with apples, candles and berries, which kind of the decoration has the largest "
             "number?", "options": ["A. Apples.", "B. Candles.", "C. Berries.", "D. The three kinds are of the same "
                                    "number."], "answer": "C"},
            {"videoID": "x2", "question_id": "002-1", "task_type": "OCR Problems", "question": "Q?",
             "options": ["A. 1", "B. 2", "C. 3", "D. 4"], "answer": "A", "duration": "short"}]
    fmt, qs, bad = load(write_json(tmp_path / "videomme.json", rows), tmp_path)
    assert fmt.name == "videomme" and fmt.style == "videomme" and not bad
    q = qs[0]
    assert q.video == str(tmp_path / "fFjv93ACGo8.mp4") and q.id == "001-1" and q.category == "Counting Problem"
    assert q.options == ("Apples.", "Candles.", "Berries.", "The three kinds are of the same number.")
    assert q.answer == "C" and q.question == rows[0]["question"] and q.end is None
    assert qs[1].video == str(tmp_path / "x2.mkv")  # lmms-eval's .mp4 / .MP4 / .mkv look-up


def test_mlvu_rows_both_releases(tmp_path):
    touch(tmp_path, "needle_32.mp4", "movie101_66.mp4")
    dev = {"video_name": "needle_32.mp4", "question": "What does the hand coming out of the computer do?\n"
           "(A) Delivers a product\n(B) Shakes hands with a person\n(C) Takes a photo\n(D) Points at the person",
           "candidates": ["Delivers a product", "Shakes hands with a person", "Takes a photo", "Points at the person"],
           "answer": "B", "task_type": "needle"}
    (tmp_path / "mlvu_dev.jsonl").write_text(json.dumps(dev) + "\n")
    fmt, qs, bad = load(tmp_path / "mlvu_dev.jsonl", tmp_path)
    assert fmt.name == "mlvu" and not bad
    q = qs[0]
    assert q.question == "What does the hand coming out of the computer do?"  # its option lines are the options
    assert q.options == tuple(dev["candidates"]) and q.answer == "B" and q.category == "needle"
    assert mc.render("mlvu", q) == "\n" + dev["question"] + "\nOnly give the best option.\n\nBest option: ("

    release = [{"video": "movie101_66.mp4", "duration": 246, "question": "What color is the main male character "
                "in the video?", "candidates": ["Yellow", "Red", "Green", "Blue"], "answer": "Green",
                "question_type": "plotQA"}]
    # the MLVU release writes one object per line in .json files: both layouts are read
    (tmp_path / "1_plotQA.json").write_text("\n".join(json.dumps(r) for r in release) + "\n")
    fmt, qs, bad = load(tmp_path / "1_plotQA.json", tmp_path)
    assert fmt.name == "mlvu" and not bad
    assert qs[0].answer == "C" and qs[0].category == "plotQA" and qs[0].video == str(tmp_path / "movie101_66.mp4")


def test_ovobench_rows(tmp_path):
    touch(tmp_path, "Ego4D/clips/ec4a3ba3.mp4")
    rows = [{"id": 0, "task": "EPM", "video": "Ego4D/clips/ec4a3ba3.mp4", "realtime": 215,
             "question": "Who did I communicate to  when chopping egg plants?", "answer": "a person with blue shirt",
             "options": ["a person with brown shirt", "a person with green shirt", "a person with blue shirt",
                         "a person with white shirt"], "gt": 2},
            {"id": 1, "task": "REC", "video": "Ego4D/clips/ec4a3ba3.mp4", "activity": "jump",
             "test_info": [{"realtime": 3, "count": 1}]}]  # a forward task: not multiple choice
    fmt, qs, bad = load(write_json(tmp_path / "ovo.json", rows), tmp_path)
    assert fmt.name == "ovobench" and fmt.style == "ovobench"
    q = qs[0]
    assert (q.id, q.category, q.answer, q.end, q.start) == ("0", "EPM", "C", 215.0, None)
    assert q.video == str(tmp_path / "Ego4D/clips/ec4a3ba3.mp4") and q.question == rows[0]["question"]
    assert [(s.row, s.kind) for s in bad] == [(1, "no question")]
    # pre-cut clips (as lmms-eval's OVO task reads them): the end column is not read
    _, qs, _ = load(tmp_path / "ovo.json", tmp_path, columns="end=")
    assert qs[0].end is None


def test_generic_csv_and_column_overrides(tmp_path):
    touch(tmp_path, "clip.mp4", "other.webm")
    (tmp_path / "mine.csv").write_text(
        'clip,q,choices,correct,start\n'
        'clip.mp4,What is shown?,"[""a cat"", ""a dog""]",a dog,1.5\n'
        'other,Which?,"(A) one\n(B) two\n(C) three",(C) three,\n')
    fmt, qs, bad = load(tmp_path / "mine.csv", tmp_path,
                        columns="video=clip,question=q,options=choices,answer=correct")
    assert fmt.name == "generic" and not bad
    assert (qs[0].options, qs[0].answer, qs[0].start) == (("a cat", "a dog"), "B", 1.5)
    assert (qs[1].options, qs[1].answer, qs[1].video) == (("one", "two", "three"), "C", str(tmp_path / "other.webm"))
    keyed = write_json(tmp_path / "keyed.json", [{"video": "clip.mp4", "question": "Q?",
                                                  "options": {"A": "yes", "B": "no"}, "answer": 1}])
    _, qs, _ = load(keyed, tmp_path)
    assert (qs[0].options, qs[0].answer) == (("yes", "no"), "B")  # an integer answer is an index from 0
    with pytest.raises(ValueError, match="FIELD=COLUMN"):
        mc.parse_columns("clip")
    with pytest.raises(ValueError, match="video field is required"):
        mc.parse_columns("video=")


def test_bad_rows_are_skipped_with_a_reason(tmp_path):
    touch(tmp_path, "v.mp4")
    base = {"video": "v.mp4", "question": "Q?", "options": OPTIONS4, "answer": "A"}
    rows = [base, dict(base, video="gone.mp4"), dict(base, options=[]), dict(base, options=None),
            dict(base, answer="E"), dict(base, answer=7), dict(base, answer="a purple thing"), dict(base, answer=None)]
    _, qs, bad = load(write_json(tmp_path / "rows.json", rows), tmp_path)
    assert [q.row for q in qs] == [0]
    assert [(s.row, s.kind) for s in bad] == [
        (1, "missing video file"), (2, "no options"), (3, "no options"), (4, "answer not among the options"),
        (5, "answer not among the options"), (6, "answer not among the options"), (7, "no answer")]
    assert "gone.mp4" in bad[0].detail and "(A-D)" in bad[3].detail


def test_bad_data_files_are_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "broken.json").write_text('[{"video": "a.mp4",\n "question": }]')
    with pytest.raises(mc.DataError, match=r"broken.json: not valid JSON .* line 2"):
        mc.read_rows(tmp_path / "broken.json")
    (tmp_path / "lines.jsonl").write_text('{"video": "a"}\nnot json\n')
    with pytest.raises(mc.DataError, match=r"lines.jsonl: line 2 is not valid JSON"):
        mc.read_rows(tmp_path / "lines.jsonl")
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(mc.DataError, match=r"rows.txt: unknown data file type '.txt'"):
        mc.read_rows(tmp_path / "rows.txt")
    path = write_json(tmp_path / "nocol.json", [{"videoID": "a", "options": OPTIONS4, "question": "Q?"}])
    rows = mc.read_rows(path)
    with pytest.raises(mc.DataError, match=r"nocol.json: no column 'answer' for the answer of the videomme format"):
        mc.questions(rows, mc.detect_format(rows, path), tmp_path, path)
    (tmp_path / "rows.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(mc.DataError, match=r"rows.parquet: reading parquet needs pyarrow: pip install pyarrow"):
        mc.read_rows(tmp_path / "rows.parquet")


def test_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")  # the `eval` and `test` extras install it
    import pyarrow.parquet as pq

    touch(tmp_path, "vid1.mp4")
    table = pa.table({"videoID": ["vid1"], "question_id": ["001-1"], "task_type": ["OCR Problems"],
                      "question": ["Q?"], "options": [["A. w", "B. x", "C. y", "D. z"]], "answer": ["D"]})
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet")
    fmt, qs, bad = load(tmp_path / "test-00000-of-00001.parquet", tmp_path)
    assert fmt.name == "videomme" and not bad and qs[0].options == ("w", "x", "y", "z") and qs[0].answer == "D"
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(mc.DataError, match="bad.parquet: not a readable parquet file"):
        mc.read_rows(tmp_path / "bad.parquet")


# ------------------------------------------------------------------------------ asking and reading
def question(n=4, answer="B"):
    return mc.Question(0, None, "v.mp4", "What is shown?", tuple(OPTIONS4[:n]), answer)


def test_prompt_text_of_each_style():
    q = question()
    assert mc.render("videomme", q) == (
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\n"
        "What is shown?\nA. a red square\nB. a blue circle\nC. a green line\nD. nothing\nThe best answer is:")
    assert mc.render("mlvu", q) == ("\nWhat is shown?\n(A) a red square\n(B) a blue circle\n(C) a green line\n"
                                    "(D) nothing\nOnly give the best option.\n\nBest option: (")
    assert mc.render("ovobench", q) == (
        "\nQuestion: What is shown?\nOptions:\nA. a red square; B. a blue circle; C. a green line; D. nothing;\n\n"
        "Respond only with the letter corresponding to your chosen option (e.g., A, B, C). \n"
        "Do not include any additional text or explanation in your response.\n")
    assert (mc.max_tokens("videomme"), mc.max_tokens("mlvu"), mc.max_tokens("ovobench")) == (16, 16, 128)


@pytest.mark.parametrize("style, text, letter, correct", [
    ("videomme", "B", "B", True),
    ("videomme", "The best answer is: B.", "B", True),
    ("videomme", "The answer is (C) a green line", "C", False),
    ("videomme", "  D", "D", False),
    ("videomme", "Best option: A", "B", True),           # lmms-eval keeps "Best option:" and reads its B
    ("videomme", "the options shown are all wrong and none of them is right at all", None, False),
    ("videomme", "E", None, False),                      # not one of this row's letters
    ("mlvu", "B) a blue circle", "B", True),
    ("mlvu", "B", "B", True),
    ("mlvu", "a blue circle", None, False),
    ("mlvu", ") B", None, False),
    ("ovobench", "B", "B", True),
    ("ovobench", "I think B.", "B", True),                # "I" is not a letter of four options
    ("ovobench", "A or B", "A", True),                   # correct when the right letter occurs anywhere
    ("ovobench", "none", None, False),
])
def test_letter_parsing(style, text, letter, correct):
    assert mc.parse(style, text, question()) == mc.Parsed(letter, correct)


def test_likelihood_choice_is_the_most_likely_option_letter():
    ids = {k: 10 + i for i, k in enumerate(mc.LETTERS)}
    logits = np.zeros(50, np.float32)
    logits[[10, 11, 12, 13, 14]] = [1.0, 3.0, 2.0, 0.5, 9.0]  # E is likelier but not an option
    letter, logprobs = mc.likelihood_choice(logits, question(), ids)
    z = math.log(45 + sum(math.exp(v) for v in [1.0, 3.0, 2.0, 0.5, 9.0]))
    assert letter == "B" and list(logprobs) == ["A", "B", "C", "D"]
    assert logprobs["B"] == pytest.approx(3.0 - z, abs=1e-12)
    assert mc.likelihood_choice(logits, question(), dict(ids, C=None)) is None


# ------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize("k, n", [(0, 10), (5, 10), (45, 100), (7, 7), (1, 3)])
def test_wilson_interval_solves_the_score_equation(k, n):
    """The interval's ends are the p with |p_hat - p| = z sqrt(p (1 - p) / n): the roots of a
    quadratic, found here with numpy's polynomial solver."""
    z, ph = 1.959963984540054, k / n
    # (ph - p)^2 n = z^2 p (1 - p)  <=>  (n + z^2) p^2 - (2 n ph + z^2) p + n ph^2 = 0
    roots = sorted(np.roots([n + z * z, -(2 * n * ph + z * z), n * ph * ph]).real)
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(max(0.0, roots[0]), abs=1e-9) and hi == pytest.approx(min(1.0, roots[1]), abs=1e-9)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # the textbook value


# ------------------------------------------------------------------------------ the model
@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-clips")
    return types.SimpleNamespace(root=root, a=write_test_video(root / "a.mp4", 10, 2.0, size=(96, 64)),
                                 b=write_test_video(root / "b.mp4", 6, 2.0, size=(96, 64)))


def _with_counted_encoder(monkeypatch):
    calls = []
    original = statekv.Model.encode_frames

    def counted(self, pixels):
        calls.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(statekv.Model, "encode_frames", counted)
    return calls


@pytest.mark.parametrize("family", ["internvl", "qwen3vl"])
def test_shared_encoding_equals_chats_indexed_alone(family, request, clips, monkeypatch):
    """Three chats fed by one decode + encode pass answer exactly as each indexed alone (Qwen3-VL:
    3 frames, so the third waits for its pair in every chat)."""
    vlm = request.getfixturevalue(f"{family}_vlm")
    budget = 600 if family == "internvl" else 40
    make = [dict(mode="full"), dict(mode="statekv", budget=budget), dict(mode="window", window=1)]
    calls = _with_counted_encoder(monkeypatch)
    shared = [vlm.video_chat(**m) for m in make]
    assert shared[0].add_video(clips.b, batch=2, others=shared[1:]) == 3
    shared_calls = list(calls)
    calls.clear()
    alone = [vlm.video_chat(**m) for m in make]
    for chat in alone:
        chat.add_video(clips.b, batch=2)
    assert sum(shared_calls) == sum(calls) // 3  # one pass for three chats
    question_text = mc.render("videomme", question())
    for s, a in zip(shared, alone):
        assert np.array_equal(s.question_logits(question_text), a.question_logits(question_text))
        assert (s.n_frames, s.step_token_starts, s.step_first_frames) == (a.n_frames, a.step_token_starts,
                                                                          a.step_first_frames)
        assert s.session.stats()["tokens_carried"] == a.session.stats()["tokens_carried"]
    # a second video continues every shared chat the same way
    shared[0].add_video(clips.b, others=shared[1:])
    alone[1].add_video(clips.b)
    assert np.array_equal(shared[1].question_logits(question_text), alone[1].question_logits(question_text))
    with pytest.raises(ValueError, match="same point of the same video"):
        vlm.video_chat().add_video(clips.a, others=[shared[0]])
    with pytest.raises(ValueError, match="not the chat itself"):
        shared[0].add_video(clips.b, others=[shared[0]])


def _cli(*argv):
    return main([str(a) for a in argv])


def _model_args(files):
    return ["-m", files.text, "--mmproj", files.mmproj, "-t", "1", "-q"]


def _records(path):
    lines = open(path).read().splitlines()
    return [json.loads(x) for x in lines[1:]]


def test_likelihood_and_answer_against_the_evaluation_api(internvl_files, clips, tmp_path):
    """One statekv row through the CLI; the same video and prompt by hand with the evaluation
    API (the family's prompt builder, the encoder, one session step per frame): the record's
    option log-probabilities are a log-softmax of those logits, its prediction the greedy answer."""
    q_text, options = "What is shown in the video?", ["red", "blue", "green", "grey", "white"]
    data = write_json(tmp_path / "one.json", [{"video": "a.mp4", "question": q_text, "options": options,
                                               "answer": "B"}])
    out = tmp_path / "one.jsonl"
    assert _cli("eval", "video", "--data", data, "--video-dir", clips.root, *_model_args(internvl_files),
                "--modes", "statekv:B=600", "--max-frames", 3, "-n", 6, "--out", out) == 0
    (record,) = _records(out)

    vlm = statekv.load(internvl_files.text, internvl_files.mmproj, threads=1)
    frames = [f.rgb for f in VideoReader(clips.a, fps=1.0, max_frames=3)]
    info = vlm.model.info()
    mean, std = ([float(x) for x in info[k].split(",")] for k in ("vision.image_mean", "vision.image_std"))
    feats = vlm.model.encode_frames(ivl.preprocess_frames(np.stack(frames), 448, mean, std))
    tok = tokenizer_from_gguf(internvl_files.text)
    asked = ("Select the best answer to the following multiple-choice question based on the video and the subtitles."
             " Respond with only the letter (A, B, C, or D) of the correct option.\n" + q_text +
             "\nA. red\nB. blue\nC. green\nD. grey\nE. white\nThe best answer is:")
    p = ivl.build_video_prompt(tok, len(frames), asked)
    s = vlm.model.session(mode="statekv", budget=600)
    s.prefill(p.prefix)
    for ids, rows, f in zip(p.steps, p.visual_rows, feats):
        s.add_step(ids, embeddings=f, embedding_rows=rows)
    import torch

    logprobs = torch.log_softmax(torch.from_numpy(s.question_logits(p.question)[-1]).double(), dim=0)
    want = {k: float(logprobs[tok.token_to_id(k)]) for k in "ABCDE"}
    assert record["likelihood"]["logprobs"] == pytest.approx(want, abs=1e-9)
    assert record["likelihood"]["letter"] == max(want, key=want.get)
    assert record["likelihood"]["correct"] == (record["likelihood"]["letter"] == "B")
    greedy = s.generate(p.question, 6)
    greedy = greedy[:-1] if greedy and greedy[-1] in vlm.end_ids else greedy
    assert record["prediction"] == tok.decode(greedy, skip_special_tokens=True)
    parsed = mc.parse("videomme", record["prediction"], mc.Question(0, None, "", q_text, tuple(options), "B"))
    assert (record["letter"], record["correct"]) == (parsed.letter, parsed.correct)
    assert record["frames"] == 3 and record["mode"] == "statekv:B=600"


def test_cli_runs_resumes_and_counts(internvl_files, clips, tmp_path, monkeypatch, capsys):
    (clips.root / "notes.mp4").exists() or (clips.root / "notes.mp4").write_text("not a video")
    rows = [{"videoID": "a", "question_id": f"a-{i}", "task_type": "Counting Problem", "question": f"Question {i}?",
             "options": [f"{k}. option {k}" for k in "ABCD"], "answer": "ABCD"[i]} for i in range(3)]
    rows.append({"videoID": "b", "question_id": "b-0", "task_type": "OCR Problems", "question": "Which?",
                 "options": ["A. x", "B. y", "C. z", "D. w"], "answer": "D"})
    rows += [{"videoID": "gone", "question_id": "g", "question": "?", "options": ["A. x", "B. y"], "answer": "A"},
             {"videoID": "a", "question_id": "n", "question": "?", "options": [], "answer": "A"},
             {"videoID": "a", "question_id": "e", "question": "?", "options": ["A. x", "B. y"], "answer": "E"},
             {"videoID": "notes", "question_id": "u", "question": "?", "options": ["A. x", "B. y"], "answer": "A"}]
    data = write_json(tmp_path / "videomme.json", rows)
    out = tmp_path / "res.jsonl"
    common = ["eval", "video", "--data", data, "--video-dir", clips.root, *_model_args(internvl_files),
              "--modes", "full,window:R=1,statekv:B=300", "--max-frames", 3, "-n", 4, "--out", out]
    calls = _with_counted_encoder(monkeypatch)
    assert _cli(*common, "--limit", 2) == 0
    assert calls == [3]  # video a: one batch of 3 frames for the three modes
    first = open(out).read().splitlines()
    assert len(first) == 1 + 2 * 3
    capsys.readouterr()

    calls.clear()
    assert _cli(*common) == 0
    printed = capsys.readouterr().out
    assert calls == [3, 3]  # a again (for row 2 only), then b; rows 0 and 1 are not asked again
    lines = open(out).read().splitlines()
    assert lines[:len(first)] == first
    records = _records(out)
    assert sorted((r["row"], r["mode"]) for r in records) == sorted(
        (row, m) for row in range(4) for m in ("full", "window:R=1", "statekv:B=300"))

    summary = json.loads(open(str(out) + ".summary.json").read())
    assert (summary["rows"], summary["asked"], summary["skipped"]["count"]) == (8, 4, 4)
    assert summary["skipped"]["by_reason"] == {"missing video file": 1, "no options": 1,
                                               "answer not among the options": 1, "unreadable video": 1}
    for mode in ("full", "window:R=1", "statekv:B=300"):
        mine = [r for r in records if r["mode"] == mode]
        for scorer, correct in (("generation", [r["correct"] for r in mine]),
                                ("likelihood", [r["likelihood"]["correct"] for r in mine])):
            got = summary["modes"][mode][scorer]
            k = sum(correct)
            assert (got["n"], got["correct"]) == (4, k)
            z, ph = 1.959963984540054, k / 4
            roots = sorted(np.roots([4 + z * z, -(8 * ph + z * z), 4 * ph * ph]).real)
            assert got["ci95"] == pytest.approx([max(0.0, roots[0]), min(1.0, roots[1])], abs=1e-9)
            assert got == accuracy(correct)
        line = next(x for x in printed.splitlines() if x.startswith(mode + " "))
        assert f"{summary['modes'][mode]['generation']['correct']}/4" in line
        by_category = summary["modes"][mode]["by_category"]
        assert sorted(by_category) == ["Counting Problem", "OCR Problems"]
        for category, n in (("Counting Problem", 3), ("OCR Problems", 1)):
            theirs = [r for r in mine if r["row"] < 4 and rows[r["row"]]["task_type"] == category]
            assert by_category[category]["generation"] == accuracy(r["correct"] for r in theirs)
            assert by_category[category]["likelihood"] == accuracy(r["likelihood"]["correct"] for r in theirs)
            assert by_category[category]["generation"]["n"] == n
    counting = next(x for x in printed.splitlines() if x.startswith("Counting Problem "))
    assert counting.count("/3") == 3
    assert "8 rows: 4 asked, 4 skipped" in printed and "row 4 (g)" in printed

    # the same --out with other options: refused, naming the option
    assert _cli(*common[:-2], "--fps", 2, "--out", out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("statekv: error: ") and "fps: 1.0 there, 2.0 now" in err[0]


def test_results_file_drops_a_line_cut_short(tmp_path):
    path = tmp_path / "r.jsonl"
    options = {"fps": 1.0}
    results = ev.Results(str(path), options)
    results.add({"row": 0, "mode": "full", "correct": True})
    with open(path, "a") as f:
        f.write('{"row": 1, "mode": "fu')  # interrupted mid-write
    again = ev.Results(str(path), options)
    assert again.done == {(0, "full")} and open(path).read().endswith('"correct": true}\n')
    (tmp_path / "other.jsonl").write_text("hello\n")
    with pytest.raises(ValueError, match="not a results file"):
        ev.Results(str(tmp_path / "other.jsonl"), options)


def test_modes_syntax():
    modes = ev.parse_modes("full,window:R=4,statekv:B=1024,statekv", budget=512, window=16)
    assert [(m.label, m.mode, m.budget, m.window) for m in modes] == [
        ("full", "full", 512, 16), ("window:R=4", "window", 512, 4), ("statekv:B=1024", "statekv", 1024, 16),
        ("statekv:B=512", "statekv", 512, 16)]
    for bad in ("full,full", "statekv:R=4", "window:R=0", "fast", "statekv:B=x", "full:B=3"):
        with pytest.raises(ValueError, match="--modes"):
            ev.parse_modes(bad)


def test_cli_errors(tmp_path, capsys):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    data = write_json(tmp_path / "d.json", [{"videoID": "a", "options": OPTIONS4, "question": "Q?"}])
    base = ["eval", "video", "-m", model, "--mmproj", model, "--out", tmp_path / "o.jsonl"]
    cases = [
        (["--data", tmp_path / "missing.json"], 1, "missing.json: no such file (data file)"),
        (["--data", data, "--modes", "full,fast"], 2, "--modes: unknown mode 'fast'"),
        (["--data", data, "--columns", "video"], 2, "--columns: 'video' is not FIELD=COLUMN"),
        (["--data", data, "--max-frames", 0], 2, "--max-frames must be at least 1"),
        (["--data", data], 1, "d.json: no column 'answer' for the answer of the videomme format"),
        (["--data", data, "--video-dir", tmp_path / "nowhere"], 1, "nowhere: no such folder"),
    ]
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe\x00bad")
    cases.append((["--data", tmp_path / "bad.csv"], 1, "bad.csv: not UTF-8 text"))
    for extra, code, message in cases:
        assert _cli(*base, *extra) == code, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("statekv: error: ") and message in err[0], (extra, err)


def test_cli_with_only_bad_rows_counts_them_without_loading_the_model(tmp_path, capsys):
    model = tmp_path / "not-a-model.gguf"  # never loaded: nothing to ask
    model.write_bytes(b"x")
    rows = [{"video": "gone.mp4", "question": "Q?", "options": OPTIONS4, "answer": "A"},
            {"video": "gone.mp4", "question": "Q?", "options": OPTIONS4[:1], "answer": "A"}]
    data = write_json(tmp_path / "rows.json", rows)
    out = tmp_path / "o.jsonl"
    assert _cli("eval", "video", "--data", data, "-m", model, "--mmproj", model, "--out", out, "-q") == 0
    summary = json.loads((tmp_path / "o.jsonl.summary.json").read_text())
    assert summary["skipped"]["by_reason"] == {"missing video file": 1, "no options": 1}
    assert [m["questions"] for m in summary["modes"].values()] == [0, 0, 0]
    assert "2 rows: 0 asked, 2 skipped: 1 missing video file, 1 no options" in capsys.readouterr().out
