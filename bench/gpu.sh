#!/usr/bin/env bash
# bench/worker.py on the GPU machine, against the CUDA build of llama.cpp in shared/gpu.
#
# Run from the repository root on that machine, with (both git-ignored, carried by the device tool):
#   .gpu/  a copy of shared/gpu, plus pylib/ = llama_cpp from the venv without its lib/ and diskcache
#   .whl/  cp312 wheels the machine lacks: pydantic (+ core, annotated-types, typing-inspection,
#          typing-extensions) and sseclient-py for rbee; fastapi, starlette, sse-starlette, starlette-context,
#          pydantic-settings, python-dotenv, uvicorn, opentelemetry-api for llama_cpp.server
# Extra arguments go to bench/worker.py. Output: the table on stdout, and in $OUT/bench.txt when OUT is set.
#   bash bench/gpu.sh --trace [tracewave args] -- [worker args]   runs bench/tracewave.py there instead;
#   bash bench/gpu.sh --exec CMD...                                 runs CMD with the same environment.
set -euo pipefail
G=${G:-$PWD/.gpu}
OUT=${OUT:-$(mktemp -d)}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rbee-site .whl/*.whl
export PYTHONPATH=/tmp/rbee-site:$G/pylib:$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ ! -f "$G/lib/libggml-cuda.so.0" ]; then
  python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" \
    "$G/lib/libggml-cuda.so.0.xz" "$G/lib/libggml-cuda.so.0"
fi
for f in "$G"/lib/*.so.0; do ln -sf "$(basename "$f")" "${f%.0}"; done
export LD_LIBRARY_PATH=$G/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LLAMA_CPP_LIB_PATH=$G/lib
MODEL=${MODEL:-/tmp/rbee-smollm2-shaped.gguf}
[ -f "$MODEL" ] || python3 "$G/mkmodel.py" "$G" "$MODEL"
export PYTHONUNBUFFERED=1
if [ "${1:-}" = "--exec" ]; then  # any command, with this environment (e.g. python3 bench/gpu_smoke.py "$MODEL")
  shift
  exec "$@"
fi
if [ "${1:-}" = "--trace" ]; then
  shift
  exec python3 bench/tracewave.py --model "$MODEL" "$@"
fi
# llama.cpp's own raw decode rate on this model, for scale (no server, no HTTP).
"$G/bin/llama-bench" -m "$MODEL" -ngl 99 -p 0 -n 256 -r 3 2>&1 | tee "$OUT/llama-bench.txt" || true
python3 bench/worker.py --model "$MODEL" --gpu-layers 999 --llama-server "$G/bin/llama-server" \
  --no-quiet-gate "$@" 2>&1 | tee "$OUT/bench.txt"
