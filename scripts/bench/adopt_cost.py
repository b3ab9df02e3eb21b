"""What adoption costs Redis (issue 13): the adopt script per key (as the listener calls it, in
bursts), the deadline index's memory per adopted key, and the reconcile scan per million keys
of the database. One redis-server (REDIS_PORT, default 6379; it is FLUSHALLed). INFO
commandstats and INFO memory. Usage: python3 scripts/bench/adopt_cost.py [KEYS]"""
import os, sys, time
sys.path.insert(0, os.path.dirname(__file__))
import lua_lib
r = lua_lib.conn()
n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
ns = 'ab'
keys4 = ['{ab}:idx', '{ab}:pay', '{ab}:events', '{ab}:stats']
adopt = r.script_load(lua_lib.text(['adopt.lua']))

def load(prefix, count, ttl_ms):
    p = r.pipeline(transaction=False)
    for i in range(count):
        p.set(f'{prefix}{i}', 'v' * 16, px=ttl_ms)
        if i % 1000 == 999:
            p.execute()
    p.execute()

def used():
    return r.info('memory')['used_memory']

r.flushall()
load('ext:', n, 3_600_000)
before = used()
def adopt_all(burst, copy_max):
    for i in range(0, n, burst):
        r.evalsha(adopt, 4 + min(burst, n - i), *keys4, *[f'ext:{j}' for j in range(i, min(i + burst, n))], '{ab}:', copy_max)

for burst in (1, 64):
    r.delete(*keys4)
    r.config_resetstat()
    adopt_all(burst, 0)
    st = r.info('commandstats')
    us = st['cmdstat_evalsha']['usec'] / n
    inner = {k[8:]: round(v['usec'] / n, 2) for k, v in st.items() if k not in ('cmdstat_evalsha', 'cmdstat_config|resetstat')}
    assert r.zcard('{ab}:idx') == n
    print(f"adopt, bursts of {burst:2}: {us:6.2f} us of Redis CPU per key adopted  {inner}")
    if burst == 64:
        # Adopting the same keys again (a second listener, a later scan): idempotent, and what it costs.
        r.config_resetstat()
        adopt_all(burst, 0)
        st = r.info('commandstats')
        print(f"adopt again (already indexed), bursts of 64: {st['cmdstat_evalsha']['usec'] / n:6.2f} us per key")
after = used()
print(f"index memory per adopted key: {(after - before) / n:.1f} bytes (INFO used_memory; keys of {len('ext:199999')} bytes; no value copied)")
# With the value copy (16-byte values, bound 64): CPU per key in bursts of 64, and the payload hash's memory.
r.delete(*keys4)
base = used()
r.config_resetstat()
adopt_all(64, 64)
st = r.info('commandstats')
inner = {k[8:]: round(v['usec'] / n, 2) for k, v in st.items() if k not in ('cmdstat_evalsha', 'cmdstat_config|resetstat')}
assert r.hlen('{ab}:pay') == n
print(f"adopt with the value copy (16-byte values), bursts of 64: {st['cmdstat_evalsha']['usec'] / n:6.2f} us per key {inner}; "
      f"index + payload memory per key: {(used() - base) / n:.1f} bytes")

# The reconcile scan over a database of `total` keys of which `n` match: SCAN MATCH COUNT 1000.
total = 1_000_000
load('bg:', total - n, 3_600_000)
r.config_resetstat()
cursor, steps, found, t0 = 0, 0, 0, time.time()
while True:
    cursor, ks = r.scan(cursor, match='ext:*', count=1000)
    steps += 1
    found += len(ks)
    if cursor == 0:
        break
st = r.info('commandstats')['cmdstat_scan']
print(f"reconcile scan of {total:,} keys ({n:,} matching): {steps} steps, {st['usec'] / 1000:.1f} ms of Redis CPU "
      f"({st['usec'] / (total / 1e6) / 1000:.1f} ms per million keys), found {found:,}, wall {time.time() - t0:.1f} s")
r.flushall()
