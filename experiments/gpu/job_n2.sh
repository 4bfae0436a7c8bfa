# Start (or restart after a kill) each job of .carry/jobs.txt ("name|command" lines) that has not
# finished, then pack every run folder into $OUT every 45 s for $1 seconds (what is there when the
# call is cut off still comes back). Jobs run detached, side by side on the one GPU.
source .carry/setup.sh; source .carry/pack.sh
W=${1:-540}; t0=$SECONDS
export PS="python3 -m prunescope"
start() {  # name, command: runs detached; logs/<name>.rc is written when it ends
  local n=$1; shift
  [ -f /root/runs/logs/$n.rc ] && return
  pgrep -f "JOB=$n " >/dev/null && return
  echo "starting $n"
  setsid nohup bash -c "JOB=$n ; cd $PWD; $* ; echo \$? > /root/runs/logs/$n.rc" >> /root/runs/logs/$n.log 2>&1 < /dev/null &
}
names=()
while IFS='|' read -r n cmd; do
  [ -z "$n" ] || [ "${n:0:1}" = "#" ] && continue
  names+=("$n"); start "$n" "$cmd"
done < .carry/jobs.txt
all_done() { for n in "${names[@]}"; do [ -f /root/runs/logs/$n.rc ] || return 1; done; }
while [ $((SECONDS - t0)) -lt $((W - 45)) ]; do
  sleep 45; pack >/dev/null 2>&1
  for n in "${names[@]}"; do echo "$n: $(grep -v Warning /root/runs/logs/$n.log | tail -c 300 | tr '\r' '\n' | tail -2 | tr '\n' ' ')"; done
  all_done && break
done
pack; for n in "${names[@]}"; do echo "== $n rc $(cat /root/runs/logs/$n.rc 2>/dev/null)"; grep -v Warning /root/runs/logs/$n.log | tail -c 1500; done
