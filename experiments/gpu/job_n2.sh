# Start (or restart after a kill) each job of .carry/jobs.txt ("name|command" lines) that has not
# finished, then pack every run folder into $OUT every 45 s for $1 seconds (what is there when the
# call is cut off still comes back). Jobs run detached: side by side on a GPU of SIDE_BY_SIDE_GIB
# (100) or more (the H200's 139 GB), else one at a time in the file's order (an H100's 80 GB does not
# hold the recovery's training beside three evaluation workers), the next starting when one ends.
source .carry/setup.sh; source .carry/pack.sh
W=${1:-540}; t0=$SECONDS
export PS="python3 -m prunescope"
gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
one_at_a_time=$(( ${gpu_mib:-0} < ${SIDE_BY_SIDE_GIB:-100} * 1024 ))
echo "GPU memory ${gpu_mib:-?} MiB: $([ $one_at_a_time = 1 ] && echo 'jobs one at a time' || echo 'jobs side by side')"
# done: exited 0, or started twice in this call and not running (a job that failed or was killed starts
# again once: its run folder resumes where it stopped, as the retention run would have after one
# stage ran out of GPU memory on 2026-12-07)
finished() { [ "$(cat /root/runs/logs/$1.rc 2>/dev/null)" = 0 ] || { [ ${starts[$1]:-0} -ge 2 ] && ! running $1; }; }
running() { pgrep -f "JOB=$1 " >/dev/null; }
declare -A starts
start() {  # name, command: runs detached (in a subshell, so an `exit` in it still leaves logs/<name>.rc)
  local n=$1; shift
  starts[$n]=$(( ${starts[$n]:-0} + 1 ))
  rm -f /root/runs/logs/$n.rc
  echo "starting $n"
  setsid nohup bash -c "JOB=$n ; cd $PWD; ( $* ) ; echo \$? > /root/runs/logs/$n.rc" >> /root/runs/logs/$n.log 2>&1 < /dev/null &
}
names=(); declare -A cmds
while IFS='|' read -r n cmd; do
  [ -z "$n" ] || [ "${n:0:1}" = "#" ] && continue
  names+=("$n"); cmds[$n]=$cmd
done < .carry/jobs.txt
launch() {  # start what may start now
  for n in "${names[@]}"; do
    finished $n && continue
    running $n || start "$n" "${cmds[$n]}"
    [ $one_at_a_time = 1 ] && return
  done
}
all_done() { for n in "${names[@]}"; do finished $n || return 1; done; }
launch
while [ $((SECONDS - t0)) -lt $((W - 45)) ]; do
  sleep ${POLL_S:-45}; pack >/dev/null 2>&1
  for n in "${names[@]}"; do echo "$n: $(grep -v Warning /root/runs/logs/$n.log 2>/dev/null | tail -c 300 | tr '\r' '\n' | tail -2 | tr '\n' ' ')"; done
  all_done && break
  launch
done
pack; for n in "${names[@]}"; do echo "== $n rc $(cat /root/runs/logs/$n.rc 2>/dev/null)"; grep -v Warning /root/runs/logs/$n.log 2>/dev/null | tail -c 1500; done
