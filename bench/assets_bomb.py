"""Uploads an assets bundle of N empty files (in directories of 1000) to a fresh
`tabula serve --admin-listen` and reports the answer, its time and the server's peak RSS.

    python3 bench/assets_bomb.py target/release/tabula 18302 1000000

Loopback only; the server is started and killed by the script.
"""
import subprocess, time, struct, urllib.request, sys, re, os
binary=sys.argv[1]; port=int(sys.argv[2]); n=int(sys.argv[3])
env=dict(os.environ, TABULA_ADMIN_TOKEN="bench-token-0123456789abcdef", TABULA_PROCESSES="1")
p=subprocess.Popen([binary,"serve","--store","memory","--listen","127.0.0.1:0","--operator-listen","off","--admin-listen",f"127.0.0.1:{port}"],env=env,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
time.sleep(2)
def hwm():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmHWM"): return int(l.split()[1])//1024
base=hwm()
b=bytearray(b"tabula-assets 1\n")
for i in range(n):
    path=f"d{i//1000}/f{i}".encode()
    b+=struct.pack("<I",len(path))+path+struct.pack("<Q",0)
req=urllib.request.Request(f"http://127.0.0.1:{port}/v1/assets",data=bytes(b),method="PUT",headers={"Authorization":"Bearer bench-token-0123456789abcdef"})
t=time.time()
try:
    r=urllib.request.urlopen(req,timeout=300); status=r.status; body=r.read()[:100]
except urllib.error.HTTPError as e:
    status=e.code; body=e.read()[:120]
dt=time.time()-t
print(f"{binary}: {n} files ({len(b)/1e6:.1f} MB): status {status} in {dt:.2f} s; peak RSS {base} -> {hwm()} MiB (+{hwm()-base}); {body!r}")
p.kill()
