"""A short, readable PyTorch reference of StateKV (docs/DESIGN.md section 1).

Written over transformers' own modules of a (tiny) ``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``,
``Qwen3VLForConditionalGeneration`` (text model: 3-axis M-RoPE positions and DeepStack rows) or
``Gemma3ForCausalLM`` (post-attention/post-FFN norms, per-layer-type rotary, sliding-window
layers), in float32 with eager attention math, so that the attention probabilities that give the
key scores are explicit.

Sliding-window layers (window w, ``config.layer_types``): a query with entry index i sees keys
with index j, i - w < j <= i, in the model itself, so in every mode such a layer's C is the last
w - 1 tokens of D (no scores, no budget), and its queries see C and their own keys through that
window. Questions see the window too. The modes apply to the other layers.

State, per layer l:
  * D: keys (after RoPE) and values of every token so far, in entry order; token index i = the
    order in which the token entered the session (0, 1, ...).
  * C: per KV head g, the indices (into D) of the carried tokens, ascending. Keys/values of C are
    D's (rotary is applied before caching, so a carried key is exactly its D entry).

Modes: ``full`` (C = all of D), ``window`` (C = prefix + tokens of the last ``window`` steps),
``statekv`` (C = at most ``budget`` tokens per layer and KV head, chosen by key scores).

A step's queries attend over [C_l ; step keys] (C: no mask; step: causal). Key scores for the
statekv selection: s[g, j] = sum over the step's queries i and the query heads h of group g
(heads g*rep .. g*rep+rep-1, transformers' ``repeat_kv`` grouping) of softmax P_h[i, j]; masked
entries are exactly 0. The new C_l[g] is the ``budget`` candidates of [C_l[g] ; step] with the
largest scores (``torch.topk(sorted=False)`` then sorted indices, as the authors' release does),
kept in entry order. Prefix tokens and questions attend causally over ALL of D plus themselves.
Questions leave C, D and the position counter unchanged.

Variants of the statekv selection (docs/DESIGN.md section 1, "Policy variants"; the defaults are
the paper's rule above):
  * ``score_decay`` d in [0, 1): every key of C carries an accumulated score S (float32); prefix
    keys enter with S = 0. A step ranks its candidates by d * [S ; 0] + s (a new key starts from
    its s) and the kept keys carry that value. d = 0 ranks by s alone: the paper's rule.
  * ``pin_prefix``: the prefix's keys are kept in C for good (they count toward the budget); the
    other candidates compete for the budget minus the prefix.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

__all__ = ["StateKVReference", "load_hf", "plain_logits"]


def load_hf(hf_dir):
    """The transformers model of a tiny checkpoint directory, float32, eval mode."""
    import json
    from pathlib import Path

    import transformers

    arch = json.loads((Path(hf_dir) / "config.json").read_text())["architectures"][0]
    cls = getattr(transformers, arch)
    return cls.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()


def _text_parts(hf):
    """(text model, lm_head) of a causal LM or of Qwen3-VL's conditional-generation model."""
    inner = hf.model
    if hasattr(inner, "language_model"):
        inner = inner.language_model
    return inner, hf.lm_head


def _as_positions(positions, n, start, multi_axis):
    """(n,) or (3, n) int64 positions; default: start, start+1, ... on every axis."""
    if positions is None:
        p = torch.arange(start, start + n, dtype=torch.int64)
        return p.expand(3, n).clone() if multi_axis else p
    p = torch.as_tensor(np.asarray(positions), dtype=torch.int64)
    if multi_axis and p.ndim == 1:
        p = p.expand(3, n).clone()
    if p.shape[-1] != n or p.ndim != (2 if multi_axis else 1):
        raise ValueError(f"positions of shape {tuple(p.shape)} for {n} tokens")
    return p


