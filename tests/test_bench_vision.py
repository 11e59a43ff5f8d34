"""`statekv bench frames` with a vision encoder, on tiny random-weight pairs.

The pairs are tiny text models from ``make_model`` (width 32) with tiny random mmproj files of
each family: an InternVL tower at image_size 56 (a 4 x 4 patch grid, 2 x 2 = 4 visual rows after
the pixel shuffle) and a Qwen3-VL tower (a 96 x 64 source frame gives a 2 x 3 merged grid: 6
rows). The bench runs its real code path (one process per mode); the assertions check what the
report says against what the encoder and the session actually did, never timings' sizes.
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import pytest

import statekv
from statekv.bench import frames, vision
from statekv.bench.make_model import make_model
from statekv.families.internvl import layout as internvl_layout
from statekv.families.qwen3vl import layout as qwen3vl_layout

TINY_INTERNVL_LLM = dict(name="tiny-internvl-llm", arch="qwen2", hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8,
                         ffn=64, vocab=151674, tied=False, rope_theta=1e6, context_length=4096,
                         added_tokens="internvl3")
TINY_QWEN3VL_LLM = dict(name="tiny-qwen3vl-llm", arch="qwen3vl", hidden=32, layers=3, heads=2, kv_heads=1,
                        head_dim=16, ffn=64, vocab=151936, tied=True, rope_theta=5e6, context_length=262144,
                        explicit_head_dim=True, mrope_sections=(4, 2, 2, 0), n_deepstack=2)
TINY_INTERNVIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=56)
INTERNVL_ROWS = (56 // 14 // 2) ** 2
QWEN3VL_SOURCE = "96x64"  # width x height: frames of 64 x 96, merged grid 2 x 3
QWEN3VL_GRID = (2, 3)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Paths of the tiny text models (with the Qwen tokenizer, to check the step layout against
    the real prompt builders) and their mmproj files, plus a 48-wide InternVL mmproj."""
    from statekv.families.internvl.random_model import make_random_internvl_mmproj
    from statekv.families.qwen3vl.convert import VisionHParams
    from statekv.families.qwen3vl.random_model import make_random_qwen3vl_mmproj

    d = tmp_path_factory.mktemp("bench-vision")
    out = {
        "internvl_text": d / "internvl-text.gguf", "internvl_mmproj": d / "internvl-mmproj.gguf",
        "internvl_mmproj_48": d / "internvl-mmproj-48.gguf",
        "qwen3vl_text": d / "qwen3vl-text.gguf", "qwen3vl_mmproj": d / "qwen3vl-mmproj.gguf",
    }
    make_model(TINY_INTERNVL_LLM, "f32", out["internvl_text"])
    make_model(TINY_QWEN3VL_LLM, "f32", out["qwen3vl_text"])
    make_random_internvl_mmproj(out["internvl_mmproj"], TINY_INTERNVIT, n_embd_out=32, qtype="f32")
    make_random_internvl_mmproj(out["internvl_mmproj_48"], TINY_INTERNVIT, n_embd_out=48, qtype="f32")
    tower = VisionHParams(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                          num_position_embeddings=16, deepstack_visual_indexes=(0, 2))
    make_random_qwen3vl_mmproj(out["qwen3vl_mmproj"], tower, "f32")
    return {k: str(v) for k, v in out.items()}


def _args(*argv):
    p = argparse.ArgumentParser()
    frames.add_arguments(p)
    return p.parse_args([str(a) for a in argv])


def bench(tmp_path, *argv) -> dict:
    out = tmp_path / "bench.json"
    assert frames.run(_args(*argv, "-t", 1, "--json", out, "--plot", "")) == 0
    return json.loads(out.read_text())


