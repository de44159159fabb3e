#!/usr/bin/env python3
"""llama.cpp's side of the SmolLM2 comparison: writes the reference that tests/test_smollm2.cpp
checks loom against, from llama-cpp-python (scripts/venv.sh --llama) on the GGUF that
scripts/fetch_smollm2.sh fetches.

  .venv/bin/python scripts/smollm2_reference.py tokens  > tests/data/smollm2_tokens.json
  .venv/bin/python scripts/smollm2_reference.py logits  > tests/data/smollm2_logits.json
  .venv/bin/python scripts/smollm2_reference.py full-logits OUT.npz   (every logit, not committed)
  .venv/bin/python scripts/smollm2_reference.py compare DIR  (every logit against loom's, written to
      DIR by `LOOM_SMOLLM2_LOGITS_OUT=DIR build/loom_tests --gtest_filter=SmolLM2.Logits*`)

tokens: for each text of TEXTS, llama.cpp's ids with special tokens parsed and not
(Llama.tokenize(text, add_bos=False, special=...)).
logits: for each prompt of PROMPTS (ids as llama.cpp tokenizes them, no bos: the GGUF says
add_bos_token = false), llama.cpp's logits over the prompt (logits_all, 2 threads): per position
the top-K ids and logits and the logits of a fixed sample of ids; then the greedy continuation
(argmax of each step's logits, up to N_NEW tokens or eos) with each step's top-K. Twice: on the
Q4_1 file ("prompts") and on the same weights dequantized to F32 by gguf-py ("prompts_f32",
data/smollm2/SmolLM2-135M-Instruct.F32.gguf, written on first use): llama.cpp rounds activations to
8 bits for Q4_1/Q8_0 dot products but computes F32 weights in fp32."""
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


GGUF_F32 = os.path.join(ROOT, "data", "smollm2", "SmolLM2-135M-Instruct.F32.gguf")


def llama(path=GGUF, **kw):
    from llama_cpp import Llama
    return Llama(model_path=path, n_threads=THREADS, n_threads_batch=THREADS, verbose=False, **kw)


def write_f32_gguf():
    """The Q4_1 file with every tensor dequantized to F32 by gguf-py (the weights loom imports).
    llama.cpp multiplies F32 weights in fp32, so this separates its 8-bit activation rounding
    (Q4_1/Q8_0 dot products) from any difference in the model itself."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize
    r = GGUFReader(GGUF)
    w = GGUFWriter(GGUF_F32 + ".tmp", "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        if k == "general.file_type":
            w.add_uint32(k, 0)  # ALL_F32
        elif f.types[0] == GGUFValueType.ARRAY:
            w.add_key_value(k, f.contents(), f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(k, f.contents(), f.types[0])
    for t in r.tensors:
        w.add_tensor(t.name, dequantize(t.data, t.tensor_type).astype(np.float32)
                     .reshape([int(x) for x in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(GGUF_F32 + ".tmp", GGUF_F32)


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


def run_prompt(llm, ids, steps=None):
    """Logits over the prompt (rows of llm.scores) and the greedy continuation; `steps`, if a list,
    gets each greedy step's top-K ids and logits."""
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    new, eos = [], llm.token_eos()
    for _ in range(N_NEW):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        tok = int(np.argmax(row))
        new.append(tok)
        if steps is not None:
            top = np.argsort(-row, kind="stable")[:TOP_K]
            steps.append({"top_ids": top.tolist(), "top_logits": [round(float(row[i]), 4) for i in top]})
        if tok == eos:
            break
        llm.eval([tok])
    return logits, new


def logits():
    """Both files: "prompts" from the Q4_1 GGUF, "prompts_f32" from its F32 dequantization."""
    import llama_cpp
    if not os.path.exists(GGUF_F32):
        write_f32_gguf()
    vocab = llama(vocab_only=True).n_vocab()
    sample = np.random.default_rng(1234).choice(vocab, N_SAMPLE, replace=False).tolist()
    out = {"llama_cpp_python": llama_cpp.__version__, "gguf": os.path.basename(GGUF), "threads": THREADS,
           "sample_ids": sorted(sample)}
    out["prompts"] = prompt_logits(llama(GGUF, n_ctx=512, logits_all=True), out["sample_ids"])
    out["prompts_f32"] = prompt_logits(llama(GGUF_F32, n_ctx=512, logits_all=True), out["sample_ids"])
    return out


def prompt_logits(llm, sample_ids):
    prompts = []
    for p in PROMPTS:
        ids = llm.tokenize(p["text"].encode(), add_bos=False, special=True)
        steps = []
        lg, new = run_prompt(llm, ids, steps)
        positions = []
        for row in lg:
            top = np.argsort(-row, kind="stable")[:TOP_K]
            positions.append({"top_ids": top.tolist(), "top_logits": [round(float(row[i]), 4) for i in top],
                              "sample_logits": [round(float(row[i]), 4) for i in sample_ids]})
        prompts.append({"name": p["name"], "text": p["text"], "ids": ids, "positions": positions,
                        "greedy": new, "greedy_steps": steps})
    return prompts


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


def compare(loom_dir):
    """Every logit: loom's (LOOM_SMOLLM2_LOGITS_OUT=DIR of tests/test_smollm2.cpp) vs llama.cpp's,
    on the Q4_1 file and on its F32 dequantization."""
    if not os.path.exists(GGUF_F32):
        write_f32_gguf()
    for path in (GGUF, GGUF_F32):
        print(os.path.basename(path))
        compare_file(llama(path, n_ctx=512, logits_all=True), loom_dir)


def compare_file(llm, loom_dir):
    for p in PROMPTS:
        ids = llm.tokenize(p["text"].encode(), add_bos=False, special=True)
        ref, _ = run_prompt(llm, ids)
        got = np.fromfile(os.path.join(loom_dir, p["name"] + ".f32"), dtype=np.float32).reshape(ref.shape)
        diff = np.abs(got - ref)
        agree = int((got.argmax(1) == ref.argmax(1)).sum())
        # The same logits up to a shift matter for sampling: compare log-softmax too.
        def lsm(x):
            x = x - x.max(1, keepdims=True)
            return x - np.log(np.exp(x).sum(1, keepdims=True))
        print(f"{p['name']}: {len(ids)} positions x {ref.shape[1]} logits: max |diff| {diff.max():.4f}, "
              f"mean {diff.mean():.4f}, logit range {ref.min():.1f}..{ref.max():.1f}, argmax agrees {agree}/{len(ids)}, "
              f"max |log-softmax diff| {np.abs(lsm(got) - lsm(ref)).max():.4f}")


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
    elif cmd == "compare":
        compare(sys.argv[2])
    else:
        sys.exit(__doc__)
    if cmd in ("tokens", "logits"):
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
