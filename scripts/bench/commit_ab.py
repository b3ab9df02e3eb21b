"""Cost per key/entry of a script: OLD_REV (default HEAD) against the working tree,
alternated on one server (REDIS_PORT, default 6379; it is FLUSHALLed). INFO commandstats."""
import os, sys, time
sys.path.insert(0, os.path.dirname(__file__))
import lua_lib
r=lua_lib.conn()
old, new = lua_lib.old_and_new(['effects.lua','commit.lua'])
def trial(src,label,n_entries=12,calls=300,consumers=1,with_effect=True):
    sha=r.script_load(src)
    r.flushall()
    r.xgroup_create('{x}:events','g',id='0',mkstream=True)
    tot=n_entries*calls
    p=r.pipeline(transaction=False)
    for i in range(tot): p.xadd('{x}:events',{'k':'k%d'%i})
    p.execute()
    pend=[]
    for c in range(consumers):
        pend+= [(e, 'c%d'%c) for e,_ in r.xreadgroup('g','c%d'%c,{'{x}:events':'>'},count=tot//consumers)[0][1]]
    # interleave pending: 64 workers finishing out of order -> commit every other entry first
    order = pend[0::2]+pend[1::2]
    r.config_resetstat()
    for c in range(calls):
        argv=['g','{x}:ledger:','60000','3600000','fence,ledger',n_entries]
        for j,(eid,cons) in enumerate(order[c*n_entries:(c+1)*n_entries]):
            argv+=[eid,cons,'1','%032x'%(c*1000+j),'1000']
            argv+= [1,3,'RPUSH','{x}:fx','rec'] if with_effect else [0]
        res=r.evalsha(sha,3,'{x}:events','{x}:stats','{x}:dead',*argv)
        assert all(x==1 for x in res), res
    us, inner = lua_lib.per_item(r, tot)
    print(f"{label:4} {n_entries}/call {consumers} consumer(s): {us:6.2f} us/entry", inner)
for _ in range(2):
    for n in (1,12):
        trial(old,'old',n); trial(new,'new',n)
