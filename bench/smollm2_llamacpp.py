#!/usr/bin/env python3
"""Decode speed of loom and llama.cpp on SmolLM2-135M-Instruct; run by bench/smollm2_llamacpp.sh."""
import argparse
import subprocess
import time

import numpy as np

PROMPT = "Once upon a time, in a small village by the sea,"


def llama_cpp_speed(gguf, threads, n, reps=3):
    from llama_cpp import Llama
    llm = Llama(model_path=gguf, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    best, out = float("inf"), []
    for _ in range(reps):
        llm.reset()
        llm.eval(ids)
        out = []
        start = time.perf_counter()
        for _ in range(n):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(tok)
            llm.eval([tok])
        best = min(best, time.perf_counter() - start)
    return n / best, out


def loom_wall(loom, checkpoint, threads, n):
    start = time.perf_counter()
    subprocess.run([loom, "--threads", str(threads), "generate", checkpoint, "--prompt", PROMPT,
                    "--max-new-tokens", str(n), "--temperature", "0", "--ignore-eos"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def loom_speed(loom, checkpoint, threads, n, reps=3):
    one = min(loom_wall(loom, checkpoint, threads, 1) for _ in range(reps))
    full = min(loom_wall(loom, checkpoint, threads, n + 1) for _ in range(reps))
    return n / (full - one), one


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--loom", default="build/loom")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    a = ap.parse_args()
    import llama_cpp
    lc, _ = llama_cpp_speed(a.gguf, a.threads, a.new_tokens)
    lm, startup = loom_speed(a.loom, a.checkpoint, a.threads, a.new_tokens)
    print(f"SmolLM2-135M-Instruct Q4_1, greedy, {a.threads} threads, {a.new_tokens} new tokens after a "
          f"{len(PROMPT)}-character prompt")
    print(f"llama.cpp (llama-cpp-python {llama_cpp.__version__}): {lc:8.1f} tokens/s")
    print(f"loom ({a.checkpoint}):   {lm:8.1f} tokens/s  (load + prompt + 1 token: {startup:.2f} s)")
    print(f"loom / llama.cpp: {lm / lc:.2f}x")


if __name__ == "__main__":
    main()
