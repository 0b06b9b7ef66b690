"""End to end: memory after a burst (issue 21). Once most of the connections of a burst of
open streams have closed, the daemon gives the heap pages they freed back to the system
(malloc_trim, from a 10-second timer), so its RSS falls back instead of staying where the
burst left it. Runs the release build: the sanitizers' allocator keeps memory its own way."""

import json
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Mock, Proc, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

RELEASE = os.path.join(harness.ROOT, "build")
STREAMS = 800


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def test_rss_falls_back_after_a_burst_of_open_streams_closes():
    d = tmpdir("fg-mem-")
    mock = Mock(d)
    fg = None
    socks = []
    try:
        routes = os.path.join(d, "routes.d")
        os.makedirs(routes)
        with open(os.path.join(routes, "r.yaml"), "w") as f:
            f.write("routes:\n  - name: chat\n    match: { path: /v1/chat/completions }\n"
                    "    upstream: { url: %s/v1/chat/completions, api_key: k }\n" % mock.url)
        sock = os.path.join(d, "ctl.sock")
        fg = Proc([os.path.join(RELEASE, "fastgated"), "--listen", "127.0.0.1:0", "--routes", routes,
                   "--keys", os.path.join(d, "k.db"), "--audit", os.path.join(d, "a.db"),
                   "--control", sock, "-v"], d, "fastgated-release")
        m = wait_for(lambda: re.search(r"listening on http://127\.0\.0\.1:(\d+)", fg.stderr()),
                     what="fastgated to listen")
        port = int(m.group(1))
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(sock)
        f = s.makefile("rwb")
        f.readline()
        f.write(b'{"id":1,"cmd":"key.create","args":{"name":"mem"}}\n')
        f.flush()
        key = json.loads(f.readline())["result"]["key"]
        s.close()
        body = json.dumps({"model": "m", "stream": True,
                           "messages": [{"role": "user", "content": "hold"}]}).encode()
        req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
               key.encode() + b"\r\nContent-Type: application/json\r\nX-Mock-Chunks: 100\r\n"
               b"X-Mock-Delay-Ms: 1000\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        before = rss_kb(fg.pid)
        for _ in range(STREAMS):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            c.sendall(req)
            socks.append(c)
        for c in socks:                      # every stream has started
            assert c.recv(64).startswith(b"HTTP/1.1 200"), "a stream did not start"
        held = rss_kb(fg.pid)
        assert held - before > 4 * 1024, (before, held)   # the burst is visible at all
        for c in socks:
            c.close()
        socks = []
        # the trim timer runs every 10 s: within two of its periods most of the growth is back
        wait_for(lambda: rss_kb(fg.pid) < before + (held - before) / 2, timeout=25, interval=0.5,
                 what="RSS to fall back from %d KB toward %d KB" % (held, before))
        assert "heap trimmed" in fg.stderr()
        rc = fg.stop()
        assert rc == 0, fg.stderr()[-2000:]
    finally:
        for c in socks:
            c.close()
        if fg and fg.alive():
            fg.stop()
        mock.stop()
        rmtree(d)


if __name__ == "__main__":
    run_tests(globals())
