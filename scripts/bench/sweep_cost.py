"""Cost per key/entry of a script: OLD_REV (default HEAD) against the working tree,
alternated on one server (REDIS_PORT, default 6379; it is FLUSHALLed). INFO commandstats."""
import os, sys, time
sys.path.insert(0, os.path.dirname(__file__))
import lua_lib
r=lua_lib.conn()
old, new = lua_lib.old_and_new(['sweep.lua'])
def trial(src,label,n=20000,batch=1000):
    sha=r.script_load(src)
    r.flushall()
    p=r.pipeline(transaction=False)
    now=int(time.time()*1000)
    for i in range(n):
        k='{x}:k:%d'%i
        p.zadd('{x}:idx',{k:now-1000})
        p.hset('{x}:pay',k,'payload-%d'%i)
    p.execute()
    r.config_resetstat()
    tot=0
    while True:
        res=r.evalsha(sha,4,'{x}:idx','{x}:pay','{x}:events','{x}:stats',batch)
        tot+=res[0]
        if res[1]==0: break
    us, inner = lua_lib.per_item(r, n)
    print(f"{label:6} emitted {tot} evalsha {us:.2f} us/key", inner)
for _ in range(2):
    trial(old,'old'); trial(new,'new')
