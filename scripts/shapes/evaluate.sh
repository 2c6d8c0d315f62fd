#!/usr/bin/env bash
# Scores a shapes-world model on the held-out split of both renderers, through the evaluation harness
# (`eval run` + `eval score --benchmark shapes`), and asks the issue's questions through `caption` as a user would.
# Usage: scripts/shapes/evaluate.sh MODEL_DIR WORK_DIR
#   WORK_DIR/data/eval must exist (scripts/shapes/train.sh writes it); the alt-renderer split is generated here.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:?model folder}
WORK=${2:?work folder}
SEED=${SEED:-1}
THREADS=${THREADS:-2}
OUT=${OUT:-$WORK/eval-$(basename "$MODEL")}

dotnet build tools/ShareGPT4V.Shapes -c Release -v q -nologo >/dev/null
dotnet build samples/ShareGPT4V.Cli -c Release -v q -nologo >/dev/null
shapes() { dotnet tools/ShareGPT4V.Shapes/bin/Release/net10.0/sharegpt4v-shapes.dll "$@"; }
cli() { dotnet samples/ShareGPT4V.Cli/bin/Release/net10.0/sharegpt4v.dll "$@"; }
mkdir -p "$OUT"

# The alt renderer's held-out split: another seed, no training data.
[ -f "$WORK/alt/eval/questions.jsonl" ] || shapes generate --out "$WORK/alt" --seed $((SEED + 1000)) --renderer alt \
  --stage1 0 --stage2 0 --eval 200

for split in data alt; do
  cli eval run --benchmark shapes --model "$MODEL" --questions "$WORK/$split/eval/questions.jsonl" \
    --image-folder "$WORK/$split" --answers "$OUT/answers-$split.jsonl" --threads "$THREADS" --batch-size 8
  cli eval score --benchmark shapes --answers "$OUT/answers-$split.jsonl" --annotations "$WORK/$split/eval" --json \
    > "$OUT/scores-$split.json"
  echo "== $split"; cat "$OUT/scores-$split.json"
done

# The CLI contract of the issue: one prompt over a folder of images, one JSON line per image.
cli caption --model "$MODEL" --image "$WORK/alt/images/eval" --prompt "How many shapes are there in the image?" \
  --output "$OUT/cli-count-alt.jsonl" --threads "$THREADS"
echo "== cli: $(wc -l < "$OUT/cli-count-alt.jsonl") answers in $OUT/cli-count-alt.jsonl"
