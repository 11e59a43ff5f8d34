#!/usr/bin/env bash
# Side-by-side speed of statekv and llama.cpp on the same GGUF files, same threads, one run.
# The commands and the peer build are described in docs/benchmarks.md; this script is what
# produced the tables there.
#
#   tools/bench_vs_llamacpp.sh LLAMA_BUILD_BIN_DIR OUT_DIR [THREADS] [PARTS]
#
# LLAMA_BUILD_BIN_DIR: the bin/ folder of llama.cpp built from the llama-cpp-python==0.3.36 sdist
# (see docs/benchmarks.md). OUT_DIR: models, logs and results. PARTS: any of
# text,vision,qwen3vl,video (default: all). statekv must be installed in the active Python.
set -euo pipefail
LLAMA_BIN=${1:?llama.cpp bin dir}
OUT=${2:?output dir}
T=${3:-2}
PARTS=${4:-text,vision,qwen3vl,video}
mkdir -p "$OUT"
cd "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
has() { [[ ",$PARTS," == *",$1,"* ]]; }

# Random weights at real shapes, written by statekv's own writers in llama.cpp's layout.
[ -f qwen2.5-0.5b-q8_0.gguf ] || statekv bench make-model --shape qwen2.5-0.5b --type q8_0 qwen2.5-0.5b-q8_0.gguf -q
[ -f internvl3-1b-q8_0.gguf ] || statekv bench make-model --shape internvl3-1b --type q8_0 internvl3-1b-q8_0.gguf -q
MMPROJ=$(python -c "from statekv.bench.vision import random_mmproj_path; from statekv.bench.frames import _cache_dir; print(random_mmproj_path('internvl3-1b', 'f16', _cache_dir()))")
python -c "import json, statekv; print(json.dumps(statekv.ggml_info(), indent=1))" > ggml_info.json
log "ggml: $(python -c "import statekv; i = statekv.ggml_info(); print(i['version'], i['cpu_variant'], i['cpu_features'])")"

if has text; then
  log "text: llama-bench"
  "$LLAMA_BIN/llama-bench" -m qwen2.5-0.5b-q8_0.gguf -p 256 -n 0 -d 0,4096 -fa 1 -t "$T" -r 3 -o json > llama_bench_text.json 2> llama_bench_text.log
  log "text: statekv bench text"
  statekv bench text -m qwen2.5-0.5b-q8_0.gguf -p 256 -d 0,4096 -t "$T" -r 3 -o json > statekv_bench_text.json
fi

if has vision; then
  # One 448x448 frame: one InternVL tile (256 visual tokens), the same input on both sides.
  python - <<'EOF'
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
Image.fromarray(rng.integers(0, 255, (448, 448, 3), dtype=np.uint8)).save("frame448.png")
EOF
  log "vision: llama-mtmd-cli (image encode, 3 runs)"
  for i in 1 2 3; do
    "$LLAMA_BIN/llama-mtmd-cli" -m internvl3-1b-q8_0.gguf --mmproj "$MMPROJ" --image frame448.png -p "Describe." \
      -n 1 -t "$T" --temp 0 -fa on > mtmd_image_$i.log 2>&1 || true
  done
  log "vision: statekv bench frames (encoder + one LLM step at depth 0)"
  statekv bench frames --shape internvl3-1b --type q8_0 --mmproj-type f16 -t "$T" --modes full --steps 3 \
    --encode-reps 3 --compare 1,3 --json statekv_frames_vision.json --plot '' > statekv_frames_vision.txt 2>&1
fi

if has qwen3vl; then
  # The Qwen3-VL-2B tower on one 640x352 image (20x11 merged tokens on both sides).
  [ -f qwen3-vl-2b-q8_0.gguf ] || statekv bench make-model --shape qwen3-vl-2b --type q8_0 qwen3-vl-2b-q8_0.gguf -q
  MMPROJ_QWEN3VL=$(python -c "from statekv.bench.vision import random_mmproj_path; from statekv.bench.frames import _cache_dir; print(random_mmproj_path('qwen3-vl-2b', 'f16', _cache_dir()))")
  python - <<'EOF'
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
Image.fromarray(rng.integers(0, 255, (352, 640, 3), dtype=np.uint8)).save("frame640x352.png")
EOF
  log "qwen3vl: llama-mtmd-cli (image encode, 3 runs)"
  for i in 1 2 3; do
    "$LLAMA_BIN/llama-mtmd-cli" -m qwen3-vl-2b-q8_0.gguf --mmproj "$MMPROJ_QWEN3VL" --image frame640x352.png \
      -p "Describe." -n 1 -t "$T" --temp 0 -fa on -c 4096 > mtmd_qwen3vl_$i.log 2>&1 || true
  done
  log "qwen3vl: statekv bench frames (encoder)"
  statekv bench frames --shape qwen3-vl-2b --type q8_0 --mmproj-type f16 -t "$T" --modes full --steps 2 \
    --encode-reps 3 --source-size 640x352 --json statekv_frames_qwen3vl.json --plot '' > statekv_frames_qwen3vl.txt 2>&1
fi

if has video; then
  python - <<'EOF'
from statekv.video import write_test_video
write_test_video("video16.mkv", n_frames=64, fps=4, size=(448, 448))
EOF
  log "video: llama-mtmd-cli --video (16 frames at 1 fps)"
  /usr/bin/time -v "$LLAMA_BIN/llama-mtmd-cli" -m internvl3-1b-q8_0.gguf --mmproj "$MMPROJ" --video video16.mkv \
    --video-fps 1 -p "What happens in this video?" -n 16 -t "$T" --temp 0 -fa on -c 8192 > mtmd_video.log 2>&1 || true
  for mode in full statekv; do
    log "video: statekv ask --mode $mode"
    /usr/bin/time -v statekv ask -m internvl3-1b-q8_0.gguf --mmproj "$MMPROJ" --video video16.mkv --fps 1 \
      --mode $mode --budget 4096 -n 16 -t "$T" "What happens in this video?" > statekv_video_$mode.log 2>&1 || true
  done
fi
log "done: $OUT"