def _check_vision_timings(report: dict, frames_per_step: int) -> None:
    for mode, r in report["modes"].items():
        calls = r["encoder_seconds_per_call"]
        assert len(calls) == report["vision"]["encode_repetitions"] and all(t > 0 for t in calls), mode
        per_frame = statistics.median(calls) / report["vision"]["frames_per_encode"]
        assert r["encoder_seconds_per_frame"] == pytest.approx(per_frame) and per_frame > 0
        steps = r["step_seconds"]
        assert all(t > 0 for t in steps)
        assert r["end_to_end_seconds_per_frame"] == pytest.approx([per_frame + t / frames_per_step for t in steps])
        sm = r["summary"]
        assert sm["last_step"] == len(steps) and sm["first_step_seconds"] > 0 and sm["last_step_seconds"] > 0
        assert sm["end_to_end_seconds_per_frame_last_step"] == pytest.approx(
            per_frame + sm["last_step_seconds"] / frames_per_step)


def test_internvl_pair(pairs, tmp_path, capsys):
    steps, budget = 3, 24
    report = bench(tmp_path, "-m", pairs["internvl_text"], "--mmproj", pairs["internvl_mmproj"],
                   "--modes", "full,window,statekv", "--steps", steps, "--budget", budget, "--window", 1,
                   "--encode-reps", 2)
    # tokens per step: the rows the encoder gives for one 56 x 56 frame, plus the step's text
    m = statekv.Model(pairs["internvl_text"], mmproj=pairs["internvl_mmproj"], threads=1)
    rows = m.encode_frames(np.zeros((1, 3, 56, 56), np.float32))
    assert rows.shape == (1, INTERNVL_ROWS, 32)
    n = INTERNVL_ROWS + sum(internvl_layout.STEP_TEXT_TOKENS)
    v = report["vision"]
    assert (v["family"], v["projector"], v["frame_size"], v["frames_per_step"]) == ("internvl", "internvl", [56, 56], 1)
    assert (v["visual_rows_per_step"], v["text_tokens_per_step"], v["row_width"]) == (INTERNVL_ROWS, 7, 32)
    assert report["tokens_per_step"] == n
    _check_vision_timings(report, frames_per_step=1)
    # the session really held steps of n tokens: what each mode carries at the end
    prefix = frames.PREFIX_TOKENS
    modes = report["modes"]
    assert modes["full"]["tokens_carried"] == prefix + steps * n
    assert modes["window"]["tokens_carried"] == prefix + 1 * n
    assert modes["statekv"]["tokens_carried"] == budget
    info = m.info()
    assert modes["full"]["flops_per_step"][0] == frames.step_flops(info, n, prefix)
    table = capsys.readouterr().out
    assert "| mode | encoder ms/frame | LLM step 1 ms | last step | LLM last step ms | end-to-end ms/frame" in table
    assert "4 visual rows + 7 text tokens per step" in table


def test_qwen3vl_pair(pairs, tmp_path):
    steps = 2
    report = bench(tmp_path, "-m", pairs["qwen3vl_text"], "--mmproj", pairs["qwen3vl_mmproj"], "--modes", "full",
                   "--steps", steps, "--source-size", QWEN3VL_SOURCE, "--encode-frames", 4, "--encode-reps", 2)
    m = statekv.Model(pairs["qwen3vl_text"], mmproj=pairs["qwen3vl_mmproj"], threads=1)
    rows = m.encode_frames(np.zeros((4, 3, 64, 96), np.float32))  # two temporal patches
    assert rows.shape == (2, QWEN3VL_GRID[0] * QWEN3VL_GRID[1], 32 * 3)  # + 2 DeepStack slices
    n = rows.shape[1] + sum(qwen3vl_layout.STEP_TEXT_TOKENS)
    v = report["vision"]
    assert (v["family"], v["frame_size"], v["source_size"], v["frames_per_step"]) == ("qwen3vl", [64, 96], [96, 64], 2)
    assert (v["visual_rows_per_step"], v["row_width"], v["frames_per_encode"]) == (rows.shape[1], 96, 4)
    assert report["tokens_per_step"] == n
    _check_vision_timings(report, frames_per_step=2)
    assert report["modes"]["full"]["tokens_carried"] == frames.PREFIX_TOKENS + steps * n


