# $1: seconds this call may run in all (default 570; less when little device time is left)
set -x
t0=$SECONDS
source .carry/setup.sh; source .carry/pack.sh
cd /root/stash && ls | wc -l
mkdir -p /root/cache/gguf /root/runs/logs
cat p?? > w.tar && tar xf w.tar && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site w/*.whl 2>&1 | tail -3
mkdir -p /root/cache/gguf /root/runs/logs
cat $(ls q?? | sort) > /root/cache/gguf/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
rm -f q?? p?? w.tar
cd - >/dev/null
sha256sum /root/cache/gguf/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
python3 -c "import transformers, lm_eval, evalplus, datasets, torch; print(transformers.__version__, torch.__version__, torch.cuda.is_available())"
python3 - <<'PY' > /root/runs/logs/fp.log 2>&1; rc=$?
import torch
from prunescope.probe.models import load_model, check_fingerprint
for dt in ("float32", "bfloat16"):
    lm = load_model("qwen2.5-coder-1.5b", device="cuda", dtype=dt)
    print(dt, "fingerprint max diff", check_fingerprint(lm, "benchmarks/fingerprints/qwen2.5-coder-1.5b.json"))
    del lm; torch.cuda.empty_cache()
PY
tail -5 /root/runs/logs/fp.log; echo "setup done at $((SECONDS-t0)) s, fingerprint rc $rc"
[ $rc = 0 ] || { pack; exit 1; }
# run folders an earlier session left unfinished (no weights): the run resumes from them
for t in experiments/gpu/resume/*.tgz; do [ -f "$t" ] && [ ! -d /root/runs/$(basename $t .tgz) ] && tar xzf $t -C /root/runs; done
ls /root/runs
bash .carry/job_n2.sh $((${1:-570} - (SECONDS-t0)))
