#!/usr/bin/env python3
"""The CTranslate2 side of bench/translate_ct2.sh (loom vs CTranslate2 translation speed and quality).

Subcommands (run with .venv/bin/python after `scripts/venv.sh --ct2`):
  reference CHECKPOINT CT2_DIR SRC REF [--n 20]
      teacher-forced log-probs of the references from a plain numpy implementation of loom's
      encoder-decoder (the formulas of docs/translation.md) against CTranslate2's score_batch:
      checks the export without needing a loom binary.
  greedy CHECKPOINT CT2_DIR SRC [--n 20] [--loom build/loom] [--threads 2]
      loom's and CTranslate2's greedy (beam 1) translations of the first N sources, compared as
      text (loom translate prints text only; both detokenize with the same SentencePiece model).
  bench CHECKPOINT CT2_DIR SRC REF [--threads 2] [--beam 4] [--batch-size 32] [--loom build/loom]
      translates SRC with loom (fp32) and CTranslate2 (fp32, and int8 as an extra row) under the
      same search settings, and prints a table: translation wall time, target tokens, tokens/s,
      BLEU and chrF (sacrebleu) and loom / CTranslate2 ratios.

Search settings matched to loom translate (src/loom/infer/translate.h, fairseq semantics):
  - sources: SentencePiece ids, truncated to max_seq_len - 1 tokens; CTranslate2 appends eos
    (config add_source_eos), the decoder starts from bos;
  - beam search keeps `beam` hypotheses, ends a hypothesis when eos is among the best `beam` of
    2 * beam candidates, stops a sentence at `beam` finished hypotheses (CTranslate2's
    patience 1), no eos at the first step (min_decoding_length 1);
  - final score = sum log p / length^lenpen with the length counting the eos: CTranslate2
    divides by the hypothesis' length, which counts the eos only with return_end_token=True,
    so that is set (and the eos is stripped from the output);
  - maximum length: loom stops each sentence at floor(1.2 * source tokens) + 10 target tokens
    (eos excluded, capped at max_seq_len - 1) and then forces eos. CTranslate2 has one
    max_decoding_length per call (eos included) and ends a hypothesis at it without an eos, so
    each batch gets its longest sentence's budget: a sentence that runs to the limit gives as
    many tokens as in loom when it has the batch's longest budget, and may give more than loom
    lets it when its own budget is shorter (the bench counts those: "over loom's length
    budget"). Translations that end with eos before the limit are unaffected.
  - batches: the input is split into consecutive chunks of --batch-size lines in file order,
    which is what loom translate does with a file on stdin; each chunk is one translate_batch
    call (CTranslate2 sorts it by length, as loom does within its batch).
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def read_lines(path, n=None):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines[:n] if n else lines


def recipe_model(checkpoint):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from translate_ct2_export import read_recipe_model

    return read_recipe_model(os.path.join(checkpoint, "recipe.yaml"))


class Tok:
    def __init__(self, checkpoint):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=os.path.join(checkpoint, "tokenizer.model"))
        m = recipe_model(checkpoint)
        self.max_source = int(m["max_seq_len"]) - 1
        self.max_seq_len = int(m["max_seq_len"])

    def ids(self, line):
        return self.sp.encode(line)[: self.max_source]

    def pieces(self, line):
        return [self.sp.id_to_piece(i) for i in self.ids(line)]

    def decode_pieces(self, pieces):
        return self.sp.decode([self.sp.piece_to_id(p) for p in pieces])

    def count(self, text):
        return len(self.sp.encode(text)) if text else 0

    def max_len(self, n_source):
        """loom's per-sentence target budget, eos excluded (SearchOptions: a = 1.2, b = 10)."""
        return min(max(int(math.floor(1.2 * n_source)) + 10, 1), self.max_seq_len - 1)


