"""Cost per key of the batched write (set_with_ttl): OLD_REV (default HEAD) against the working
tree, alternated on one server (REDIS_PORT, default 6379; it is FLUSHALLed). INFO commandstats."""
import os, sys
sys.path.insert(0, os.path.dirname(__file__))
import lua_lib
r = lua_lib.conn()
old, new = lua_lib.old_and_new(['write.lua'])

def trial(src, label, n=50000, batch=256):
    sha = r.script_load(src)
    r.flushall()
    r.config_resetstat()
    for b in range(0, n, batch):
        keys = ['{x}:k:%d' % i for i in range(b, min(b + batch, n))]
        argv = []
        for k in keys:
            argv += ['60000', 'payload-' + k]
        r.evalsha(sha, 4 + len(keys), '{x}:idx', '{x}:pay', '{x}:events', '{x}:stats', *keys, *argv)
    us, inner = lua_lib.per_item(r, n)
    print(f"{label:4} evalsha {us:6.2f} us/key", inner)

for _ in range(2):
    trial(old, 'old')
    trial(new, 'new')
