#!/usr/bin/env bash
# loom vs CTranslate2: the same trained encoder-decoder weights translate the test split with
# both, beam 4, batch 32, the same thread count; prints translation time, target tokens/s, BLEU
# and chrF of each (CTranslate2 fp32, and int8 as an extra row) and loom / CTranslate2 ratios.
#
#   bench/translate_ct2.sh CHECKPOINT [THREADS=2]
#
# CHECKPOINT: a loom checkpoint directory of an encoder_decoder recipe (e.g. runs/ende-small/
# averaged). Environment:
#   DATA_DIR  directory with test.en and test.de (default: data/ende of the repository)
#   SRC, TGT  source / target language suffixes (default: en, de)
#   LOOM      the loom binary (default: build/loom); LOOM= (empty) skips the loom rows
#   OUT       work directory for the exported model and the translations (default: out/ct2)
#   N         translate only the first N test sentences (default: all)
# Steps: scripts/venv.sh --ct2 (pinned ctranslate2, sentencepiece, safetensors, numpy, sacrebleu),
# bench/translate_ct2_export.py (CHECKPOINT -> OUT/model), a numpy-reference check of the export
# on 20 test pairs, the greedy agreement check (loom vs CTranslate2 at beam 1 on 20 sentences),
# then bench/translate_ct2.py bench. Every step runs one process at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
checkpoint=$1
threads=${2:-2}
data_dir=${DATA_DIR:-data/ende}
src_lang=${SRC:-en} tgt_lang=${TGT:-de}
loom=${LOOM-build/loom}
out=${OUT:-out/ct2}
src=$data_dir/test.$src_lang ref=$data_dir/test.$tgt_lang

for f in "$checkpoint/model.safetensors" "$checkpoint/recipe.yaml" "$checkpoint/tokenizer.model" "$src" "$ref"; do
  [ -f "$f" ] || { echo "translate_ct2: $f not found" >&2; exit 1; }
done
if [ -n "$loom" ] && [ ! -x "$loom" ]; then
  echo "translate_ct2: $loom not found (build loom first, or LOOM= for the CTranslate2 rows only)" >&2
  exit 1
fi

bash scripts/venv.sh --ct2
py=.venv/bin/python
mkdir -p "$out"

echo "== export: $checkpoint -> $out/model"
$py bench/translate_ct2_export.py "$checkpoint" "$out/model"

echo "== export check: CTranslate2's log-probs of 20 reference translations vs a numpy implementation of loom's model"
$py bench/translate_ct2.py reference "$checkpoint" "$out/model" "$src" "$ref" --n 20 --threads "$threads"

n_args=()
[ -n "${N:-}" ] && n_args=(--n "$N")
if [ -n "$loom" ]; then
  echo "== greedy agreement: loom vs CTranslate2 fp32, beam 1, first 20 test sentences"
  $py bench/translate_ct2.py greedy "$checkpoint" "$out/model" "$src" --n 20 --loom "$loom" --threads "$threads"
fi

echo "== bench: beam 4, batch 32, $threads threads"
$py bench/translate_ct2.py bench "$checkpoint" "$out/model" "$src" "$ref" --beam 4 --batch-size 32 \
  --threads "$threads" --loom "$loom" --save "$out/test.$tgt_lang" "${n_args[@]}" | tee "$out/results.md"
echo "(table saved to $out/results.md, translations to $out/test.$tgt_lang.*)"
