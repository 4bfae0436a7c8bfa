#!/usr/bin/env bash
# Pack a run folder without its weights, to move it to another machine (or bring it back) where
# `prunescope run CONFIG --out RUN` resumes it. What stays out: model weights (*.safetensors,
# *.bin, *.gguf), recovery checkpoints (checkpoints/, *.pt: adapter and optimizer state) and
# tokenizer copies (tokenizer.json). What that means for the resumed run: docs/guide.md,
# "Running on a GPU machine". `python experiments/preflight.py CONFIG --moved` rehearses it.
#
#   bash experiments/pack_run.sh RUN [ARCHIVE]      # ARCHIVE default: RUN.tgz beside RUN
#   tar xzf ARCHIVE -C runs/                       # unpack it as runs/<name of RUN>
set -euo pipefail
if [ $# -lt 1 ] || [ ! -d "$1" ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
RUN=$(cd "$1" && pwd)
ARCHIVE=${2:-$RUN.tgz}
# the same list as experiments/preflight.py's MOVED_WITHOUT: keep the two alike
tmp=$(mktemp "$ARCHIVE.XXXXXX")
trap 'rm -f "$tmp"' EXIT
tar czf "$tmp" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.gguf' --exclude='*.pt' \
  --exclude='checkpoints' --exclude='tokenizer.json' -C "$(dirname "$RUN")" "$(basename "$RUN")"
chmod 644 "$tmp"
mv "$tmp" "$ARCHIVE"  # whole or not at all: a packing cut short leaves no archive behind
trap - EXIT
echo "$ARCHIVE: $(du -h "$ARCHIVE" | cut -f1) (run folder $(du -sh "$RUN" | cut -f1))"