def test_mismatched_pair_is_a_clear_error(pairs, tmp_path):
    with pytest.raises(ValueError) as err:
        bench(tmp_path, "-m", pairs["internvl_text"], "--mmproj", pairs["internvl_mmproj_48"], "--modes", "window",
              "--steps", 1)
    msg = str(err.value)
    assert "ModelError" in msg and "not a pair" in msg, msg
    assert "output width 48" in msg and "embedding width 32" in msg, msg
    assert pairs["internvl_mmproj_48"] in msg and pairs["internvl_text"] in msg, msg


def test_text_only_report_unchanged(pairs, tmp_path):
    """No vision model: the old keys only, and --tokens-per-step (default 256) sets the steps."""
    report = bench(tmp_path, "-m", pairs["internvl_text"], "--modes", "full", "--steps", 2)
    assert set(report) == {"model", "arch", "threads", "device", "tokens_per_step", "steps", "budget", "window",
                           "kv_type", "modes", "ratios"}
    assert report["tokens_per_step"] == 256
    assert set(report["modes"]["full"]) == {"step_seconds", "flops_per_step", "bytes_carried", "bytes_detailed",
                                            "tokens_carried", "peak_rss_bytes"}
    assert report["modes"]["full"]["tokens_carried"] == frames.PREFIX_TOKENS + 2 * 256


def test_argument_errors(pairs):
    with pytest.raises(ValueError, match="--tokens-per-step does not apply"):
        frames.run(_args("-m", pairs["internvl_text"], "--mmproj", pairs["internvl_mmproj"], "--tokens-per-step", 64))
    with pytest.raises(ValueError, match="exclude each other"):
        frames.run(_args("-m", pairs["internvl_text"], "--mmproj", pairs["internvl_mmproj"], "--no-vision"))
    # checked before the (large) random-weight files of a --shape are made
    with pytest.raises(ValueError, match="--tokens-per-step does not apply"):
        frames.run(_args("--shape", "qwen3-vl-2b", "--tokens-per-step", 64))
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        frames.run(_args("-m", pairs["internvl_text"], "--mmproj", pairs["internvl_mmproj"], "--source-size", "640"))
    # the encoder refuses a batch that is not whole temporal patches, before timing anything
    m = statekv.Model(pairs["qwen3vl_text"], mmproj=pairs["qwen3vl_mmproj"], threads=1)
    layout = vision.step_layout(m.info_cached, 4, (96, 64))
    with pytest.raises(ValueError, match="multiple of the 2 frame"):
        vision.time_encoder(m, layout, 3, 1, np.random.default_rng(0), (96, 64))


def test_shape_pairs_with_a_cached_random_tower(tmp_path, monkeypatch):
    """--shape of a video VLM pairs with its family's tower, made once in the cache directory."""
    import statekv.families.internvl.random_model as ci
    import statekv.families.qwen3vl.random_model as cq

    made = []

    def fake_internvl(path, shape, n_embd_out, qtype):
        made.append(("internvl", shape, n_embd_out, qtype))
        path.write_bytes(b"x")

    def fake_qwen3vl(path, shape, qtype):
        made.append(("qwen3vl", shape, qtype))
        path.write_bytes(b"x")

    monkeypatch.setattr(ci, "make_random_internvl_mmproj", fake_internvl)
    monkeypatch.setattr(cq, "make_random_qwen3vl_mmproj", fake_qwen3vl)
    a = vision.random_mmproj_path("internvl3-1b", "f16", tmp_path)
    assert vision.random_mmproj_path("internvl3-1b", "f16", tmp_path) == a  # cached: made once
    vision.random_mmproj_path("internvl3-2b", "q8_0", tmp_path)
    vision.random_mmproj_path("qwen3-vl-2b", "f16", tmp_path)
    assert made == [("internvl", "internvit-300m", 896, "f16"), ("internvl", "internvit-300m", 1536, "q8_0"),
                    ("qwen3vl", "qwen3-vl-2b", "f16")]
    with pytest.raises(ValueError, match="no vision tower"):
        vision.random_mmproj_path("qwen2.5-0.5b", "f16", tmp_path)
    # the CLI: a shape without a tower, or --no-vision, stays text-only (no mmproj made)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert frames._mmproj_path(_args("--shape", "qwen2.5-0.5b")) is None
    assert frames._mmproj_path(_args("--shape", "qwen3-vl-2b", "--no-vision")) is None
    assert frames._mmproj_path(_args("--shape", "qwen3-vl-2b")).endswith("mmproj-qwen3-vl-2b-qwen3-vl-2b-f16.gguf")
    assert len(made) == 4


