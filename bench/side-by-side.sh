#!/usr/bin/env bash
# One benchmark run, portier and InsightFace's Python FaceAnalysis side by side, on the same
# photos, the same models (SCRFD-500M at 640x640 + w600k_mbf float32) and the same ONNX Runtime
# (1.31.1), one after the other on an otherwise idle machine.
# Usage: bench/side-by-side.sh [PHOTO...]   (default: the 1080p Obama frame of the shared assets)
set -euo pipefail
cd "$(dirname "$0")/.."
assets=${PORTIER_ASSETS:-$(cd .. && pwd)/shared/assets}
export PORTIER_ASSETS=$assets
[ $# -gt 0 ] || set -- "$assets/faces/full/face_recognition/obama-1080p.jpg"
ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime)
export ORT_DYLIB_PATH
cargo build --locked --release --quiet
py=$(bench/install.sh)
echo "== $(date -u +%FT%TZ) on $(uname -srm)"
echo "== portier: target/release/portier -c board/laptop.toml bench pipeline --repeat 30 $*"
target/release/portier -c board/laptop.toml bench pipeline --repeat 30 "$@"
echo
echo "== InsightFace: $py bench/insightface_bench.py --repeat 30 $*"
"$py" bench/insightface_bench.py --repeat 30 "$@"
