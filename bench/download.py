"""Download throughput: fastpipes `download_images` against fastai's `download_images` on the same URL list.

A loopback server (`fastpipes.serve.LoopbackServer`, threaded, TCP_NODELAY like real web servers) serves N JPEGs over
H addresses 127.0.0.x, each response delayed server-side (100 ms by default: a slow web). Each side runs in its own
child process, so its peak RSS and CPU time are its own; the server lives in this parent process and is restarted per
side so the connection counts are per side. Both sides run with their defaults (fastai: 8 threads, no per-host limit,
a new connection per URL; fastpipes: httpcore on 4 asyncio loops, 100 downloads at once, at most 4 per host, each
worker's connection kept alive between the URLs of its host).

With at most `per_host` requests open per host, `hosts × per_host / delay` images per second is the most any client
can reach (800 img/s for 20 hosts, 4 per host, 100 ms): the "latency limit". The target is >= 60% of it.

    python bench/download.py [--n 1000] [--hosts 20] [--delay 0.1]
"""
import argparse, io, json, os, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from PIL import Image
from fastpipes.serve import LoopbackServer, Route

CHILD = r'''
import json, resource, sys, time
side, urls, dest = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
if side == 'fastai':
    from fastai.vision.utils import download_images
    run = lambda: download_images(dest, urls=urls)
else:
    from fastpipes.crawl import download_images
    run = lambda: download_images(urls, dest, allow_private=True, quiet=True)
cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
rss0, cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, cpu()
t0 = time.perf_counter(); run(); secs = time.perf_counter() - t0
print(json.dumps(dict(secs=secs, cpu=cpu() - cpu0, rss_import_kb=rss0, rss_peak_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
'''

def images(k:int, size=(320, 240))->list[bytes]:
    "`k` different noisy JPEGs, about 20-40 KB each, like thumbnails of photos."
    out = []
    for i in range(k):
        im = Image.effect_noise(size, 20 + 3*i).convert('RGB').rotate(i * 7)
        b = io.BytesIO(); im.save(b, 'JPEG', quality=85); out.append(b.getvalue())
    return out

def run_side(side:str, n:int, hosts:int, delay:float, bodies:list[bytes], tmp:Path)->dict:
    route = lambda p: Route(bodies[int(p.rsplit('/', 1)[1].split('.')[0]) % len(bodies)], delay=delay)
    with LoopbackServer(route, hosts=hosts) as srv:
        urls = [srv.url(f'/img/{i}.jpg', host=i % hosts) for i in range(n)]
        (tmp/'urls.json').write_text(json.dumps(urls))
        dest = tmp/side
        c0 = time.process_time()
        r = subprocess.run([sys.executable, '-c', CHILD, side, str(tmp/'urls.json'), str(dest)], cwd=ROOT,
                           capture_output=True, text=True, timeout=1800)
        if r.returncode: raise SystemExit(f"{side} failed:\n{r.stderr[-3000:]}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res['server_cpu'] = time.process_time() - c0
        res.update(files=sum(1 for p in dest.rglob('*.jpg')), requests=srv.n_requests, connections=sum(srv.n_conns.values()),
                   max_conns_per_host=max(srv.max_conns.values()))
    res['images_per_s'] = res['files'] / res['secs']
    return res

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=1000, help="URLs")
    p.add_argument('--hosts', type=int, default=20, help="loopback addresses 127.0.0.1..")
    p.add_argument('--delay', type=float, default=0.1, help="server-side delay per response, seconds")
    p.add_argument('--per-host', type=int, default=4, help="fastpipes' per_host (its default), for the latency limit")
    a = p.parse_args()
    limit = a.hosts * a.per_host / a.delay
    bodies = images(50)
    print(f"{a.n} URLs over {a.hosts} loopback hosts, {a.delay*1000:g} ms per response, "
          f"{sum(map(len, bodies))/len(bodies)/1024:.0f} KB per image on average; latency limit {limit:g} images/s; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for side in ('fastai', 'fastpipes'):
            res[side] = r = run_side(side, a.n, a.hosts, a.delay, bodies, Path(d))
            print(f"{side:10} {r['files']:5} files in {r['secs']:6.2f} s = {r['images_per_s']:7.1f} images/s "
                  f"({r['images_per_s']/limit:4.0%} of the latency limit) | CPU {r['cpu']:5.2f} s (server {r['server_cpu']:.2f} s) | "
                  f"{r['connections']} connections, at most {r['max_conns_per_host']} per host | peak RSS {r['rss_peak_kb']/1024:6.0f} MB "
                  f"(after imports {r['rss_import_kb']/1024:.0f} MB)")
    fa, fp = res['fastai'], res['fastpipes']
    share = fp['images_per_s'] / limit
    print(f"fastpipes/fastai: {fp['images_per_s']/fa['images_per_s']:.2f}x images/s, peak RSS {fp['rss_peak_kb']/fa['rss_peak_kb']:.2f}x; "
          f"fastpipes at {share:.0%} of the latency limit ({limit:g} images/s) with at most {fp['max_conns_per_host']} connections per host: "
          f"target >= 60% {'met' if share >= 0.6 and fp['max_conns_per_host'] <= a.per_host else 'NOT met'}; "
          f"load average {os.getloadavg()[0]:.1f} at the end")

if __name__ == '__main__': main()
