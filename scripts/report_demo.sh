#!/usr/bin/env bash
# A tiny REAL sweep of every experiment type, then `python -m rarespur collect` and `python -m rarespur report`.
#
#   scripts/report_demo.sh [RESULTS_DIR [REPORT_DIR]]
#
# RESULTS_DIR defaults to a new temporary folder (mktemp -d)/results, REPORT_DIR to RESULTS_DIR/report.
# Data: the embedded digits set (no download), cut to 600 training and 200 test images, 3 epochs, small
# method settings, so the whole script takes about 2-3 minutes on 2 CPU cores. The numbers are therefore
# not the paper's; the script shows that every experiment type runs and feeds the report.
# Finished runs are skipped, so running it again on the same RESULTS_DIR only redraws the report.
#
# Every step prints its name and the commands' full output; the script stops at the first step that fails
# and names it. Environment:
#   PYTHON               the interpreter (default: .venv/bin/python of the repository if it exists, else python)
#   RARESPUR_DEMO_EXTRA  extra Hydra overrides appended to every run.py step, split on whitespace
#                        (e.g. RARESPUR_DEMO_EXTRA="epochs=5 device=cuda")
#
# Steps (the report's figures they feed in brackets); the derived experiments reuse the train runs of their config:
#   train                   mlp1x256, mlp3x256 x Adam, SGD x patterns s3, r3 x n = 0 (clean), 10, 50
#                           [score vs n, architectures, optimizers, pattern norm, example images]
#   train with regularizers gaussian_noise (input noise sigma) and l2 (lambda) at 0.01, 0.1, 1
#                           [regularization trade-off]
#   sensitivity, incremental_retraining (+ its reference retrain_exact), group_influence, detect, xbl,
#   mem_inference, debias (vanilla and SiH)    a few small runs each  [their figures]
set -euo pipefail

abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

if [ $# -gt 2 ]; then
    echo "usage: $0 [RESULTS_DIR [REPORT_DIR]]" >&2
    exit 2
fi
if [ $# -ge 1 ]; then
    OUT=$(abspath "$1")
else
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/rarespur_report_demo.XXXXXX")/results
fi
REPORT=$(abspath "${2:-$OUT/report}")

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
read -r -a EXTRA <<<"${RARESPUR_DEMO_EXTRA:-}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread a process: faster than 2 for these tiny models

COMMON=(dataset=digits device=cpu progress=false "results_dir=$OUT"
        data.train_limit=600 data.test_limit=200 epochs=3)
SMALL=(model=mlp1x256 optim=adam pattern=s3)  # the setting the derived experiments share with the train step

STEP=0
step() {  # step NAME COMMAND...: print the name, run the command with its full output, stop if it fails
    local name=$1 start=$SECONDS rc=0
    shift
    STEP=$((STEP + 1))
    printf '\n=== step %d: %s\n' "$STEP" "$name"
    "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '\nreport_demo: step %d (%s) failed with exit code %d; stopping\n' "$STEP" "$name" "$rc" >&2
        exit "$rc"
    fi
    printf '=== step %d: %s done in %d s\n' "$STEP" "$name" $((SECONDS - start))
}
show() {  # show COMMAND...: echo the command line, then run it
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    "$@"
}
sweep() {  # one Hydra multirun of the shared settings; its logs go to RESULTS_DIR/.hydra/<step>
    show "$PY" run.py -m "${COMMON[@]}" "hydra.sweep.dir=$OUT/.hydra/$STEP" "$@" ${EXTRA[@]+"${EXTRA[@]}"}
}

echo "report_demo: results in $OUT, report in $REPORT"
step "prepare folders" show mkdir -p "$OUT" "$REPORT"
# train runs: score vs n per pattern, architectures, optimizers, pattern norm, example images (n = 0: the clean
# baseline, shared by both patterns)
step "train" sweep model=mlp1x256,mlp3x256 optim=adam,sgd pattern=s3,r3 poison.count=0,10,50
# regularization trade-off: input noise (sigma) and L2 (lambda); the unregularized reference runs are train's
step "train with regularizers (gaussian_noise = input noise, l2)" \
    sweep "${SMALL[@]}" poison.count=0,10,50 regularizer=gaussian_noise,l2 regularizer.strength=0.01,0.1,1.0
# the derived experiments reuse the train step's runs of the same config
step "sensitivity" sweep experiment=sensitivity "${SMALL[@]}" poison.count=0,50 sensitivity.images=50
step "incremental_retraining (runs retrain_exact, its reference)" \
    sweep experiment=incremental_retraining "${SMALL[@]}" poison.count=10,50 deletion.epochs=1
step "group_influence" sweep experiment=group_influence "${SMALL[@]}" poison.count=10,50 \
    influence.depth=20 influence.repeats=2 influence.curvature_examples=0
step "detect" sweep experiment=detect "${SMALL[@]}" poison.count=50 \
    detect.num_images=50 'detect.patch_sizes=[3,5]' 'detect.patch_values=[1.0]' detect.stride=2
step "xbl" sweep experiment=xbl "${SMALL[@]}" poison.count=10,50 xbl.mask=truth xbl.epochs=1
step "mem_inference" sweep experiment=mem_inference model=mlp1x256 optim=adam pattern=r3 poison.count=3 \
    'mem.attacks=[shadow,loss]'
# lr 0.003 (the recipe's 0.001 learns nothing in 3 epochs); SiH stays near chance at this scale
step "debias" sweep experiment=debias debias=vanilla,sih pattern=s3 poison.count=0,50 train.lr=0.003
step "collect" show "$PY" -m rarespur collect "$OUT"
step "report" show "$PY" -m rarespur report "$OUT" --out "$REPORT"

printf '\nreport_demo: done in %d s; the report is %s (figures: %s/*.png)\n' "$SECONDS" "$REPORT/index.md" "$REPORT"
