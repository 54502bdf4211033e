#!/usr/bin/env bash
# The prepared check for a lent GPU machine (docs/performance.md, "A GPU machine"), one call per mode:
#   bash tools/gpu_check.sh ap      row 5 at equal epochs: the shapes Mask R-CNN recipe's epochs (5)
#                                   with our head defaults and with torchvision's, side by side
#                                   (about 6 min on an H200)
#   bash tools/gpu_check.sh tests   the CUDA tests (tests/test_cuda.py + exact resume on CUDA, ~3 min)
#   bash tools/gpu_check.sh gpu     row 8, trainer images/s against the textbook loop (about 70 s)
# Results go to $OUT (default /tmp/gpu_check): env.txt (card, versions), the benchmark JSON, and for
# `ap` the two run folders' metrics (bench/), so a run stopped by the time limit still shows its
# epochs. The machine needs torch, torchvision, pyyaml, tqdm, tensorboard; pycocotools is installed
# from wheels in .whl/ when missing (pip download pycocotools --no-deps --only-binary :all:
# --python-version 3.12 --platform manylinux2014_x86_64 -d .whl), carried with the working tree
# (the run tool's carry: [".whl"]). A dry run of `ap` on a CPU: DEVICE=cpu QUICK=1 (1 epoch, 96 scenes).
set -u
mode=${1:-ap}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import pycocotools" 2>/dev/null; then
    python -m pip install -q --no-deps --no-index --find-links .whl --target /tmp/site pycocotools \
        || { echo "pycocotools is missing and .whl/ has no wheel for this Python"; exit 2; }
fi
missing=$(python - <<'EOF'
import importlib.util
print(" ".join(m for m in ("torch", "torchvision", "yaml", "tqdm", "tensorboard", "pycocotools", "PIL")
               if importlib.util.find_spec(m) is None))
EOF
)
[ -n "$missing" ] && { echo "missing Python modules: $missing"; exit 2; }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
    nproc; git log --oneline -1 2>/dev/null
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
case "$mode" in
    ap)
        mkdir -p "$OUT/bench"
        # the run folders under $OUT: a run the limit stops still leaves its metrics.jsonl
        VISIONKIT_BENCH_TMP="$OUT/bench" timeout -s KILL "${AP_LIMIT:-560}" \
            python tools/benchmark.py --device "${DEVICE:-cuda}" ${QUICK:+--quick} --only detection_ap \
            --out "$OUT/benchmark-detection-ap-gpu.json"
        rc=$?
        find "$OUT/bench" -name "*.pt" -delete  # checkpoints are too large to come back
        find "$OUT/bench" -name metrics.jsonl | while read -r f; do echo "== $f"; tail -n 3 "$f"; done
        exit $rc ;;
    tests)
        python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/reliability/test_exact_resume.py -k "cuda" 2>&1 | tail -n 30 ;;
    gpu)
        python tools/benchmark.py --device cuda --only gpu --out "$OUT/benchmark-gpu.json" ;;
    *)
        echo "usage: bash tools/gpu_check.sh [ap|tests|gpu]"; exit 2 ;;
esac