class StateKVReference:
    """The StateKV state machine over a transformers model (see the module docstring).

    ``mode``: ``full`` | ``window`` | ``statekv``; ``budget`` B (statekv); ``window`` R (window);
    ``score_decay`` and ``pin_prefix``: the statekv variants of the module docstring.
    """

    def __init__(self, hf, mode: str = "statekv", budget: int | None = None, window: int | None = None,
                 score_decay: float = 0.0, pin_prefix: bool = False):
        if mode not in ("full", "window", "statekv"):
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "statekv" and (budget is None or budget <= 0):
            raise ValueError("statekv needs budget > 0")
        if mode == "window" and (window is None or window <= 0):
            raise ValueError("window needs window > 0")
        if not 0.0 <= score_decay < 1.0:
            raise ValueError("score_decay must be in [0, 1)")
        if mode != "statekv" and (score_decay or pin_prefix):
            raise ValueError("score_decay and pin_prefix are statekv variants")
        # the decay as the float32 that multiplies float32 scores
        self.score_decay = torch.tensor(score_decay, dtype=torch.float32)
        self.decays, self.pin_prefix = score_decay > 0, bool(pin_prefix)
        self.hf = hf
        self.text, self.lm_head = _text_parts(hf)
        self.cfg = self.text.config
        layer0 = self.text.layers[0]
        self.apply_rope = sys.modules[type(layer0.self_attn).__module__].apply_rotary_pos_emb
        self.multi_axis = "mrope_section" in (getattr(self.cfg, "rope_parameters", None) or {})
        self.n_layer = len(self.text.layers)
        self.n_head = self.cfg.num_attention_heads
        self.n_kv = self.cfg.num_key_value_heads
        self.rep = self.n_head // self.n_kv
        self.head_dim = layer0.self_attn.head_dim
        self.hidden = self.cfg.hidden_size
        self.mode, self.budget, self.window = mode, budget, window
        types = getattr(self.cfg, "layer_types", None) or ["full_attention"] * self.n_layer
        # per layer: its sliding window (0: sees every earlier token) and its rotary's layer type
        self.sliding = [int(self.cfg.sliding_window) if t == "sliding_attention" else 0 for t in types]
        self.layer_types = list(types)
        self.per_type_rope = hasattr(self.text.rotary_emb, "layer_types")   # Gemma 3: one rotary per layer type

        e = torch.empty(self.n_kv, 0, self.head_dim)
        self.K = [e.clone() for _ in range(self.n_layer)]   # D keys   (n_kv, N, d), after RoPE
        self.V = [e.clone() for _ in range(self.n_layer)]   # D values (n_kv, N, d)
        self.C = [torch.empty(self.n_kv, 0, dtype=torch.int64) for _ in range(self.n_layer)]
        self.S = [torch.empty(self.n_kv, 0) for _ in range(self.n_layer)]   # accumulated scores of C (decay)
        self.n_prefix = 0
        self.steps: list[tuple[int, int]] = []   # [start, end) token indices of each step
        self.last_pos = -1                        # largest position so far (any axis)
        self.last_scores = None                   # per layer (n_kv, n_competing) ranks of the last step
        self.last_candidates = None               # per layer (n_kv, n_competing) token indices
        self._last_all = None                     # per layer (all candidates, their carried scores)

    # ----------------------------------------------------------------- building blocks
    @property
    def n_tokens(self) -> int:
        return self.K[0].shape[1]

    def _embed(self, tokens, embeddings, rows):
        tok = torch.as_tensor(np.asarray(tokens), dtype=torch.int64)
        x = self.text.embed_tokens(tok).clone()
        deepstack = None
        if embeddings is not None:
            emb = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
            rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
            if emb.ndim != 2 or emb.shape[1] % self.hidden or emb.shape[0] != rows_t.numel():
                raise ValueError(f"embeddings of shape {tuple(emb.shape)} for {rows_t.numel()} rows")
            if rows_t.numel() and (rows_t.min() < 0 or rows_t.max() >= len(tok)):
                raise ValueError("embedding rows out of range")
            x[rows_t] = emb[:, : self.hidden]
            if emb.shape[1] > self.hidden:   # DeepStack slices, added after text layers 0, 1, ...
                deepstack = (rows_t, emb[:, self.hidden:].reshape(len(rows_t), -1, self.hidden))
        return x, deepstack

    def _qkv(self, layer, h, cos, sin):
        a, n = layer.self_attn, h.shape[0]
        q = a.q_proj(h).view(n, self.n_head, self.head_dim)
        k = a.k_proj(h).view(n, self.n_kv, self.head_dim)
        v = a.v_proj(h).view(n, self.n_kv, self.head_dim)
        if hasattr(a, "q_norm"):
            q, k = a.q_norm(q), a.k_norm(k)
        q, k = self.apply_rope(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
        return q[0], k[0], v.transpose(0, 1)   # (H, n, d), (G, n, d), (G, n, d)

    def _attend(self, a, q, Kc, Vc, Ks, Vs, window=0, ctx_idx=None, start=0, blocks=None):
        """Queries q (H, n, d) over context (G, m, d) unmasked + own keys (G, n, d) causal; with
        a sliding ``window``, keys (entry indices ``ctx_idx`` (m,) and start, start+1, ...) more
        than window - 1 tokens before a query are hidden too; ``blocks`` (n,): own keys in the
        query's bidirectional block (value > 0) are visible even when later (within the window).
        Returns the attention output (n, H*d) before o_proj and P (H, n, m + n)."""
        n, m = q.shape[1], Kc.shape[1]
        K = torch.cat([Kc, Ks], dim=1).repeat_interleave(self.rep, dim=0)   # = repeat_kv
        V = torch.cat([Vc, Vs], dim=1).repeat_interleave(self.rep, dim=0)
        logits = (q @ K.transpose(1, 2)) * a.scaling
        causal = torch.ones(n, n, dtype=torch.bool).triu(1)
        if blocks is not None:
            b = torch.as_tensor(np.asarray(blocks), dtype=torch.int64)
            causal &= ~((b[:, None] == b[None, :]) & (b[:, None] > 0))
        mask = torch.cat([torch.zeros(n, m, dtype=torch.bool), causal], dim=1)
        if window:
            qi = torch.arange(start, start + n)[:, None]
            kj = torch.cat([torch.as_tensor(ctx_idx, dtype=torch.int64), torch.arange(start, start + n)])[None, :]
            mask |= qi - kj >= window
        P = torch.softmax(logits.masked_fill(mask, float("-inf")), dim=-1, dtype=torch.float32)
        return (P @ V).transpose(0, 1).reshape(n, -1), P

    @torch.no_grad()
    def _run(self, tokens, embeddings, rows, positions, context, blocks=None):
        """Run ``tokens`` through every layer; ``context(l)`` = (G, m) indices of D that they see
        unmasked. Returns (hidden after the final norm, new K, new V, key scores per layer)."""
        n = len(tokens)
        pos = _as_positions(positions, n, self.last_pos + 1, self.multi_axis)
        x, deepstack = self._embed(tokens, embeddings, rows)
        pid = pos[:, None, :] if self.multi_axis else pos[None, :]
        if self.per_type_rope:
            rope = {t: self.text.rotary_emb(x[None], pid, t) for t in set(self.layer_types)}
        else:
            rope = {t: self.text.rotary_emb(x[None], pid) for t in set(self.layer_types)}
        start = self.n_tokens
        newK, newV, scores = [], [], []
        for l, layer in enumerate(self.text.layers):
            cos, sin = rope[self.layer_types[l]]
            w = self.sliding[l]
            # a sliding layer's context is the last w - 1 tokens of D, whatever the caller asks
            idx = self._window_of_D(w) if w else context(l)
            g = torch.arange(self.n_kv)[:, None]
            Kc, Vc = self.K[l][g, idx], self.V[l][g, idx]
            q, k, v = self._qkv(layer, layer.input_layernorm(x), cos, sin)
            out, P = self._attend(layer.self_attn, q, Kc, Vc, k, v, w, idx[0], start, blocks)
            o = layer.self_attn.o_proj(out)
            if hasattr(layer, "post_feedforward_layernorm"):   # Gemma 3: norms after attention and FFN too
                x = x + layer.post_attention_layernorm(o)
                x = x + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x)))
            else:
                x = x + o
                x = x + layer.mlp(layer.post_attention_layernorm(x))
            if deepstack is not None and l < deepstack[1].shape[1]:
                x[deepstack[0]] += deepstack[1][:, l]
            newK.append(k)
            newV.append(v)
            scores.append(P.view(self.n_kv, self.rep, n, -1).sum(dim=(1, 2)))   # (G, m + n)
        return self.text.norm(x), newK, newV, scores, pos

    def _window_of_D(self, w):
        """(G, <= w - 1) indices of the last w - 1 tokens of D: what a sliding layer still sees."""
        return torch.arange(max(0, self.n_tokens - (w - 1)), self.n_tokens).expand(self.n_kv, -1).clone()

    def _all_of_D(self, l):
        return torch.arange(self.n_tokens).expand(self.n_kv, -1)

    def _commit(self, newK, newV, pos):
        for l in range(self.n_layer):
            self.K[l] = torch.cat([self.K[l], newK[l]], dim=1)
            self.V[l] = torch.cat([self.V[l], newV[l]], dim=1)
        self.last_pos = max(self.last_pos, int(pos.max()))

    def _check_positions(self, positions):
        if positions is not None and int(np.min(np.asarray(positions))) <= self.last_pos:
            raise ValueError("positions must continue after the previous ones")

    # ----------------------------------------------------------------- the API
    def prefill(self, tokens, embeddings=None, rows=None, positions=None, blocks=None):
        """Prefix tokens (before the first step): causal over all of D; into D and into C."""
        if self.steps:
            raise ValueError("prefill after the first step")
        if self.mode == "statekv" and self.n_tokens + len(tokens) > self.budget:
            raise ValueError("prefix longer than the budget")
        self._check_positions(positions)
        start = self.n_tokens
        _, newK, newV, _, pos = self._run(tokens, embeddings, rows, positions, self._all_of_D, blocks)
        self._commit(newK, newV, pos)
        new = torch.arange(start, self.n_tokens).expand(self.n_kv, -1)
        self.C = [self._window_of_D(w) if w else torch.cat([c, new], dim=1) for c, w in zip(self.C, self.sliding)]
        self.S = [torch.cat([sc, torch.zeros(new.shape)], dim=1) for sc in self.S]   # never scored
        self.n_prefix = self.n_tokens

    def add_step(self, tokens, embeddings=None, rows=None, positions=None, blocks=None):
        """One frame step: attention over [C ; step], then D grows and C is updated."""
        self._check_positions(positions)
        n, start = len(tokens), self.n_tokens
        _, newK, newV, scores, pos = self._run(tokens, embeddings, rows, positions, lambda l: self.C[l], blocks)
        self._commit(newK, newV, pos)
        self.steps.append((start, start + n))
        step_idx = torch.arange(start, start + n).expand(self.n_kv, -1)
        self.last_scores, self.last_candidates, self._last_all = [], [], []
        for l in range(self.n_layer):
            cand = torch.cat([self.C[l], step_idx], dim=1)   # (G, m + n), ascending
            rank = scores[l]
            if self.decays and not self.sliding[l]:   # d * S_prev + s, new keys from s (global layers)
                rank = self.score_decay * torch.cat([self.S[l], torch.zeros(self.n_kv, n)], dim=1) + rank
            # the keys that compete: all but a pinned prefix (the same columns in every head)
            competing = cand[0] >= self.n_prefix if self.pin_prefix else torch.ones(cand.shape[1], dtype=torch.bool)
            self.last_candidates.append(cand[:, competing])
            self.last_scores.append(rank[:, competing])
            self._last_all.append((cand, rank))
            if self.sliding[l]:
                self.C[l] = self._window_of_D(self.sliding[l])
            elif self.mode == "full":
                self.C[l] = cand
            elif self.mode == "window":
                kept = [torch.arange(0, self.n_prefix)] + [torch.arange(a, b) for a, b in self.steps[-self.window:]]
                self.C[l] = torch.cat(kept).expand(self.n_kv, -1).clone()
            elif cand.shape[1] <= self.budget:
                self.C[l], self.S[l] = cand, rank
            else:
                pinned = torch.nonzero(~competing).flatten().expand(self.n_kv, -1)
                k = self.budget - pinned.shape[1]
                top = torch.nonzero(competing).flatten()[torch.topk(rank[:, competing], k, dim=1, sorted=False).indices]
                keep = torch.cat([pinned, top], dim=1).sort(dim=1).values
                self.C[l], self.S[l] = torch.gather(cand, 1, keep), torch.gather(rank, 1, keep)

    def adopt(self, layer: int, kept: np.ndarray):
        """Continue from another selection of the last step's candidates (a float tie decided the
        other way): C_layer = ``kept`` (n_kv, n) and, with a decay, the scores those keys carry."""
        self.C[layer] = torch.as_tensor(np.asarray(kept).astype(np.int64))
        if self._last_all is not None:
            cand, rank = self._last_all[layer]
            self.S[layer] = torch.gather(rank, 1, torch.searchsorted(cand, self.C[layer]))

    def question_logits(self, tokens, positions=None, embeddings=None, rows=None):
        """Logits (n, vocab) of question tokens attending causally over all of D; no state change."""
        self._check_positions(positions)
        h, *_ = self._run(tokens, embeddings, rows, positions, self._all_of_D)
        with torch.no_grad():
            logits = self.lm_head(h)
            cap = getattr(self.cfg, "final_logit_softcapping", None)
            if cap:
                logits = torch.tanh(logits / cap) * cap
            return logits.numpy()

    def greedy(self, tokens, max_tokens):
        """Greedy continuation of a question over all of D: (tokens, top-2 margins)."""
        seq, out, margins = list(tokens), [], []
        for _ in range(max_tokens):
            last = self.question_logits(seq)[-1]
            top2 = np.sort(last)[-2:]
            out.append(int(np.argmax(last)))
            margins.append(float(top2[1] - top2[0]))
            seq.append(out[-1])
        return out, margins

    def carried(self, layer: int) -> np.ndarray:
        """(n_kv_heads, n_kept) ascending token indices of C_layer."""
        return self.C[layer].numpy().astype(np.int32)

    def selection_margin(self, layer: int) -> np.ndarray:
        """Per KV head, the gap between the smallest kept and the largest dropped key score of the
        last statekv step (inf when nothing was dropped): how close the selection was to a tie."""
        s, cand = self.last_scores[layer], self.last_candidates[layer]
        out = np.full(self.n_kv, np.inf)
        for g in range(self.n_kv):
            keep = torch.isin(cand[g], self.C[layer][g])
            if (~keep).any():
                out[g] = float(s[g][keep].min() - s[g][~keep].max())
        return out