def ct2_translate(translator, tok, lines, beam, batch_size, return_end_token=True):
    """Translations (text) of `lines`, in order, in chunks of batch_size; (texts, seconds, over_budget)."""
    sources = [tok.pieces(line) for line in lines]
    texts, over, seconds = [], 0, 0.0
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        budgets = [tok.max_len(len(s)) for s in chunk]
        t0 = time.perf_counter()
        results = translator.translate_batch(
            chunk,
            beam_size=beam,
            max_batch_size=batch_size,
            length_penalty=1.0,
            patience=1.0,
            min_decoding_length=1,
            max_decoding_length=max(budgets),
            max_input_length=0,
            return_end_token=return_end_token,
        )
        seconds += time.perf_counter() - t0
        for budget, r in zip(budgets, results):
            out = list(r.hypotheses[0])
            if out and out[-1] == "</s>":
                out.pop()
            if len(out) > budget:
                over += 1
            texts.append(tok.decode_pieces(out))
    return texts, seconds, over


def loom_translate(loom, checkpoint, lines, beam, batch_size, threads, extra=()):
    """loom translate on all of `lines` at once; (texts, seconds of the run)."""
    cmd = [loom, "--threads", str(threads), "translate", checkpoint, "--beam", str(beam), "--batch-size", str(batch_size), *extra]
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr.decode(errors='replace')}")
    out = p.stdout.decode("utf-8").split("\n")
    if out and out[-1] == "":
        out.pop()
    if len(out) != len(lines):
        sys.exit(f"loom translate gave {len(out)} lines for {len(lines)} inputs")
    return out, seconds


# ---------------------------------------------------------------------------------------------
# numpy reference of loom's encoder-decoder (teacher forcing)


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf, otypes=[np.float64])(x / math.sqrt(2.0)))


