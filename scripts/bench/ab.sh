#!/bin/bash
# One `run` of BINARY against the redis-server on REDIS_PORT (default 6379; FLUSHALLed), with
# Redis's CPU per event from INFO cpu before and after. Usage: ab.sh LABEL BINARY [run args]
# REDIS_URL overrides the URL the run connects to (for example unix:///path/redis.sock on the
# same server).
port=${REDIS_PORT:-6379}
url=${REDIS_URL:-redis://127.0.0.1:$port/}
label=$1; bin=$2; shift 2
cpu() { redis-cli -p $port info cpu | awk -F: '/^used_cpu_(user|sys):/{s+=$2} END{printf "%.3f", s}'; }
redis-cli -p $port flushall >/dev/null
c0=$(cpu)
TIMEFORMAT='%U %S'
# The client's CPU (user + sys of the run process) from bash's `time`.
client=$({ time $bin run --redis-url $url --report ${TMPDIR:-/tmp}/$label.json "$@" >/dev/null 2>&1; } 2>&1 | awk '{print $1+$2}')
c1=$(cpu)
python3 - "$label" "$c0" "$c1" "$client" <<'PY'
import json,os,sys
l,c0,c1,client=sys.argv[1],float(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4])
r=json.load(open(f"{os.environ.get('TMPDIR','/tmp')}/{l}.json"))
o=r['oracle']
print(f"{l:14} rate {r['rate_keys_per_s']:7.0f}/s spread {r['per_consumer']['spread_pct']:5.2f}% over {r['per_consumer']['consumers']} | capture p99 {r['deadline_to_capture_ms']['p99']} | effect p50 {r['deadline_to_effect_ms']['p50']} p99 {r['deadline_to_effect_ms']['p99']} ms | redis cpu {(c1-c0)*1e6/o['created']:.1f} us/event | client cpu {client*1e6/o['created']:.1f} us/event | lost {o['lost']} dup {o['duplicate_effects']}")
PY
