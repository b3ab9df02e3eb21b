"""Fixed cost of one EVALSHA call of growing parts of the commit script (REDIS_PORT, default
6379; it is FLUSHALLed). INFO commandstats."""
import os, sys
sys.path.insert(0, os.path.dirname(__file__))
import lua_lib
r=lua_lib.conn()
common=lua_lib.text([])
eff=lua_lib.text(['effects.lua'])[len(common)+1:]
com=lua_lib.text(['commit.lua'])[len(common)+1:]
def cost(src, nk, args, calls=2000, label=''):
    sha=r.script_load(src)
    r.config_resetstat()
    for _ in range(calls): r.evalsha(sha, nk, *args)
    st=r.info('commandstats')['cmdstat_evalsha']
    print(f"{label:40} {st['usec']/calls:7.1f} us/call")
r.flushall()
r.xgroup_create('{x}:events','g',id='0',mkstream=True)
cost("return 1",0,[],label='return 1')
cost(common+"\nreturn 1",0,[],label='common + return 1')
cost(common+"\n"+eff+"\nreturn 1",0,[],label='common+effects + return 1')
keys=['{x}:events','{x}:stats','{x}:dead']
cost(common+"\n"+eff+"\n"+com,3,keys+['g','{x}:ledger:','60000','3600000','fence,ledger',0],label='commit with 0 entries')
