# pack every run folder under /root/runs (no weights, no recovery checkpoints: their state.pt holds
# the optimizer, 440 MB for Qwen; no tokenizer copies) into $OUT, atomically and in pieces of 15 MB (the
# device tool returns files of up to 16 MiB): cat RUN.tgz.* > RUN.tgz here
# (experiments/preflight.py PACK_LEAVES strips the same files for its --moved rehearsal: keep them alike)
pack() {
  mkdir -p /root/pk
  for d in /root/runs/*/; do
    r=$(basename $d); [ $r = logs ] && continue
    tar czf /root/pk/$r.tgz --exclude='*.safetensors' --exclude='*.bin' --exclude='*.gguf' --exclude='tokenizer.json' --exclude='*.pt' --exclude='checkpoints' -C /root/runs $r 2>/dev/null
    # split beside $OUT, then swap in: a call cut off mid-pack still returns whole pieces
    rm -rf /root/pk/s; mkdir -p /root/pk/s; split -b 15000000 /root/pk/$r.tgz /root/pk/s/$r.tgz.; rm /root/pk/$r.tgz
    rm -f $OUT/$r.tgz*; mv /root/pk/s/* $OUT/
  done
  tar czf /root/pk/logs.tgz -C /root/runs logs 2>/dev/null; mv /root/pk/logs.tgz $OUT/logs.tgz
  ls -la $OUT; df -h /root | tail -1; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
}