@torch.no_grad()
def plain_logits(hf, tokens, embeddings=None, rows=None, positions=None, blocks=None):
    """transformers' own forward over one whole sequence, logits (n, vocab). ``positions``: None
    (0, 1, ...), (n,) or for Qwen3-VL (3, n); ``embeddings`` (k, hidden) or, for Qwen3-VL,
    (k, hidden * (1 + n_deepstack)) (DeepStack slices passed as ``deepstack_visual_embeds``);
    ``blocks`` (n,), Gemma 3: bidirectional blocks, masked by transformers' own
    ``create_masks_for_vision_model`` as Gemma3Model does for image tokens."""
    text, lm_head = _text_parts(hf)
    hidden = text.config.hidden_size
    tok = torch.as_tensor(np.asarray(tokens), dtype=torch.int64)[None]
    x = text.embed_tokens(tok).clone()
    kw = {}
    if embeddings is not None:
        emb = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        x[0, rows_t] = emb[:, :hidden]
        if emb.shape[1] > hidden:
            mask = torch.zeros(1, tok.shape[1], dtype=torch.bool)
            mask[0, rows_t] = True
            order = torch.argsort(rows_t)   # transformers takes the rows in sequence order
            ds = emb[order, hidden:].reshape(len(rows_t), -1, hidden)
            kw = dict(visual_pos_masks=mask, deepstack_visual_embeds=list(ds.unbind(1)))
    if positions is not None:
        p = torch.as_tensor(np.asarray(positions), dtype=torch.int64)
        kw["position_ids"] = p[:, None, :] if p.ndim == 2 else p[None, :]
    # an explicit all-ones mask: otherwise transformers reads position jumps as packed sequences
    mask = torch.ones(tok.shape, dtype=torch.long)
    if blocks is not None:
        gemma3 = sys.modules[type(text).__module__]
        b = torch.as_tensor(np.asarray(blocks), dtype=torch.int64)[None]
        pid = kw.get("position_ids", torch.arange(tok.shape[1])[None])
        mask = gemma3.create_masks_for_vision_model(text.config, x, mask, None, pid, torch.where(b > 0, b - 1, -1))
    out = text(inputs_embeds=x, attention_mask=mask, use_cache=False, **kw)
    return lm_head(out.last_hidden_state)[0].numpy()


