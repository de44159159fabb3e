#!/usr/bin/env python3
"""llama.cpp's side of bench/decode.sh: prefill and decode tokens/s of a LLaMA model of the
recipes/bench/llama-512.yaml shape with random weights, in F32, Q8_0 and Q4_0, through llama.cpp's
Python binding (llama-cpp-python, `scripts/venv.sh --llama`), with llama-bench's method: pp = one
evaluation of `prompt` random tokens from an empty cache (one batch), tg = `steps` single-token
evaluations from an empty cache; 1 warm-up, `reps` repetitions, mean and sd of tokens/s.

The GGUF files are written with gguf-py (llama.cpp's own writer and quantizers), so the peer
model does not depend on loom's exporter. Each llama.cpp call goes through Python (ctypes), which
adds a few microseconds per decode step.
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np

SHAPE = dict(vocab=8192, d=512, layers=8, heads=8, kv_heads=8, ff=1536, ctx=1024)


def write_gguf(path, qtype_name):
    import gguf
    s = SHAPE
    rng = np.random.default_rng(0)
    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["d"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ff"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(s["d"] // s["heads"])
    w.add_rope_freq_base(10000.0)
    w.add_file_type({"F32": 0, "Q8_0": 7, "Q4_0": 2}[qtype_name])
    # A SentencePiece-style vocabulary: unk, bos, eos, the 256 byte tokens, then filler pieces.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"piece{i}" for i in range(s["vocab"] - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (s["vocab"] - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def matrix(name, rows, cols):
        x = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
        if qtype_name == "F32":
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    d, ff, hd = s["d"], s["ff"], s["d"] // s["heads"]
    # The token embedding stays F32 as in loom's benchmark: decode reads one row of it.
    w.add_tensor("token_embd.weight", rng.standard_normal((s["vocab"], d), dtype=np.float32) * 0.02)
    for i in range(s["layers"]):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, dtype=np.float32))
        matrix(f"blk.{i}.attn_q.weight", s["heads"] * hd, d)
        matrix(f"blk.{i}.attn_k.weight", s["kv_heads"] * hd, d)
        matrix(f"blk.{i}.attn_v.weight", s["kv_heads"] * hd, d)
        matrix(f"blk.{i}.attn_output.weight", d, s["heads"] * hd)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, dtype=np.float32))
        matrix(f"blk.{i}.ffn_gate.weight", ff, d)
        matrix(f"blk.{i}.ffn_up.weight", ff, d)
        matrix(f"blk.{i}.ffn_down.weight", d, ff)
    w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    matrix("output.weight", s["vocab"], d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def measure(path, threads, prompt, steps, reps):
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=SHAPE["ctx"], n_batch=prompt, n_ubatch=prompt, n_threads=threads,
                n_threads_batch=threads, logits_all=False, verbose=False)
    rng = np.random.default_rng(1)
    pp, tg = [], []
    for rep in range(reps + 1):  # rep 0 warms up
        tokens = [int(t) for t in rng.integers(3, SHAPE["vocab"], prompt)]
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        start = time.perf_counter()
        llm.eval(tokens)
        pp_s = time.perf_counter() - start
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        nxt = [int(t) for t in rng.integers(3, SHAPE["vocab"], steps)]
        start = time.perf_counter()
        for t in nxt:
            llm.eval([t])
        tg_s = time.perf_counter() - start
        if rep:
            pp.append(prompt / pp_s)
            tg.append(steps / tg_s)
    return pp, tg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--formats", default="F32,Q8_0,Q4_0")
    args = ap.parse_args()
    print(f"llama.cpp (llama-cpp-python) {args.threads} threads")
    print(f"{'format':6} {'prefill tok/s':>22} {'decode tok/s':>22}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.formats.split(","):
            path = os.path.join(tmp, f"llama512-{name}.gguf")
            write_gguf(path, name)
            pp, tg = measure(path, args.threads, args.prompt, args.steps, args.reps)
            print(f"{name:6} {statistics.mean(pp):12.0f} ± {statistics.stdev(pp) if len(pp) > 1 else 0:<7.0f} "
                  f"{statistics.mean(tg):12.0f} ± {statistics.stdev(tg) if len(tg) > 1 else 0:<7.1f}", flush=True)


if __name__ == "__main__":
    main()
