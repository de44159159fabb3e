#!/usr/bin/env python3
"""llama.cpp's side of the SmolLM2 comparison: writes the reference that tests/test_smollm2.cpp
checks loom against, from llama-cpp-python (scripts/venv.sh --llama) on the GGUF that
scripts/fetch_smollm2.sh fetches.

  .venv/bin/python scripts/smollm2_reference.py tokens  > tests/data/smollm2_tokens.json
  .venv/bin/python scripts/smollm2_reference.py logits  > tests/data/smollm2_logits.json
  .venv/bin/python scripts/smollm2_reference.py full-logits OUT.npz   (every logit, not committed)

tokens: for each text of TEXTS, llama.cpp's ids with special tokens parsed and not
(Llama.tokenize(text, add_bos=False, special=...)).
logits: for each prompt of PROMPTS (ids as llama.cpp tokenizes them, no bos: the GGUF says
add_bos_token = false), llama.cpp's logits over the prompt (logits_all, 2 threads): per position
the top-K ids and logits and the logits of a fixed sample of ids; then the greedy continuation
(argmax of each step's logits, up to N_NEW tokens or eos)."""
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF = os.path.join(ROOT, "data", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
THREADS = 2
TOP_K = 10
N_SAMPLE = 64  # ids whose logits are recorded at every position, besides the top-K
N_NEW = 32

CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "I'm sure you'll say it's fine; they've said we'd go. DON'T SHOUT! He's O'Neil's.",
    "Numbers: 0 7 42 1234567 3.14159 -12,000 1e-5 2024-11-24 v0.3.36 ٣٤ ²³ ½",
    "Punctuation!!! ...?? (a) [b] {c} <d> \"quoted\" 'single' `tick` ~tilde~ @user #tag $5 %20 ^ & * _ = + | \\ /",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\t\tdouble tabs, and    four spaces before this",
    "line one\nline two\n\nafter a blank line\r\nwindows line\n\n\n   indented after newlines\n",
    " \n \n",
    "Café, naïve, résumé, façade, Zürich, São Paulo, Ångström, Œuvre, straße, ĳ, ǅ",
    "Cafe\u0301 with a combining accent, and e\u0308 too",
    "Русский текст, Ελληνικά, עברית, العربية, हिन्दी, ไทย",
    "東京は日本の首都です。中文句子，带标点！한국어 문장입니다.",
    "Emoji: 🙂 😀😃 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨ 🚀",
    "non\u00a0breaking\u2009thin\u3000ideographic space \u200bzero width",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more <|im_end|><repo_name>x<file_sep>",
    "<|im_start <|im_start|><|im_start|>| partial <|im_ and end",
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "x",
    "",
]

PROMPTS = [
    {"name": "plain", "text": "The capital of France is"},
    {"name": "chat", "text": CHAT.format("What is the capital of France?")},
    {"name": "code", "text": "def fibonacci(n):\n"},
]


def llama(**kw):
    from llama_cpp import Llama
    return Llama(model_path=GGUF, n_threads=THREADS, n_threads_batch=THREADS, verbose=False, **kw)


def tokens():
    import llama_cpp
    llm = llama(vocab_only=True)
    out = {"llama_cpp_python": llama_cpp.__version__, "gguf": os.path.basename(GGUF), "cases": []}
    for text in TEXTS:
        b = text.encode("utf-8")
        out["cases"].append({"text": text,
                             "ids_special": llm.tokenize(b, add_bos=False, special=True),
                             "ids_plain": llm.tokenize(b, add_bos=False, special=False)})
    return out


def run_prompt(llm, ids):
    """Logits over the prompt (rows of llm.scores) and the greedy continuation."""
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    new, eos = [], llm.token_eos()
    for _ in range(N_NEW):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        new.append(tok)
        if tok == eos:
            break
        llm.eval([tok])
    return logits, new


def logits():
    import llama_cpp
    llm = llama(n_ctx=512, logits_all=True)
    vocab = llm.n_vocab()
    sample = np.random.default_rng(1234).choice(vocab, N_SAMPLE, replace=False).tolist()
    out = {"llama_cpp_python": llama_cpp.__version__, "gguf": os.path.basename(GGUF), "threads": THREADS,
           "sample_ids": sorted(sample), "prompts": []}
    for p in PROMPTS:
        ids = llm.tokenize(p["text"].encode(), add_bos=False, special=True)
        lg, new = run_prompt(llm, ids)
        positions = []
        for row in lg:
            top = np.argsort(-row, kind="stable")[:TOP_K]
            positions.append({"top_ids": top.tolist(), "top_logits": [round(float(row[i]), 4) for i in top],
                              "sample_logits": [round(float(row[i]), 4) for i in out["sample_ids"]]})
        out["prompts"].append({"name": p["name"], "text": p["text"], "ids": ids, "positions": positions,
                               "greedy": new})
    return out


def full_logits(path):
    llm = llama(n_ctx=512, logits_all=True)
    arrays = {}
    for p in PROMPTS:
        ids = llm.tokenize(p["text"].encode(), add_bos=False, special=True)
        lg, new = run_prompt(llm, ids)
        arrays[p["name"] + "_ids"] = np.array(ids, dtype=np.int64)
        arrays[p["name"] + "_logits"] = lg
        arrays[p["name"] + "_greedy"] = np.array(new, dtype=np.int64)
    np.savez(path, **arrays)


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "tokens":
        out = tokens()
        cases = out.pop("cases")
        head = json.dumps(out, ensure_ascii=False)[:-1]
        lines = [json.dumps(c, ensure_ascii=False) for c in cases]  # one case a line
        sys.stdout.write(head + ', "cases": [\n' + ",\n".join(lines) + "\n]}")
    elif cmd == "logits":
        json.dump(logits(), sys.stdout, indent=None, separators=(",", ":"))
    elif cmd == "full-logits":
        full_logits(sys.argv[2])
    else:
        sys.exit(__doc__)
    if cmd in ("tokens", "logits"):
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