def _attn(q, k, v, heads, causal):
    t, d = q.shape
    hd = d // heads
    out = np.zeros_like(q)
    for h in range(heads):
        s = slice(h * hd, (h + 1) * hd)
        scores = q[:, s] @ k[:, s].T / math.sqrt(hd)
        if causal:
            scores = scores + np.triu(np.full(scores.shape, -np.inf), 1)
        scores = scores - scores.max(-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(-1, keepdims=True)
        out[:, s] = p @ v[:, s]
    return out


_weights = {}  # the checkpoint's weights in float64, loaded once


def numpy_logprobs(checkpoint, src_ids, tgt_ids):
    """Log-prob of each target token (tgt_ids then eos), given the source ids (eos appended here)."""
    from safetensors.numpy import load_file

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from translate_ct2_export import loom_sinusoidal_table

    m = recipe_model(checkpoint)
    if _weights.get("dir") != checkpoint:
        _weights["dir"] = checkpoint
        _weights["w"] = {k: v.astype(np.float64) for k, v in load_file(os.path.join(checkpoint, "model.safetensors")).items()}
    w = _weights["w"]
    d, heads = int(m["d_model"]), int(m["n_heads"])
    eps = float(m.get("norm_eps", 1e-5))
    P = loom_sinusoidal_table(int(m["max_seq_len"]), d).astype(np.float64)
    emb = w["tok_emb.weight"]
    lin = lambda x, p: x @ w[p + ".weight"].T + w[p + ".bias"]
    norm = lambda x, p: _ln(x, w[p + ".weight"], w[p + ".bias"], eps)
    ffn = lambda x, p: lin(_gelu(lin(norm(x, p + ".norm2"), p + ".ffn.w_in")), p + ".ffn.w_out")

    src = list(src_ids) + [2]
    x = emb[src] * math.sqrt(d) + P[: len(src)]
    i = 0
    while f"enc_layers.{i}.norm1.weight" in w:
        p = f"enc_layers.{i}"
        q, k, v = np.split(lin(norm(x, p + ".norm1"), p + ".mixer.wqkv"), 3, -1)
        x = x + lin(_attn(q, k, v, heads, False), p + ".mixer.wo")
        x = x + ffn(x, p)
        i += 1
    memory = norm(x, "norm_enc")

    tgt_in = [1] + list(tgt_ids)
    x = emb[tgt_in] * math.sqrt(d) + P[: len(tgt_in)]
    i = 0
    while f"layers.{i}.norm1.weight" in w:
        p = f"layers.{i}"
        q, k, v = np.split(lin(norm(x, p + ".norm1"), p + ".mixer.wqkv"), 3, -1)
        x = x + lin(_attn(q, k, v, heads, True), p + ".mixer.wo")
        q = lin(norm(x, p + ".norm_cross"), p + ".cross.wq")
        k, v = np.split(lin(memory, p + ".cross.wkv"), 2, -1)
        x = x + lin(_attn(q, k, v, heads, False), p + ".cross.wo")
        x = x + ffn(x, p)
        i += 1
    logits = norm(x, "norm_f") @ emb.T
    logits = logits - logits.max(-1, keepdims=True)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    out = list(tgt_ids) + [2]
    return lp[np.arange(len(out)), out]


# ---------------------------------------------------------------------------------------------


def cmd_reference(a):
    import ctranslate2

    tok = Tok(a.checkpoint)
    translator = ctranslate2.Translator(a.ct2_dir, device="cpu", compute_type="float32", inter_threads=1, intra_threads=a.threads)
    srcs, refs = read_lines(a.src, a.n), read_lines(a.ref, a.n)
    worst = 0.0
    for s, r in zip(srcs, refs):
        sid, rid = tok.ids(s), tok.ids(r)
        ref_lp = numpy_logprobs(a.checkpoint, sid, rid)
        res = translator.score_batch([tok.pieces(s)], [[tok.sp.id_to_piece(i) for i in rid]])[0]
        ct2_lp = np.array(res.log_probs)
        if len(ct2_lp) != len(ref_lp):
            sys.exit(f"score length mismatch: CTranslate2 {len(ct2_lp)}, numpy {len(ref_lp)}")
        worst = max(worst, float(np.abs(ct2_lp - ref_lp).max()))
    print(f"reference: {len(srcs)} sentence pairs, max |log p(CTranslate2) - log p(numpy)| = {worst:.2e}")
    return 0 if worst < 1e-3 else 1


def cmd_greedy(a):
    import ctranslate2

    tok = Tok(a.checkpoint)
    srcs = read_lines(a.src, a.n)
    translator = ctranslate2.Translator(a.ct2_dir, device="cpu", compute_type="float32", inter_threads=1, intra_threads=a.threads)
    # One sentence per call, so each gets exactly loom's length budget.
    ct2_out, _, over = ct2_translate(translator, tok, srcs, 1, 1)
    loom_out, _ = loom_translate(a.loom, a.checkpoint, srcs, 1, a.batch_size, a.threads)
    same = 0
    for i, (x, y) in enumerate(zip(loom_out, ct2_out)):
        if x == y:
            same += 1
        elif a.verbose:
            print(f"[{i}] loom: {x}\n[{i}] ct2 : {y}")
    print(f"greedy: {same}/{len(srcs)} translations identical (loom vs CTranslate2 fp32, beam 1); "
          f"{over} CTranslate2 outputs over loom's length budget")
    return 0


def cmd_bench(a):
    import ctranslate2
    import sacrebleu

    tok = Tok(a.checkpoint)
    srcs, refs = read_lines(a.src, a.n), read_lines(a.ref, a.n)
    rows, outputs = [], {}

    def add(name, texts, seconds, note=""):
        outputs[name] = texts
        tokens = sum(tok.count(t) for t in texts)
        bleu = sacrebleu.corpus_bleu(texts, [refs]).score
        chrf = sacrebleu.corpus_chrf(texts, [refs]).score
        rows.append((name, seconds, tokens, tokens / seconds, bleu, chrf, note))
        print(f"  {name}: {seconds:.2f} s, {tokens} tokens, BLEU {bleu:.2f} {note}", file=sys.stderr, flush=True)

    if a.loom:
        print("loom: model load (empty input) ...", file=sys.stderr, flush=True)
        _, load_s = loom_translate(a.loom, a.checkpoint, [], a.beam, a.batch_size, a.threads)
        print("loom: translating ...", file=sys.stderr, flush=True)
        loom_out, total_s = loom_translate(a.loom, a.checkpoint, srcs, a.beam, a.batch_size, a.threads)
        add("loom fp32", loom_out, total_s - load_s, f"(run {total_s:.2f} s - empty-input run {load_s:.2f} s)")
        if a.save:
            with open(a.save + ".loom", "w", encoding="utf-8") as f:
                f.writelines(t + "\n" for t in loom_out)
        # The extra row: matmuls in bf16 (oneDNN's AVX-512 bf16 kernels), log-probs in fp32.
        bf16_out, bf16_s = loom_translate(a.loom, a.checkpoint, srcs, a.beam, a.batch_size, a.threads, ["--bf16"])
        add("loom bf16", bf16_out, bf16_s - load_s, f"(run {bf16_s:.2f} s - empty-input run {load_s:.2f} s)")
    for compute_type in ["float32"] + (["int8"] if a.int8 else []):
        print(f"CTranslate2 {compute_type}: translating ...", file=sys.stderr, flush=True)
        translator = ctranslate2.Translator(a.ct2_dir, device="cpu", compute_type=compute_type, inter_threads=1, intra_threads=a.threads)
        out, seconds, over = ct2_translate(translator, tok, srcs, a.beam, a.batch_size)
        del translator
        add(f"CTranslate2 {'fp32' if compute_type == 'float32' else compute_type}", out, seconds,
            f"({over} outputs over loom's length budget)")
        if a.save:
            with open(a.save + f".ct2-{compute_type}", "w", encoding="utf-8") as f:
                f.writelines(t + "\n" for t in out)

    print()
    print(f"{len(srcs)} sentences of {os.path.basename(a.src)}, beam {a.beam}, batch {a.batch_size}, "
          f"{a.threads} threads; time = translation only (model load excluded); tokens = SentencePiece "
          f"pieces of the outputs, eos excluded")
    print(f"| {'system':<17} | {'time s':>7} | {'tokens':>7} | {'tokens/s':>8} | {'BLEU':>6} | {'chrF':>6} |")
    print(f"|{'-' * 19}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 8}|{'-' * 8}|")
    for name, s, n, tps, bleu, chrf, _ in rows:
        print(f"| {name:<17} | {s:7.2f} | {n:7d} | {tps:8.1f} | {bleu:6.2f} | {chrf:6.2f} |")
    by = {r[0]: r for r in rows}
    if "loom fp32" in by and "CTranslate2 fp32" in by:
        l, c = by["loom fp32"], by["CTranslate2 fp32"]
        print(f"\nloom / CTranslate2 fp32: speed (tokens/s) {l[3] / c[3]:.2f}x, BLEU {l[4] - c[4]:+.2f}, chrF {l[5] - c[5]:+.2f}")
        budgets = [tok.max_len(len(tok.ids(line))) for line in srcs]
        same = limit = 0
        for x, y, budget in zip(outputs["loom fp32"], outputs["CTranslate2 fp32"], budgets):
            if x == y:
                same += 1
            elif max(tok.count(x), tok.count(y)) >= budget:
                limit += 1
        print(f"identical translations, loom vs CTranslate2 fp32: {same}/{len(srcs)}; of the {len(srcs) - same} "
              f"others, {limit} reach the length limit in one of them")
        if "CTranslate2 int8" in by:
            i8 = by["CTranslate2 int8"]
            print(f"loom / CTranslate2 int8: speed (tokens/s) {l[3] / i8[3]:.2f}x, BLEU {l[4] - i8[4]:+.2f}")
    return 0


def main():
    parser = argparse.ArgumentParser(description="loom vs CTranslate2 translation", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p, ref=True):
        p.add_argument("checkpoint")
        p.add_argument("ct2_dir")
        p.add_argument("src")
        if ref:
            p.add_argument("ref")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--n", type=int, default=None, help="first N lines only")

    p = sub.add_parser("reference")
    common(p)
    p.set_defaults(fn=cmd_reference, n=20)
    p = sub.add_parser("greedy")
    common(p, ref=False)
    p.add_argument("--loom", default="build/loom")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(fn=cmd_greedy)
    p = sub.add_parser("bench")
    common(p)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--loom", default="build/loom", help="loom binary; empty: CTranslate2 rows only")
    p.add_argument("--no-int8", dest="int8", action="store_false")
    p.add_argument("--save", default=None, help="write each system's translations to SAVE.<system>")
    p.set_defaults(fn=cmd_bench)
    a = parser.parse_args()
    if a.cmd == "greedy" and a.n is None:
        a.n = 20
    sys.exit(a.fn(a))


if __name__ == "__main__":
    main()