# Key scores closer than this (relative to the largest score) are a float tie.
TIE_REL = 1e-5


def check_carried(s, ref, where, ties=None):
    """statekv's carried(layer) == the reference's selection for every layer and KV head.

    A difference is tolerated only between keys whose reference scores are a float tie at the
    selection boundary (within TIE_REL of the largest score); the reference then adopts
    statekv's choice so that both continue from the same state, and the tie is recorded."""
    for layer in range(ref.n_layer):
        got, want = np.asarray(s.carried(layer)), ref.carried(layer)
        assert got.dtype == np.int32, f"{where}: carried({layer}) dtype {got.dtype}"
        if got.shape == want.shape and np.array_equal(got, want):
            continue
        msg = f"{where}, layer {layer}: carried shape {got.shape}, reference {want.shape}"
        assert got.shape == want.shape, msg
        explained = ref.mode == "statekv" and ref.last_scores is not None
        details = []
        for g in range(ref.n_kv):
            if np.array_equal(got[g], want[g]):
                continue
            only_s, only_r = np.setdiff1d(got[g], want[g]), np.setdiff1d(want[g], got[g])
            line = f"head {g}: only statekv keeps {only_s.tolist()}, only the reference keeps {only_r.tolist()}"
            if ref.mode == "statekv" and ref.last_scores is not None:
                cand = ref.last_candidates[layer][g].numpy()
                sc = ref.last_scores[layer][g].numpy()
                kept = sc[np.isin(cand, want[g])]
                thr = float(kept.min())
                diff = np.concatenate([sc[np.isin(cand, only_s)], sc[np.isin(cand, only_r)]])
                line += (f"; reference scores of those {diff.tolist()}, smallest kept score {thr:.6g}, "
                         f"largest score {sc.max():.6g}")
                if not (len(diff) == len(only_s) + len(only_r)
                        and np.all(np.abs(diff - thr) <= TIE_REL * sc.max())):
                    explained = False
            else:
                explained = False
            details.append(line)
        assert explained, msg + "\n  " + "\n  ".join(details)
        if ties is not None:
            ties.extend(f"{where}, layer {layer}, {d}" for d in details)  # one entry per tied head
        ref.adopt(layer, got)
