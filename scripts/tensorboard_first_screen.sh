#!/usr/bin/env bash
# What a newcomer sees on opening TensorBoard: a 4-run sweep (2 norms x 2 seeds, 6 steps, ~1 min on
# 2 cores), TensorBoard on it, and headless Chromium screenshots of the default tab and of HParams.
#   scripts/tensorboard_first_screen.sh [OUT]      (needs chromium: apt-get install chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-reports/tensorboard_first_screen}
BIN=.venv/bin
PORT=${PORT:-6123}
command -v chromium >/dev/null || { echo "needs chromium (apt-get install chromium)" >&2; exit 2; }
test -f data/brain_phantom/.complete || make data
rm -rf "$OUT" && mkdir -p "$OUT"
$BIN/segbench train -m norm=none,batch seed=0,1 model.width=4 data.size=[48,48] trainer.max_steps=6 \
    trainer.val_every=2 trainer.progress=false trainer.threads=1 hydra/launcher=parallel hydra.launcher.n_jobs=2 \
    hydra.sweep.dir="$OUT/runs" > "$OUT/train.log" 2>&1
$BIN/tensorboard --logdir "$OUT/runs" --port "$PORT" > "$OUT/tensorboard.log" 2>&1 &
TB=$!
trap 'kill $TB' EXIT
sleep 8
# --disable-webgl: headless Chromium draws no WebGL lines; TensorBoard falls back to SVG charts.
shot() { chromium --headless=new --no-sandbox --disable-gpu --disable-webgl --window-size="$2" \
    --virtual-time-budget=15000 --screenshot="$OUT/$1.png" "http://localhost:$PORT/$3" 2>/dev/null; }
shot time_series 1400,1100 ""
shot hparams 1600,600 "#hparams"
echo "screenshots: $OUT/time_series.png (opens on train, then val) and $OUT/hparams.png"
