"""The release build under valgrind: memory errors inside libevent and libcurl are
invisible to ASan (they are not instrumented), so the connection life-cycle paths that
hand memory back and forth with them run here, in the optimised binary users run.
Covers: guard rejections with lingering close, keep-alive, HTTP/1.0, Connection: close,
pipelining, proxied JSON and streams, a client vanishing mid-stream, reload, SIGTERM."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Mock, Proc, raw_exchange, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

RELEASE = os.path.join(harness.ROOT, "build")


class Ctx:
    pass


def setup():
    c = Ctx()
    c.dir = tmpdir("fg-vg-")
    c.mock = Mock(c.dir)
    routes = os.path.join(c.dir, "routes.d")
    os.makedirs(routes)
    with open(os.path.join(routes, "10.yaml"), "w") as f:
        f.write("routes:\n  - name: chat\n    match: { path: /v1/chat/completions }\n"
                "    upstream: { url: %s/v1/chat/completions, api_key: k }\n" % c.mock.url)
    with open(os.path.join(c.dir, "fg.yaml"), "w") as f:
        f.write("header_timeout: 1\n")
    c.sock = os.path.join(c.dir, "ctl.sock")
    argv = ["valgrind", "--error-exitcode=42", "--leak-check=full", "--errors-for-leak-kinds=definite",
            "--num-callers=30", os.path.join(RELEASE, "fastgated"), "-c", os.path.join(c.dir, "fg.yaml"),
            "--listen", "127.0.0.1:0", "--routes", routes, "--keys", os.path.join(c.dir, "k.db"),
            "--audit", os.path.join(c.dir, "audit.db"), "--control", c.sock]
    c.proc = Proc(argv, c.dir, "fastgated-vg")
    m = wait_for(lambda: re.search(r"listening on http://127\.0\.0\.1:(\d+)", c.proc.stderr()),
                 timeout=60, what="fastgated under valgrind to listen")
    c.port = int(m.group(1))
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(c.sock)
    f = s.makefile("rwb")
    f.readline()
    f.write(b'{"id":1,"cmd":"key.create","args":{"name":"vg"}}\n')
    f.flush()
    c.key = json.loads(f.readline())["result"]["key"]
    s.close()
    return c


def teardown(c):
    try:
        rc = c.proc.stop(signal.SIGTERM, timeout=60)
        err = c.proc.stderr()
        assert rc == 0, "exit %d under valgrind:\n%s" % (rc, err[-6000:])
        assert "ERROR SUMMARY: 0 errors" in err, err[-6000:]
        c.mock.stop()
    finally:
        rmtree(c.dir)


def chat_req(c, extra="", body=None, version="1.1"):
    body = body or json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    return ("POST /v1/chat/completions HTTP/%s\r\nHost: x\r\nX-API-Key: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (version, c.key, len(body), extra, body)).encode()


def test_rejections_keepalive_and_http10_in_a_row(c):
    # This order once left a freed connection's write timer in the event base (and the
    # daemon spinning): head timeouts, a keep-alive reply, HTTP/1.0 closing in its reply.
    def timeout_408():
        data, closed = raw_exchange(c.port, b"GET /x HTTP/1.1\r\n", timeout=5)
        assert data.startswith(b"HTTP/1.1 408") and closed, data[:60]

    def keepalive():
        data, _ = raw_exchange(c.port, b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n", timeout=1)
        assert data.startswith(b"HTTP/1.1 200")

    def http10():
        data, closed = raw_exchange(c.port, b"GET /health HTTP/1.0\r\n\r\n", timeout=10)
        assert data.startswith(b"HTTP/1.0 200") and closed

    for step in "TTTT1T0T10":
        {"T": timeout_408, "1": keepalive, "0": http10}[step]()
    data, closed = raw_exchange(c.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", timeout=10)
    assert data.startswith(b"HTTP/1.1 400") and closed


def test_proxied_answers_with_close_and_pipelining(c):
    data, closed = raw_exchange(c.port, chat_req(c, "Connection: close\r\n"), timeout=20)
    assert data.startswith(b"HTTP/1.1 200") and closed, data[:100]
    data, closed = raw_exchange(c.port, chat_req(c, version="1.0"), timeout=20)
    assert data.startswith(b"HTTP/1.0 200") and closed, data[:100]
    data, closed = raw_exchange(c.port, chat_req(c) * 2 + chat_req(c, "Connection: close\r\n"), timeout=20)
    assert data.count(b"Hello from mock") == 3 and closed


def test_streams_complete_and_vanishing_clients(c):
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    data, closed = raw_exchange(c.port, chat_req(c, "Connection: close\r\nX-Mock-Chunks: 4\r\n", body), timeout=20)
    assert b"[DONE]" in data and closed
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", c.port), timeout=10)
        s.sendall(chat_req(c, "X-Mock-Chunks: 40\r\nX-Mock-Delay-Ms: 50\r\n", body))
        s.recv(100)
        s.close()
    wait_for(lambda: c.mock.stats()["streams_aborted"] >= 3, timeout=20, what="aborted upstream streams")


def test_reload_under_valgrind(c):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(c.sock)
    f = s.makefile("rwb")
    f.readline()
    f.write(b'{"id":1,"cmd":"reload","args":{}}\n')
    f.flush()
    assert json.loads(f.readline())["ok"]
    s.close()


if __name__ == "__main__":
    run_tests(globals(), setup, teardown)
