"""Helpers for the script-cost microbenchmarks: a Redis connection and script texts from the
working tree or from any git revision (to compare two versions side by side on one server)."""
import os, subprocess
import redis

ROOT = subprocess.check_output(['git', 'rev-parse', '--show-toplevel'], text=True).strip()
LUA = 'src/store/lua/'

def conn():
    return redis.Redis(port=int(os.environ.get('REDIS_PORT', '6379')))

def text(files, rev=None):
    """common.lua then FILES, as the server runs them (store::scripts::source!)."""
    out = []
    for f in ['common.lua'] + files:
        if rev:
            out.append(subprocess.check_output(['git', 'show', f'{rev}:{LUA}{f}'], cwd=ROOT, text=True))
        else:
            out.append(open(os.path.join(ROOT, LUA, f)).read())
    return '\n'.join(out)

def old_and_new(files):
    """The script as of OLD_REV (default HEAD) and as in the working tree."""
    return text(files, os.environ.get('OLD_REV', 'HEAD')), text(files)

def per_item(r, n):
    """After CONFIG RESETSTAT and n items: EVALSHA's us per item and each inner command's."""
    st = r.info('commandstats')
    inner = {k[8:]: round(v['usec'] / n, 2) for k, v in st.items()
             if k not in ('cmdstat_evalsha', 'cmdstat_config|resetstat')}
    return st['cmdstat_evalsha']['usec'] / n, inner
