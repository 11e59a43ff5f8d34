"""The product API (statekv.load / VideoChat) on tiny converted models of both families and
generated videos: its answers are the evaluation API's greedy tokens for the same frames and
prompt (built independently here from the per-family prompt builders, which are checked against
transformers in test_internvl.py / test_qwen3vl.py); questions do not disturb the video; saved
chats answer identically; bad input raises statekv errors."""
from __future__ import annotations

import threading
import types

import numpy as np
import pytest

import statekv
from statekv.families import internvl as ivl
from statekv.families import qwen3vl as q3
from statekv.text.tokenizer import tokenizer_from_gguf
from statekv.video import VideoReader, write_test_video

QUESTION = "What is shown in the video?"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def internvl_files(tmp_path_factory):
    from test_internvl import make_internvl

    from statekv.convert import convert

    root = tmp_path_factory.mktemp("vlm-internvl")
    text, mmproj = root / "internvl-f32.gguf", root / "mmproj-internvl-f32.gguf"
    convert(make_internvl(root / "hf"), text, "f32", mmproj_out=mmproj)
    return types.SimpleNamespace(text=str(text), mmproj=str(mmproj))


@pytest.fixture(scope="module")
def qwen3vl_files(tmp_path_factory, tiny_hf_dir):
    from statekv.convert import convert

    root = tmp_path_factory.mktemp("vlm-qwen3vl")
    text, mmproj = root / "qwen3vl-f32.gguf", root / "mmproj-qwen3vl-f32.gguf"
    convert(tiny_hf_dir("qwen3vl"), text, "f32", mmproj_out=mmproj)
    return types.SimpleNamespace(text=str(text), mmproj=str(mmproj))


@pytest.fixture(scope="module")
def internvl_vlm(internvl_files):
    return statekv.load(internvl_files.text, internvl_files.mmproj, threads=1)


