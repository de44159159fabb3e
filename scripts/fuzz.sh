#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] [HARNESS...]: builds loom's libFuzzer harnesses (fuzz/*.cpp) with clang,
# AddressSanitizer and UndefinedBehaviorSanitizer into build-fuzz/, seeds each corpus from files loom
# makes (a tiny trained checkpoint, its GGUF export, the recipes, corpus text), replays the saved
# regression inputs (fuzz/regressions/<harness>/), then fuzzes each harness for SECONDS (default
# 60) and prints one line per harness: executions, corpus size, findings. Exits 1 on any finding
# (saved under build-fuzz/findings/). Needs build/ (scripts/setup.sh): the harnesses compile the
# parser they test with coverage and sanitizers and take the rest from build/libloom.so.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
all=(gguf safetensors checkpoint recipe bpe_vocab tokenizers request translate)
harnesses=("${@:-${all[@]}}")
[[ ${#harnesses[@]} -eq 0 ]] && harnesses=("${all[@]}")
[[ -f build/libloom.so && -x build/loom ]] || { echo "fuzz.sh: build/ first (scripts/setup.sh)" >&2; exit 2; }
command -v clang++-14 >/dev/null || { echo "fuzz.sh: needs clang-14 and libclang-rt-14-dev (scripts/setup.sh)" >&2; exit 2; }

out=build-fuzz
mkdir -p "$out/obj" "$out/corpus" "$out/findings" "$out/seeds"

# The include paths and definitions CMake compiles loom with (the precompiled header left out).
flags=$(python3 - <<'PY'
import json, shlex
for entry in json.load(open("build/compile_commands.json")):
    if entry["file"].endswith("src/loom/io/safetensors.cpp"):
        words = shlex.split(entry["command"])
        keep, i = [], 0
        while i < len(words):
            w = words[i]
            if w in ("-isystem", "-I") and i + 1 < len(words):
                keep += [w, words[i + 1]]; i += 2; continue
            if w.startswith(("-I", "-D", "-isystem")):
                keep.append(w)
            i += 1
        print(" ".join(shlex.quote(k) for k in keep))
        break
PY
)
cxx=(clang++-14 -std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
     -fno-sanitize=vptr -fno-sanitize-recover=undefined "-I$PWD/src" "-I$PWD/fuzz")
eval "cxx+=($flags)"

declare -A sources=(
  [gguf]="src/loom/io/gguf.cpp src/loom/io/ggml_blocks.cpp"
  [safetensors]="src/loom/io/safetensors.cpp"
  [checkpoint]="src/loom/checkpoint/checkpoint.cpp src/loom/checkpoint/recipe.cpp src/loom/io/safetensors.cpp"
  [recipe]="src/loom/checkpoint/recipe.cpp src/loom/nn/config.cpp src/loom/core/config.cpp"
  [bpe_vocab]="src/loom/data/bpe_tokenizer.cpp src/loom/data/tokenizer.cpp"
  [tokenizers]="src/loom/data/bpe_tokenizer.cpp src/loom/data/tokenizer.cpp src/loom/core/utf8.cpp"
  [request]="src/loom/serve/request.cpp src/loom/data/bpe_tokenizer.cpp src/loom/core/utf8.cpp"
  [translate]="src/loom/infer/translate.cpp src/loom/data/tokenizer.cpp"
)

for h in "${harnesses[@]}"; do
  [[ -n ${sources[$h]+x} ]] || { echo "fuzz.sh: unknown harness '$h' (${all[*]})" >&2; exit 2; }
done
# A ninja file: objects rebuilt when a source or a header it includes changes, two at a time.
libs=$(python3 - <<'PY'
import re
# The libraries build/loom links (torch, fmt, yaml-cpp, ...), read off its link line.
text = open("build/build.ninja").read()
m = re.search(r"build loom: CXX_EXECUTABLE_LINKER__loom\S*.*?\n(?:  .*\n)*?  LINK_LIBRARIES = (.*)\n", text)
print(" ".join(w.replace('"', "") for w in m.group(1).split() if not re.match(r"(.*/)?libloom\.so", w)))
PY
)
{
  printf 'cxx = %s\n' "${cxx[*]}"
  printf 'rule cc\n  command = $cxx -fsanitize=fuzzer-no-link -MD -MF $out.d -c $in -o $out\n  depfile = $out.d\n'
  printf '  deps = gcc\n  description = CC $in\n'
  printf 'rule link\n  command = $cxx $in -o $out -Wl,-rpath,%s/build -L%s/build -lloom -Wl,--no-as-needed %s -Wl,--as-needed\n' \
    "$PWD" "$PWD" "$libs"
  printf '  description = LINK $out\n'
  declare -A done_obj=()
  for h in "${harnesses[@]}"; do
    objs=()
    for s in "fuzz/$h.cpp" ${sources[$h]}; do
      obj="obj/${s//\//_}.o"
      objs+=("$obj")
      [[ -n ${done_obj[$obj]+x} ]] || printf 'build %s: cc %s\n' "$obj" "$PWD/$s"
      done_obj[$obj]=1
    done
    printf 'build fuzz_%s: link %s | %s/build/libloom.so\n' "$h" "${objs[*]}" "$PWD"
  done
} > "$out/build.ninja"
echo "building ${harnesses[*]} (clang-14, ASan + UBSan + libFuzzer)"
if ! ninja -C "$out" -j "${FUZZ_JOBS:-2}" >"$out/build.log" 2>&1; then
  grep -v '^\[' "$out/build.log" >&2
  echo "fuzz.sh: building the harnesses failed (the log: $out/build.log)" >&2
  exit 2
fi

# Seeds: a tiny run's checkpoint and what loom makes from it, the recipes, text.
seeds=$out/seeds
if [[ ! -f $seeds/done ]]; then
  rm -rf "$seeds" && mkdir -p "$seeds/data/tiny"
  python3 - "$seeds/data/tiny" <<'PY'
import random, sys
rng = random.Random(7)
words = "the cat sat on a mat and dog ran to hall quickly café über naïve 東京 ünïcödé".split()
for name, n in (("train.txt", 400), ("valid.txt", 40), ("test.txt", 40)):
    with open(sys.argv[1] + "/" + name, "w") as f:
        for i in range(n):
            f.write(" ".join(rng.choice(words) for _ in range(12)) + " %d.\n" % i)
PY
  cat > "$seeds/tiny.yaml" <<EOF
format: 1
model: {vocab_size: 300, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, d_ff: 64, max_seq_len: 32, position: rope, norm: rmsnorm, ffn: swiglu, bias: false}
data: {corpus: tiny, dir: $PWD/$seeds/data}
train: {steps: 2, batch_size: 2, warmup_steps: 1, eval_every: 0, eval_batches: 1, precision: fp32}
EOF
  build/loom --threads 1 train "$seeds/tiny.yaml" --out "$seeds/run" >/dev/null 2>&1
  build/loom --threads 1 export "$seeds/run" --format gguf --type q8_0 --out "$seeds/tiny-q8.gguf" 2>/dev/null
  build/loom --threads 1 export "$seeds/run" --format gguf --type q4_0 --out "$seeds/tiny-q4.gguf" 2>/dev/null
  build/loom --threads 1 export "$seeds/run" --format gguf --type f16 --out "$seeds/tiny-f16.gguf" 2>/dev/null
  touch "$seeds/done"
fi
ckpt=$(ls -d "$seeds"/run/step-* | tail -1)
spm=$ckpt/tokenizer.model
seed() {  # harness file...
  local h=$1
  shift
  mkdir -p "$out/corpus/$h"
  for f in "$@"; do cp -f "$f" "$out/corpus/$h/seed-$(basename "$f")"; done
}
seed gguf "$seeds"/*.gguf
seed safetensors "$ckpt/model.safetensors" "$ckpt/optimizer.safetensors"
python3 - "$ckpt" "$out/corpus/checkpoint/seed-tiny" <<'PY'
import os, sys
ckpt, out = sys.argv[1:]
os.makedirs(os.path.dirname(out), exist_ok=True)
parts = [open(os.path.join(ckpt, f), "rb").read()
         for f in ("recipe.yaml", "trainer.json", "model.safetensors", "tokenizer.model")]
open(out, "wb").write(b"\n@@FILE@@\n".join(parts))
PY
seed recipe recipes/*.yaml recipes/*/*.yaml
printf 'model: {d_model: 64}\n@@SET@@\nmodel.n_layers=3\ntrain.lr=0.01\nmodel.layers=[attention, mamba]\n' \
  > "$out/corpus/recipe/seed-overrides"
python3 - "$out/corpus" <<'PY'
import json, os, sys
corpus = sys.argv[1]
def put(harness, name, data):
    os.makedirs(os.path.join(corpus, harness), exist_ok=True)
    open(os.path.join(corpus, harness, "seed-" + name), "wb").write(data)
printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
extra, tokens = 256, []
for b in range(256):
    tokens.append(chr(b if b in printable else extra))
    extra += b not in printable
vocab = {"model": "gpt2", "pre": "smollm", "tokens": tokens + ["th", "the", "<|im_start|>", "<|im_end|>"],
         "token_type": [1] * 258 + [3, 3], "merges": ["t h", "th e"], "bos_token_id": 258, "eos_token_id": 259}
put("bpe_vocab", "bytes.json", json.dumps(vocab).encode())
texts = ["the cat sat on the mat", "café über naïve 東京 😀", "a\tb\n\nc  d", "\xff\xfe bytes".encode("latin-1").decode("latin-1"), "12345 67.89"]
for i, t in enumerate(texts):
    put("tokenizers", "text%d" % i, t.encode("utf-8", "surrogateescape"))
    put("translate", "text%d" % i, (t + "\n" + t[::-1]).encode())
put("tokenizers", "raw", b"\xc3(\xe2\x82\xf0\x9f\x98 ok")
bodies = [(0, {"prompt": "the cat", "max_tokens": 4, "temperature": 0.7, "stop": ["\n"], "stream": True}),
          (0, {"prompt": ["one"], "max_tokens": 1, "top_p": 0.9, "top_k": 5, "seed": 3}),
          (1, {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi <|im_end|>"}],
               "max_completion_tokens": 8, "model": "loom"}),
          (1, {"messages": [{"role": "user", "content": "caf\u00e9"}], "stream": True, "stop": "x"})]
for i, (chat, body) in enumerate(bodies):
    put("request", "body%d" % i, bytes([chat]) + json.dumps(body).encode())
PY

export LOOM_FUZZ_SPM=$PWD/$spm
export LOOM_SENTENCEPIECE_SHIM=$PWD/build/libloom_sentencepiece.so
export ASAN_OPTIONS=detect_leaks=1:detect_odr_violation=0:allocator_may_return_null=1:detect_container_overflow=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
printf '%-12s %12s %10s %8s %s\n' harness executions exec/s corpus findings
for h in "${harnesses[@]}"; do
  log=$out/$h.log
  # Saved regressions first: each must pass.
  if [[ -d fuzz/regressions/$h ]] && ls fuzz/regressions/$h/* >/dev/null 2>&1; then
    if ! "$out/fuzz_$h" -runs=1 fuzz/regressions/$h/* >"$out/$h.regressions.log" 2>&1; then
      echo "$h: a saved regression input fails: see $out/$h.regressions.log"
      status=1
    fi
  fi
  rm -f "$out/findings/$h-"*
  "$out/fuzz_$h" "$out/corpus/$h" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -max_len=65536 \
    -artifact_prefix="$out/findings/$h-" -print_final_stats=1 >"$log" 2>&1 || true
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  found=$(find "$out/findings" -name "$h-*" | wc -l)
  printf '%-12s %12s %10s %8s %s\n' "$h" "${execs:-0}" "${rate:-0}" "$(ls "$out/corpus/$h" | wc -l)" "$found"
  if [[ $found -gt 0 || -z $execs || $execs -eq 0 ]]; then
    status=1
    grep -m3 -E 'ERROR|SUMMARY|runtime error|deadly signal|out-of-memory|timeout' "$log" | sed "s/^/  $h: /" || true
  fi
done
exit $status
