"""What loading the commit once as a Redis Function would save: the commit script run with
EVALSHA (as the pipeline does) against the same text registered once with FUNCTION LOAD and run
with FCALL, alternated on one server (REDIS_PORT, default 6379; it is FLUSHALLed), 1 and 12
entries per call, one RPUSH effect per entry. INFO commandstats (evalsha vs fcall usec).

The library wraps the script's own text in `redis.register_function(name, function(KEYS, ARGV)
... end)`, after common.lua and effects.lua at the library's top level (defined once, at load).
Their per-call state (`counts`, effects.lua's OWNED tables) is reset at the start of each call:
a library keeps top-level locals between calls, a script does not."""
import os, sys
sys.path.insert(0, os.path.dirname(__file__))
import lua_lib
r = lua_lib.conn()
common = lua_lib.text([])
eff = lua_lib.text(['effects.lua'])[len(common) + 1:]
com = lua_lib.text(['commit.lua'])[len(common) + 1:]
script = common + "\n" + eff + "\n" + com
library = ("#!lua name=es_bench\n" + common + "\n" + eff + "\n"
           "redis.register_function('es_bench_commit', function(KEYS, ARGV)\n"
           "for k in pairs(counts) do counts[k] = nil end\n"
           "OWNED_EXACT, OWNED_PREFIXES = {}, {}\n"
           + com + "\nend)\n")

def trial(kind, n_entries, calls=300):
    r.flushall()
    r.xgroup_create('{x}:events', 'g', id='0', mkstream=True)
    tot = n_entries * calls
    p = r.pipeline(transaction=False)
    for i in range(tot):
        p.xadd('{x}:events', {'k': 'k%d' % i})
    p.execute()
    pend = [e for e, _ in r.xreadgroup('g', 'c0', {'{x}:events': '>'}, count=tot)[0][1]]
    sha = r.script_load(script)
    r.config_resetstat()
    for c in range(calls):
        argv = ['g', '{x}:ledger:', '60000', '3600000', 'fence,ledger', n_entries]
        for j, eid in enumerate(pend[c * n_entries:(c + 1) * n_entries]):
            argv += [eid, 'c0', '1', '%032x' % (c * 1000 + j), '1000', 1, 3, 'RPUSH', '{x}:fx', 'rec']
        keys = ['{x}:events', '{x}:stats', '{x}:dead']
        if kind == 'evalsha':
            res = r.evalsha(sha, 3, *keys, *argv)
        else:
            res = r.fcall('es_bench_commit', 3, *keys, *argv)
        assert all(x == 1 for x in res), res
    st = r.info('commandstats')['cmdstat_' + kind]
    stats = r.hgetall('{x}:stats')
    assert int(stats[b'committed']) == tot, stats  # the counts were reset per call
    print(f"{kind:8} {n_entries:2}/call: {st['usec'] / tot:6.2f} us/entry ({st['usec'] / calls:7.1f} us/call)")

def empty(kind, calls=2000):
    """The definitions alone: common.lua + effects.lua, then `return 1`."""
    sha = r.script_load(common + "\n" + eff + "\nreturn 1")
    r.config_resetstat()
    for _ in range(calls):
        r.evalsha(sha, 0) if kind == 'evalsha' else r.fcall('es_bench_empty', 0)
    st = r.info('commandstats')['cmdstat_' + kind]
    print(f"{kind:8} definitions + return 1: {st['usec'] / calls:6.2f} us/call")

r.function_load(library + "redis.register_function('es_bench_empty', function() return 1 end)\n", replace=True)
for _ in range(2):
    empty('evalsha')
    empty('fcall')
for _ in range(2):
    for n in (1, 12):
        trial('evalsha', n)
        trial('fcall', n)
r.function_delete('es_bench')