@pytest.fixture(scope="module")
def qwen3vl_vlm(qwen3vl_files):
    return statekv.load(qwen3vl_files.text, qwen3vl_files.mmproj, threads=1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm-clips")
    return types.SimpleNamespace(
        a=write_test_video(root / "a.mp4", 10, 2.0, size=(96, 64)),    # 5 s: 5 frames at 1 fps
        b=write_test_video(root / "b.mkv", 6, 3.0, size=(96, 64)),     # 2 s: 2 frames at 1 fps
        not_video=str((root / "notes.mp4").write_text("not a video") and root / "notes.mp4"),
    )


def _greedy(session, ids, positions, eos):
    out = session.generate(ids, MAX_TOKENS, positions=positions)
    return out[:-1] if out and out[-1] in eos else out


def internvl_reference(vlm, path, mode="statekv", budget=600, system=None):
    """The evaluation API by hand: the reader's frames, preprocessing, encoder, the InternVL
    prompt cut by build_video_prompt, one session step per frame, greedy generation."""
    frames = [f.rgb for f in VideoReader(path, fps=1.0, max_frames=512)]
    info = vlm.model.info()
    mean = [float(x) for x in info["vision.image_mean"].split(",")]
    std = [float(x) for x in info["vision.image_std"].split(",")]
    feats = vlm.model.encode_frames(ivl.preprocess_frames(np.stack(frames), 448, mean, std))
    p = ivl.build_video_prompt(tokenizer_from_gguf(vlm.model.path), len(frames), QUESTION, system=system)
    s = vlm.model.session(mode=mode, budget=budget, window=2)
    s.prefill(p.prefix)
    for ids, rows, f in zip(p.steps, p.visual_rows, feats):
        s.add_step(ids, embeddings=f, embedding_rows=rows)
    return _greedy(s, p.question, None, vlm.end_ids)


@pytest.mark.parametrize("mode", ["statekv", "full", "window"])
def test_internvl_answer_equals_evaluation_api(internvl_vlm, clips, mode):
    chat = internvl_vlm.video_chat(mode=mode, budget=600, window=2, fps=1.0)
    assert chat.add_video(clips.a) == 5
    want = internvl_reference(internvl_vlm, clips.a, mode=mode)
    assert chat.answer_tokens(QUESTION, MAX_TOKENS) == want
    assert chat.ask(QUESTION, max_tokens=MAX_TOKENS) == internvl_vlm.tokenizer.decode(want, skip_special_tokens=True)
    assert "".join(chat.stream(QUESTION, max_tokens=MAX_TOKENS)) == chat.ask(QUESTION, max_tokens=MAX_TOKENS)
    starts = chat.step_token_starts
    assert len(starts) == 5 and starts[1] - starts[0] == len(internvl_vlm.tokenizer.encode(
        "Frame1: <img>" + "<IMG_CONTEXT>" * 256 + "</img>\n", add_special_tokens=False).ids)
    assert list(chat.frames_of_tokens([0, starts[0], starts[1] - 1, starts[4] + 5])) == [-1, 0, 0, 4]
    st = chat.stats()
    assert st["frames"] == 5 and st["steps"] == 5 and st["frame_seconds_median"] > 0


def test_system_prompt_and_one_shot(internvl_vlm, clips):
    want = internvl_reference(internvl_vlm, clips.a, system="Be brief.")
    got = internvl_vlm.ask(clips.a, QUESTION, system="Be brief.", budget=600, max_tokens=MAX_TOKENS)
    assert got == internvl_vlm.tokenizer.decode(want, skip_special_tokens=True)


def test_questions_do_not_disturb_the_video(internvl_vlm, clips):
    """ask, add more video, ask == add everything, ask; frames from arrays continue the numbering."""
    extra = [f.rgb for f in VideoReader(clips.b, fps=1.0)]
    asked = internvl_vlm.video_chat(budget=600)
    asked.add_video(clips.a)
    first = asked.answer_tokens(QUESTION, MAX_TOKENS)
    asked.add_frames(extra)
    quiet = internvl_vlm.video_chat(budget=600)
    quiet.add_video(clips.a)
    quiet.add_frames(iter(extra))  # any iterable
    assert asked.answer_tokens(QUESTION, MAX_TOKENS) == quiet.answer_tokens(QUESTION, MAX_TOKENS)
    assert asked.n_frames == quiet.n_frames == 7
    assert first == internvl_reference(internvl_vlm, clips.a)


def test_save_and_load_chat(internvl_vlm, qwen3vl_vlm, clips, tmp_path):
    chat = internvl_vlm.video_chat(budget=600)
    chat.add_video(clips.a)
    path = tmp_path / "chat.statekv"
    chat.save(path)
    loaded = statekv.load_chat(internvl_vlm, path)
    assert loaded.n_frames == 5 and loaded.session.options()["budget"] == 600
    assert loaded.answer_tokens(QUESTION, MAX_TOKENS) == chat.answer_tokens(QUESTION, MAX_TOKENS)
    # both continue the same way
    chat.add_video(clips.b)
    loaded.add_video(clips.b)
    assert loaded.answer_tokens(QUESTION, MAX_TOKENS) == chat.answer_tokens(QUESTION, MAX_TOKENS)

    data = path.read_bytes()
    (tmp_path / "cut.statekv").write_bytes(data[: len(data) // 2])
    with pytest.raises(statekv.ModelError, match="cut.statekv"):
        statekv.load_chat(internvl_vlm, tmp_path / "cut.statekv")
    with pytest.raises(statekv.ModelError, match="another model"):
        statekv.load_chat(qwen3vl_vlm, path)
    plain = internvl_vlm.model.session(budget=600)
    plain.prefill([1, 2, 3])
    plain.save(tmp_path / "plain.statekv")
    with pytest.raises(statekv.ModelError, match="not a saved chat"):
        statekv.load_chat(internvl_vlm, tmp_path / "plain.statekv")


def qwen3vl_reference(vlm, path, n_frames_expected):
    """Evaluation API for Qwen3-VL: frames paired (last one repeated when odd), timestamps the
    mean of each pair's frame times, the prompt of VideoPromptBuilder, one step per pair."""
    frames = list(VideoReader(path, fps=1.0, max_frames=512))
    assert len(frames) == n_frames_expected
    size = q3.target_size(len(frames), frames[0].rgb.shape[0], frames[0].rgb.shape[1])
    info = vlm.model.info()
    mean = [float(x) for x in info["vision.image_mean"].split(",")]
    std = [float(x) for x in info["vision.image_std"].split(",")]
    px = q3.preprocess_frames([f.rgb for f in frames], size=size, image_mean=mean, image_std=std)
    rows = vlm.model.encode_frames(px)
    ts = [f.timestamp for f in frames]
    ts += ts[-1:] * (len(ts) % 2)
    seconds = [(ts[i] + ts[i + 1]) / 2 for i in range(0, len(ts), 2)]
    p = q3.build_video_prompt(tokenizer_from_gguf(vlm.model.path), seconds, q3.merged_grid(*size), QUESTION)
    s = vlm.model.session(mode="statekv", budget=40)
    s.prefill(p.prefix_ids, positions=p.prefix_positions)
    for step, r in zip(p.steps, rows):
        s.add_step(step.ids, embeddings=r, embedding_rows=step.rows, positions=step.positions)
    return _greedy(s, p.question_ids, p.question_positions, vlm.end_ids)


def test_qwen3vl_answer_equals_evaluation_api_with_odd_frames(qwen3vl_vlm, clips):
    chat = qwen3vl_vlm.video_chat(budget=40, fps=1.0)
    assert chat.add_video(clips.a) == 5  # the fifth frame waits for its pair
    assert chat.session.stats()["steps"] == 2
    assert chat.answer_tokens(QUESTION, MAX_TOKENS) == qwen3vl_reference(qwen3vl_vlm, clips.a, 5)
    assert chat.session.stats()["steps"] == 2  # the padded pair was asked on a branch
    assert chat.step_first_frames == [0, 2]
    want = chat.answer_tokens(QUESTION, MAX_TOKENS)
    assert chat.last_answer_ids == want


def test_qwen3vl_save_with_a_waiting_frame(qwen3vl_vlm, clips, tmp_path):
    """The odd frame is saved with the chat: the loaded chat answers the same and, given the next
    frame, continues exactly as the original."""
    frames = [f.rgb for f in VideoReader(clips.a, fps=1.0)]
    chat = qwen3vl_vlm.video_chat(budget=40)
    chat.add_frames(frames[:3])
    chat.save(tmp_path / "odd.statekv")
    loaded = statekv.load_chat(qwen3vl_vlm, tmp_path / "odd.statekv")
    assert loaded.n_frames == 3 and loaded.session.stats()["steps"] == 1
    assert loaded.answer_tokens(QUESTION, MAX_TOKENS) == chat.answer_tokens(QUESTION, MAX_TOKENS)
    chat.add_frames(frames[3:5])
    loaded.add_frames(frames[3:5])
    assert loaded.answer_tokens(QUESTION, MAX_TOKENS) == chat.answer_tokens(QUESTION, MAX_TOKENS)
    assert loaded.n_frames == chat.n_frames == 5


def test_a_failing_step_leaves_the_chat_consistent(internvl_vlm, clips):
    """A video that overflows the context mid-way: the steps before the failure are in, the chat
    answers and continues as one that was given just those frames."""
    frames = [f.rgb for f in VideoReader(clips.a, fps=1.0)]
    n_ctx = int(internvl_vlm.info["n_ctx_train"])
    chat = internvl_vlm.video_chat(budget=600, expected_length=n_ctx)
    per_frame = 256 + 8
    fits = (n_ctx - 40) // per_frame
    too_many = [frames[i % len(frames)] for i in range(fits + 3)]
    with pytest.raises(ValueError, match="context"):
        chat.add_frames(too_many, batch=2)
    assert chat.n_frames == chat.session.stats()["steps"] == len(chat.step_token_starts) <= fits
    good = internvl_vlm.video_chat(budget=600, expected_length=n_ctx)
    good.add_frames(too_many[:chat.n_frames])
    assert chat.answer_tokens(QUESTION, 4) == good.answer_tokens(QUESTION, 4)


def test_qwen3vl_even_frames_and_stream_growth(qwen3vl_vlm, clips, tmp_path):
    chat = qwen3vl_vlm.video_chat(budget=40, fps=1.0)
    frames = [f.rgb for f in VideoReader(clips.a, fps=1.0)]
    assert chat.add_frames(frames[:3]) == 3
    assert chat.add_frames(frames[3:4], timestamps=[3.0]) == 1  # completes the second pair
    assert chat.session.stats()["steps"] == 2
    chat.save(tmp_path / "q3.statekv")
    loaded = statekv.load_chat(qwen3vl_vlm, tmp_path / "q3.statekv")
    assert loaded.answer_tokens(QUESTION, MAX_TOKENS) == chat.answer_tokens(QUESTION, MAX_TOKENS)


def test_bad_input(internvl_vlm, internvl_files, qwen3vl_files, clips, tmp_path):
    chat = internvl_vlm.video_chat()
    with pytest.raises(ValueError, match="no video yet"):
        chat.ask(QUESTION)
    with pytest.raises(statekv.VideoError, match="notes.mp4"):
        chat.add_video(clips.not_video)
    with pytest.raises(statekv.VideoError, match="no such file"):
        chat.add_video(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="budget"):
        internvl_vlm.video_chat(budget=0)
    with pytest.raises(ValueError, match="window"):
        internvl_vlm.video_chat(mode="window", window=0)
    with pytest.raises(ValueError, match=r"frame 0: expected an \(H, W, 3\) uint8"):
        chat.add_frames([np.zeros((8, 8), np.uint8)])
    with pytest.raises(statekv.ModelError, match="mmproj-qwen3vl"):
        statekv.load(internvl_files.text, qwen3vl_files.mmproj)
    with pytest.raises(ValueError, match="mmproj"):
        statekv.load(internvl_files.text, None)
    chat.add_video(clips.b)  # still usable after the errors
    assert chat.ask(QUESTION, max_tokens=2) is not None


def test_two_chats_on_one_vlm_from_two_threads(qwen3vl_vlm, clips):
    """Two VideoChats sharing one VLM, driven from two threads at once, answer exactly what they
    answer one after the other (they share the model's backend and encoder graph)."""

    def run(path, mode):
        chat = qwen3vl_vlm.video_chat(mode=mode, budget=64, window=1)
        chat.add_video(path)
        return chat.question_logits(QUESTION), chat.answer_tokens(QUESTION, MAX_TOKENS)

    jobs = [(clips.a, "statekv"), (clips.b, "window"), (clips.a, "full")]
    sequential = [run(*job) for job in jobs]
    results, errors = [None] * len(jobs), []

    def body(i):
        try:
            results[i] = run(*jobs[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for (logits, answer), (want_logits, want_answer) in zip(results, sequential):
        np.testing.assert_array_equal(logits, want_logits)
        assert answer == want_answer
    assert not np.array_equal(sequential[0][0], sequential[1][0])  # different videos, different logits


def test_encoder_on_its_own_backend_runs_beside_the_steps(internvl_vlm, internvl_files, clips):
    """overlap_encoder=True gives the encoder its own backend instance (the default only on a GPU;
    forced here on the CPU): encoding frames on one thread while another thread steps a session
    gives exactly what the two give one after the other on the shared backend."""
    frames = np.stack([f.rgb for f in VideoReader(clips.a, fps=1.0)])
    info = internvl_vlm.model.info()
    mean = [float(x) for x in info["vision.image_mean"].split(",")]
    std = [float(x) for x in info["vision.image_std"].split(",")]
    pixels = ivl.preprocess_frames(frames, 448, mean, std)
    assert not internvl_vlm.model.encoder_overlaps  # the CPU's default
    own = statekv.Model(internvl_files.text, mmproj=internvl_files.mmproj, threads=1, overlap_encoder=True)
    assert own.encoder_overlaps
    rows = internvl_vlm.model.encode_frames(pixels)
    np.testing.assert_array_equal(own.encode_frames(pixels), rows)

    p = ivl.build_video_prompt(tokenizer_from_gguf(internvl_files.text), len(frames), QUESTION)

    def index(model):
        s = model.session(mode="statekv", budget=600)
        s.prefill(p.prefix)
        for ids, where, f in zip(p.steps, p.visual_rows, rows):
            s.add_step(ids, embeddings=f, embedding_rows=where)
        return s.question_logits(p.question)

    want = index(internvl_vlm.model)
    encoded, errors = [], []

    def encode_meanwhile():
        try:
            for _ in range(3):
                encoded.append(own.encode_frames(pixels))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    t = threading.Thread(target=encode_meanwhile)
    t.start()
    got = index(own)
    t.join(300)
    assert not errors, errors
    np.testing.assert_array_equal(got, want)
    assert len(encoded) == 3 and all(np.array_equal(e, rows) for e in encoded)


@pytest.fixture(scope="module")
def overlapping(internvl_files, qwen3vl_files):
    """The same VLMs with the encoder on its own backend instance (forced on the CPU): their
    add_video encodes the next batch in a worker thread while the current batch's steps run."""
    vlms = {"internvl": statekv.load(internvl_files.text, internvl_files.mmproj, threads=1, overlap_encoder=True),
            "qwen3vl": statekv.load(qwen3vl_files.text, qwen3vl_files.mmproj, threads=1, overlap_encoder=True)}
    assert all(v.model.encoder_overlaps for v in vlms.values())
    return vlms


def _encoder_threads(vlm):
    """Record the thread of every encoder call of ``vlm``."""
    names, encode = [], vlm.model.encode_frames

    def recorded(pixels):
        names.append(threading.current_thread().name)
        return encode(pixels)

    vlm.model.encode_frames = recorded
    return names


@pytest.mark.parametrize("family,batch,budget,encodes", [("internvl", 2, 600, 3), ("qwen3vl", 3, 40, 2)])
def test_pipelined_add_video_equals_sequential(overlapping, internvl_vlm, qwen3vl_vlm, clips, family, batch, budget,
                                               encodes):
    """Encoding batch k + 1 while batch k's steps run gives the session exactly what the
    sequential order gives (5 frames: batches of 2 for InternVL; of 3 for Qwen3-VL, so that a
    frame waits for its pair across batches), for a chat and a second chat fed the same frames."""
    vlm, plain = overlapping[family], {"internvl": internvl_vlm, "qwen3vl": qwen3vl_vlm}[family]
    threads = _encoder_threads(vlm)
    try:
        chat, other = vlm.video_chat(budget=budget, fps=1.0), vlm.video_chat(mode="full", fps=1.0)
        assert chat.add_video(clips.a, batch=batch, others=[other]) == 5
    finally:
        del vlm.model.encode_frames
    assert threads and all(t.startswith("statekv-encode") for t in threads), threads
    assert len(threads) == encodes  # one per batch that makes a step (Qwen3-VL: 2 + 1 waiting, then 2 + 1)
    want, want_other = plain.video_chat(budget=budget, fps=1.0), plain.video_chat(mode="full", fps=1.0)
    want.add_video(clips.a, batch=batch, others=[want_other])
    for got, ref in ((chat, want), (other, want_other)):
        assert got.n_frames == ref.n_frames and got.step_first_frames == ref.step_first_frames
        np.testing.assert_array_equal(got.question_logits(QUESTION), ref.question_logits(QUESTION))
        for layer in range(int(plain.info["n_layer"])):
            np.testing.assert_array_equal(got.session.carried(layer), ref.session.carried(layer))
    chat.add_video(clips.b, batch=batch)   # a second video continues the timeline, pipelined too
    want.add_video(clips.b, batch=batch)
    assert chat.answer_tokens(QUESTION, MAX_TOKENS) == want.answer_tokens(QUESTION, MAX_TOKENS)


def test_pipelined_add_video_stops_consistently(overlapping, internvl_vlm, tmp_path):
    """A video that overflows the context: the pipelined chat stops where the sequential one does
    (its early encoding of the batch after the failure is dropped), consistent and answering alike."""
    vlm = overlapping["internvl"]
    n_ctx = int(vlm.info["n_ctx_train"])
    fits = (n_ctx - 40) // (256 + 8)
    long = write_test_video(tmp_path / "long.mkv", 2 * (fits + 5), 2.0, size=(96, 64))
    chats = [v.video_chat(budget=600, expected_length=n_ctx) for v in (vlm, internvl_vlm)]
    for chat in chats:
        with pytest.raises(ValueError, match="context"):
            chat.add_video(long, batch=2)
    got, want = chats
    assert got.n_frames == want.n_frames == got.session.stats()["steps"] <= fits
    assert got.answer_tokens(QUESTION, 4) == want.answer_tokens(QUESTION, 4)
