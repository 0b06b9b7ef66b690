"""make soak: the release daemon under steady load with 1% upstream faults for a long time
(SOAK_MINUTES, default 30), sampling its resident memory, open file descriptors and
per-minute p99 latency. Fails when RSS grows more than 5% after warm-up, the fd count
drifts, or p99 drifts more than 20% between the first and last measured minute.

Load: SOAK_CONC keep-alive clients (default 16), each as fast as it gets answers, paced to
SOAK_RATE requests per second in total (default 1000; set it to half of what `make bench`
measured on your machine). Only 127.0.0.1; every loop is bounded by the deadline."""

import http.client
import json
import os
import signal
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
os.environ.setdefault("FG_BUILD", os.path.join(HERE, "..", "..", "build"))
import harness  # noqa: E402
from harness import Gateway, Mock, rmtree, tmpdir  # noqa: E402

MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))
CONC = int(os.environ.get("SOAK_CONC", "16"))
RATE = float(os.environ.get("SOAK_RATE", "1000"))
WARMUP_S = min(120.0, MINUTES * 60 / 4)

ROUTES = """routes:
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: %s/v1/chat/completions, api_key: soak-upstream }
    timeout: 2
"""
BODY = json.dumps({"model": "soak", "messages": [{"role": "user", "content": "steady"}]})


def proc_stat(pid):
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def client(port, key, deadline, per_client_rate, lat, errors, counter, lock):
    conn = None
    i = 0
    interval = 1.0 / per_client_rate
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        i += 1
        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        if i % 100 == 0:
            headers["X-Mock-Fail"] = ("500", "reset", "status:429")[i // 100 % 3]   # 1% faults
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            t0 = time.monotonic()
            conn.request("POST", "/v1/chat/completions", body=BODY, headers=headers)
            r = conn.getresponse()
            r.read()
            dt = time.monotonic() - t0
            with lock:
                lat.append((t0, dt))
                counter[r.status] = counter.get(r.status, 0) + 1
        except (OSError, http.client.HTTPException) as e:
            with lock:
                errors.append(repr(e))
            conn = None
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        elif pause < -1:
            next_at = time.monotonic()   # running behind: do not burst to catch up


def main():
    d = tmpdir("fg-soak-")
    mock = Mock(d)
    gw = Gateway(d, ROUTES % mock.url)
    key = gw.create_key("soak")["key"]
    start = time.monotonic()
    deadline = start + MINUTES * 60
    lat, errors, counter, lock = [], [], {}, threading.Lock()
    threads = [threading.Thread(target=client, args=(gw.port, key, deadline, RATE / CONC, lat, errors,
                                                     counter, lock)) for _ in range(CONC)]
    for t in threads:
        t.start()
    samples = []   # (t, rss_kB, fds)
    ok = True
    try:
        while time.monotonic() < deadline:
            time.sleep(min(10.0, max(0.1, deadline - time.monotonic())))
            samples.append((time.monotonic() - start,) + proc_stat(gw.proc.pid))
            t, rss, fds = samples[-1]
            print("  t=%5.0fs rss=%d kB fds=%d requests=%d" % (t, rss, fds, sum(counter.values())), flush=True)
    finally:
        for t in threads:
            t.join(30)
    after_warmup = [s for s in samples if s[0] >= WARMUP_S]
    if len(after_warmup) < 2:
        print("FAIL soak too short to judge (SOAK_MINUTES=%s)" % MINUTES)
        ok = False
    else:
        rss0, rss1 = after_warmup[0][1], after_warmup[-1][1]
        fd0, fd1 = after_warmup[0][2], after_warmup[-1][2]
        growth = (rss1 - rss0) / rss0 * 100

        def p99(lo, hi):
            xs = sorted(dt for t0, dt in lat if lo <= t0 - start < hi)
            return xs[int(len(xs) * 0.99) - 1] * 1000 if len(xs) >= 100 else float("nan")
        first = p99(WARMUP_S, WARMUP_S + 60)
        last = p99(MINUTES * 60 - 60, MINUTES * 60)
        drift = (last - first) / first * 100
        total = sum(counter.values())
        print("soak: %.1f min, %d requests (%.0f/s), statuses %s, client errors %d" %
              (MINUTES, total, total / (MINUTES * 60), json.dumps(counter, sort_keys=True), len(errors)))
        print("soak: rss %d -> %d kB (%+.1f%%), fds %d -> %d, p99 first/last minute %.1f / %.1f ms (%+.0f%%)"
              % (rss0, rss1, growth, fd0, fd1, first, last, drift))
        checks = [("rss growth < 5%", growth < 5), ("fd count flat (+-8)", abs(fd1 - fd0) <= 8),
                  ("p99 drift < 20%", drift < 20), ("no client errors", not errors)]
        for name, good in checks:
            print("%s %s" % ("ok  " if good else "FAIL", name))
            ok = ok and good
    rc = gw.stop(signal.SIGTERM)
    mock.stop()
    rmtree(d)
    ok = ok and rc == 0
    print("%d passed, %d failed" % ((1, 0) if ok else (0, 1)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
