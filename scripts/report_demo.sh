#!/usr/bin/env bash
# A small REAL sweep that feeds every figure of `python -m rarespur report`, then the report itself.
#
#   scripts/report_demo.sh [RESULTS_DIR]        (default results/report_demo; the report lands in RESULTS_DIR/report)
#
# Real MNIST from ${RARESPUR_DATA:-../shared/data}, cut to 3,000 training and 1,000 test images and
# 2 epochs so the whole script takes a few minutes on 2 CPU cores. The numbers are therefore not the
# paper's (70 epochs on 60,000 images); the script shows that every experiment type feeds its figure.
# Finished runs are skipped, so running it again only redraws the report.
#   1-3, 8, 10  train: patterns s1, s3, r3; n = 0 (clean baseline), 3, 10, 100; data seeds 0, 1;
#               LargeMLP with Adam and SGD, and MLP with Adam (architecture comparison)
#   4           train: L2 strengths 1e-4 .. 1e-2 and Gaussian input noise sigma 0.1 .. 2 (S3, n = 0, 10, 100)
#   6, 7        sensitivity: pixel removal + first-layer weight maps of clean and poisoned MLPs
#   9           incremental_retraining and group_influence (each also runs retrain_exact), when registered
#   5           mem_inference, when registered in rarespur/experiments/__init__.py
#   11          the closed-form theory curves need no runs
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
DATA=${RARESPUR_DATA:-../shared/data}
OUT=${1:-results/report_demo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(dataset=mnist "data.root=$DATA" "results_dir=$OUT" device=cpu progress=false
        data.train_limit=3000 data.test_limit=1000 epochs=2)

registered() {  # is experiment $1 in the registry?
    "$PY" -c "import sys; from rarespur.experiments import EXPERIMENTS; sys.exit('$1' not in EXPERIMENTS)"
}
sweep() {  # one Hydra multirun; only the per-run summary lines are shown
    echo "== python run.py -m $*"
    "$PY" run.py -m "${COMMON[@]}" "$@" 2>&1 | grep -E '^run |Error|error' || true
}

# 1-3, 8, 10: score vs n per pattern, optimizers, architectures, pattern norm, example images
sweep model=mlp3x256 optim=adam,sgd pattern=s1,s3,r3 poison.count=0,3,10,100 poison.seed=0,1
sweep model=mlp1x256 optim=adam pattern=s1,s3,r3 poison.count=0,3,10,100 poison.seed=0,1
# 4: regularisation trade-off (the unregularized reference runs are above)
sweep model=mlp3x256 optim=adam pattern=s3 poison.count=0,10,100 regularizer=l2 regularizer.strength=1e-4,1e-3,1e-2
sweep model=mlp3x256 optim=adam pattern=s3 poison.count=0,10,100 regularizer=gaussian_noise \
      regularizer.sigma=0.1,0.5,2.0
# 6, 7: sensitivity of the trained models (reuses the train runs above)
sweep experiment=sensitivity model=mlp1x256,mlp3x256 optim=adam pattern=s3 poison.count=0,100 sensitivity.images=300
# 9: deletion
if registered incremental_retraining; then
    sweep experiment=incremental_retraining model=mlp3x256 optim=adam pattern=s3 poison.count=10,100 \
          poison.seed=0,1 deletion.epochs=2
fi
if registered group_influence; then
    sweep experiment=group_influence model=mlp3x256 optim=adam pattern=s3 poison.count=10,100 \
          influence.depth=100 influence.repeats=2
fi
# 5: membership inference
if registered mem_inference; then
    sweep experiment=mem_inference model=mlp3x256 optim=adam pattern=r3 poison.count=1,10,50 poison.seed=0,1
else
    echo "== mem_inference is not registered yet: its figures will say 'not drawn'"
fi

"$PY" -m rarespur report "$OUT"
