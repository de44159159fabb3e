#!/usr/bin/env bash
# Creates ./.venv with the PyPI packages that tests use as reference implementations (sacrebleu,
# the reference for loom's BLEU and chrF; gguf, numpy and safetensors for the GGUF and Hugging Face
# formats) and that bench/translate_ct2.sh uses (ctranslate2,
# sentencepiece, safetensors, numpy: the CTranslate2 side of the loom vs CTranslate2 benchmark). Idempotent and fast when nothing changed:
# pip runs only if a pinned package is missing or at another version.
set -euo pipefail
cd "$(dirname "$0")/.."

# gguf is llama.cpp's own GGUF reader/writer and quantizers (gguf-py); tests/test_gguf.cpp checks
# loom's GGUF files and codecs against it, and loom's Hugging Face export with numpy + safetensors.
pinned=(sacrebleu==2.6.0 gguf==0.19.0 numpy==2.4.6 safetensors==0.8.0)
# bench/translate_ct2.sh only: `scripts/venv.sh --ct2` adds these.
ct2_pinned=(ctranslate2==4.8.5 sentencepiece==0.2.3)
# bench/smollm2_llamacpp.sh and scripts/smollm2_reference.py only: `scripts/venv.sh --llama` adds
# llama.cpp's Python binding (its sdist compiles llama.cpp with cmake: about 25 min on 2 busy
# cores, run under nice).
llama_pinned=(llama-cpp-python==0.3.36)
for arg in "$@"; do
  case "$arg" in
    --ct2) pinned+=("${ct2_pinned[@]}") ;;
    --llama) pinned+=("${llama_pinned[@]}") ;;
    *) echo "venv: unknown option $arg" >&2; exit 2 ;;
  esac
done

# Debian's python (not a pyenv or conda one on PATH), so the venv is the same everywhere.
python=/usr/bin/python3
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "venv: installing python3-venv"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv

# Each pin as "name==version"; compare with what importlib.metadata reports.
missing=()
for pin in "${pinned[@]}"; do
  name=${pin%%==*} version=${pin#*==}
  installed=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  [ "$installed" = "$version" ] || missing+=("$pin")
done
if ((${#missing[@]})); then
  echo "venv: installing ${missing[*]}"
  nice -n 10 .venv/bin/python -m pip install -q --disable-pip-version-check "${missing[@]}"
fi
