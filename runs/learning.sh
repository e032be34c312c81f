#!/usr/bin/env bash
# The learning demonstrations recorded in the README ("Real learning"); each prints one JSON line.
# Run from the repository root: bash runs/learning.sh > learning.jsonl   (about 30 minutes, 2 cores)
# The text rows first write a small PTB-layout corpus (runs/text_corpus.py; never committed).
set -euo pipefail
run() { cellsearch eval "$@" --format json | python -c "import json,sys; r=json.load(sys.stdin); r.pop('history'); print(json.dumps(r))"; }
LAG="--task delayed_recall --task-opt lag=200 --hp hidden=64 --hp batch=64 --hp lr=0.01 --hp steps=1500 --hp eval_every=250 --hp patience=100"
run lstm --task adding --task-opt length=100 --hp hidden=128 --hp batch=50 --hp lr=0.001 --hp steps=6000 --hp eval_every=250 --hp patience=100
run lstm --task copy --task-opt length=50 --hp hidden=64 --hp batch=32 --hp lr=0.005 --hp steps=12000 --hp eval_every=500 --hp patience=100
run runs/lstm_fb5.cell $LAG
run nfg $LAG
run lstm $LAG
run rnn $LAG
CHRONO="--task delayed_recall --task-opt lag=200 --hp hidden=64 --hp batch=64 --hp lr=0.01 --hp steps=500 --hp eval_every=100 --hp patience=100 --hp gate_init=chrono"
run lstm $CHRONO
run rnn $CHRONO
run lstm --task digits --hp steps=200 --hp hidden=32
run lstm --task chorales --hp hidden=64 --hp batch=16 --hp lr=0.005 --hp steps=1500 --hp eval_every=100 --hp patience=5
run gru --task chorales --hp hidden=64 --hp batch=16 --hp lr=0.005 --hp steps=1500 --hp eval_every=100 --hp patience=5
CORPUS="${TMPDIR:-/tmp}/cellsearch_lady_susan"
python runs/text_corpus.py "$CORPUS" >&2
TEXT="--task text --task-opt path=$CORPUS --task-opt level=char --task-opt length=50 --hp hidden=128 --hp batch=32 --hp lr=0.005 --hp steps=2500 --hp eval_every=250 --hp patience=100"
ARITH="--task arithmetic --hp hidden=128 --hp batch=64 --hp lr=0.005 --hp steps=1500 --hp eval_every=250 --hp patience=100"
XML="--task xml --task-opt max_steps=10 --hp hidden=64 --hp batch=32 --hp lr=0.01 --hp steps=3000 --hp eval_every=250 --hp patience=100"
for cell in lstm rnn; do run $cell $TEXT; run $cell $ARITH; run $cell $XML; done
