#!/usr/bin/env bash
# The learning demonstrations recorded in the README ("Real learning"): each prints one JSON result.
# Run: bash runs/learning.sh > learning.jsonl   (about 15-20 minutes on 2 cores)
set -euo pipefail
run() { cellsearch eval "$@" --format json | python -c "import json,sys; r=json.load(sys.stdin); r.pop('history'); print(json.dumps(r))"; }
run lstm --task adding --task-opt length=100 --hp hidden=128 --hp batch=50 --hp lr=0.001 --hp steps=6000 --hp eval_every=250 --hp patience=100 --hp time_budget=300
run lstm --task copy --task-opt length=50 --hp hidden=64 --hp batch=32 --hp lr=0.005 --hp steps=4000 --hp eval_every=250 --hp patience=100 --hp time_budget=240
run lstm_fb1 --task delayed_recall --task-opt lag=200 --hp hidden=32 --hp batch=32 --hp lr=0.005 --hp steps=1500 --hp eval_every=100 --hp patience=100 --hp time_budget=180
run rnn --task delayed_recall --task-opt lag=200 --hp hidden=32 --hp batch=32 --hp lr=0.005 --hp steps=1500 --hp eval_every=100 --hp patience=100 --hp time_budget=180
run lstm --task chorales --hp hidden=64 --hp batch=16 --hp lr=0.005 --hp steps=1500 --hp eval_every=100 --hp patience=5 --hp time_budget=180
run gru --task chorales --hp hidden=64 --hp batch=16 --hp lr=0.005 --hp steps=1500 --hp eval_every=100 --hp patience=5 --hp time_budget=180