def test_step_layouts_at_real_sizes():
    """InternVL: one image_size tile per step. Qwen3-VL: a 640 x 360 source under the default
    pixel bounds is encoded at 352 x 640 (11 x 20 = 220 rows per temporal patch)."""
    ivl = vision.step_layout({"vision.projector": "internvl", "vision.image_size": 448}, 16)
    assert (ivl.family, ivl.frames_per_step, ivl.frame_size) == ("internvl", 1, (448, 448))
    q3 = vision.step_layout({"vision.projector": "qwen3vl_merger", "vision.frames_per_patch": 2}, 16)
    assert (q3.frame_size, q3.grid, q3.visual_rows, q3.tokens_per_step) == ((352, 640), (11, 20), 220, 228)
    g3 = vision.step_layout({"vision.projector": "gemma3", "vision.image_size": 896}, 16)
    assert (g3.family, g3.frame_size, g3.text_before, g3.text_after) == ("gemma3", (896, 896), 7, 2)
    eg = vision.step_layout({"vision.projector": "eagle2_5", "vision.image_size": 448}, 16)
    assert (eg.family, eg.frame_size, eg.text_before, eg.text_after) == ("eagle2_5", (448, 448), 14, 1)
    with pytest.raises(ValueError, match="no step layout"):
        vision.step_layout({"vision.projector": "llava"}, 16)


def test_step_layout_matches_the_prompt_builders(pairs):
    """The text tokens around a step's rows and Qwen3-VL's positions are those of the family's
    real prompt (the tiny models carry the Qwen vocabulary with the families' added tokens)."""
    from statekv.families import internvl, qwen3vl
    from statekv.text.tokenizer import tokenizer_from_gguf

    p = internvl.build_video_prompt(tokenizer_from_gguf(pairs["internvl_text"]), 2, "What happens?",
                                    tokens_per_frame=INTERNVL_ROWS)
    step, rows = p.steps[0], p.visual_rows[0]
    assert (int(rows[0]), len(step) - int(rows[-1]) - 1) == internvl_layout.STEP_TEXT_TOKENS

    b = qwen3vl.VideoPromptBuilder(tokenizer_from_gguf(pairs["qwen3vl_text"]), QWEN3VL_GRID)
    prefix_ids, _ = b.prefix()
    layout = vision.StepLayout("qwen3vl", 2, (64, 96), QWEN3VL_GRID[0] * QWEN3VL_GRID[1],
                               *qwen3vl_layout.STEP_TEXT_TOKENS, grid=QWEN3VL_GRID)
    start = len(prefix_ids)
    for seconds in (0.5, 2.5):
        s = b.step(seconds)
        assert (int(s.rows[0]), len(s.ids) - int(s.rows[-1]) - 1) == qwen3vl_layout.STEP_TEXT_TOKENS
        assert np.array_equal(s.rows, layout.row_indices)
        positions, start = qwen3vl_layout.step_positions(layout, start)
        assert np.array_equal(positions, s.positions)
    assert start == b.next_position
