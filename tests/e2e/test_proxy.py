"""End to end: the real fastgated against the C mock upstream, driven over HTTP.
Covers authentication, routing, forwarding and header cleaning, streaming, the status
table, and what happens when clients or upstreams misbehave."""

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (CLI, FASTGATED, Gateway, Mock, demo_routes, free_port, raw_exchange,  # noqa: E402
                     rmtree, run_tests, tmpdir, wait_for)

EXTRA_ROUTES = """  - name: slow
    match:
      path: /slow/**
    upstream:
      url: %(m)s/v1/chat/completions
    timeout: 1
    idle_timeout: 1
  - name: refused
    match:
      path: /refused
    upstream:
      url: http://127.0.0.1:%(dead)d/v1/chat/completions
    timeout: 2
  - name: by-model
    priority: 10
    match:
      path: /v1/chat/completions
      body: { model: "special-*" }
    upstream:
      url: %(m)s/special
  - name: defaults
    match:
      path: /defaults
    upstream:
      url: %(m)s/v1/chat/completions
    add_body_fields: { max_tokens: 64, model: demo-model }
"""

CHAT = {"model": "demo-model", "messages": [{"role": "user", "content": "hi there"}]}


class Ctx:
    pass


def setup():
    c = Ctx()
    c.dir = tmpdir()
    c.mock = Mock(c.dir)
    with open(os.path.join(c.dir, "fastgate.yaml"), "w") as f:
        f.write("max_body: 64K\nmax_headers: 8K\nheader_timeout: 2\nidle_timeout: 10\n")
    extra = EXTRA_ROUTES % {"m": c.mock.url, "dead": free_port()}
    try:
        c.gw = Gateway(c.dir, demo_routes(c.mock.url, extra),
                       extra_args=["-c", os.path.join(c.dir, "fastgate.yaml")])
        c.key = c.gw.create_key("e2e")["key"]
    except BaseException:
        c.mock.stop()
        raise
    c.auth = {"Authorization": "Bearer " + c.key}
    return c


def teardown(c):
    try:
        rc = c.gw.stop()
        assert rc == 0, "fastgated exit code %d" % rc
        c.mock.stop()
        # secret hygiene: neither the client key nor the upstream key is written anywhere
        for name in os.listdir(c.dir):
            path = os.path.join(c.dir, name)
            if os.path.isfile(path) and not name.endswith((".pem", ".yaml")) and name != "mock.err":
                with open(path, "rb") as f:
                    data = f.read()
                for secret in (c.key.encode(), b"upstream-secret-key"):
                    assert secret not in data, "%s found in %s" % (secret[:6], name)
    finally:
        rmtree(c.dir)


def chat(c, body=None, headers=None, path="/v1/chat/completions"):
    h = dict(c.auth)
    h.update(headers or {})
    return c.gw.request("POST", path, body if body is not None else CHAT, h)


def error_of(data):
    e = json.loads(data)["error"]
    assert set(e) >= {"message", "type", "code"}, e
    return e


# --- forwarding ------------------------------------------------------------------------

def test_non_stream_chat_is_forwarded_with_the_route_key(c):
    st, h, data = chat(c, headers={"X-Debug": "1", "X-Forwarded-For": "6.6.6.6", "X-Keep": "yes",
                                   "Connection": "keep-alive, X-Hop", "X-Hop": "1"})
    assert st == 200, (st, data)
    body = json.loads(data)
    assert body["choices"][0]["message"]["content"].startswith("Hello from mock."), body
    assert re.fullmatch(r"[0-9a-f]{20}", h["x-request-id"]), h
    # an answer with a Content-Length is buffered and sent with its length, not chunked
    assert h.get("content-length") == str(len(data)) and "transfer-encoding" not in h, h
    last = c.mock.stats()["last"]
    hdrs = {k.lower(): v for k, v in last["headers"].items()}
    assert hdrs["authorization"] == "Bearer upstream-secret-key", hdrs
    assert "x-debug" not in hdrs and "x-api-key" not in hdrs and "x-hop" not in hdrs, hdrs
    assert hdrs.get("x-forwarded-for") == "127.0.0.1", hdrs   # ours, not the client's
    assert hdrs["x-proxy-source"] == "fastgate" and hdrs["x-keep"] == "yes", hdrs
    assert hdrs["x-request-id"] == h["x-request-id"], (hdrs, h)
    assert c.key not in json.dumps(last), "client key reached the upstream"
    assert json.loads(last["body"]) == CHAT, "body must be passed byte for byte"


def test_a_locked_key_store_does_not_hold_up_requests(c):
    """Every 10 s fastgated saves the keys' last-used times. With the key store's write lock
    held by another process across such a save, requests are still answered at once (the
    save waits on a thread of its own), and the times are saved once the lock is gone."""
    assert chat(c)[0] == 200            # the key is used: its last-used time is due
    db = sqlite3.connect(c.gw.keys, timeout=1, isolation_level=None)
    worst = 0.0
    try:
        db.execute("BEGIN IMMEDIATE")
        end = time.monotonic() + 11.0    # spans one save
        while time.monotonic() < end:
            t0 = time.monotonic()
            st = chat(c)[0]
            worst = max(worst, time.monotonic() - t0)
            assert st == 200, st
            time.sleep(0.1)
        last = int(time.time()) - 1      # the second of the last use, or the one before
        db.execute("ROLLBACK")

        def saved():
            row = db.execute("SELECT last_used FROM keys WHERE name = 'e2e'").fetchone()
            return row and row[0] and row[0] >= last
        wait_for(saved, timeout=25.0, interval=0.2, what="last_used to be saved")
    finally:
        db.close()
    assert worst < 2.0, "a request took %.1f s while the key store was locked" % worst


def test_key_commands_wait_for_a_locked_key_store_off_the_event_loop(c):
    """Key and route commands write to the key store on a thread of their own (fg-keys).
    With its write lock held by another process, such a command waits for the lock while
    requests and other commands are answered; it completes once the lock is gone, or fails
    after 5 s saying why and that nothing changed. A change whose client hangs up while it
    waits is still made, and logged."""
    import threading
    db = sqlite3.connect(c.gw.keys, timeout=1, isolation_level=None)
    stop, worst, statuses = threading.Event(), [0.0], []

    def traffic():
        while not stop.is_set():
            t0 = time.monotonic()
            statuses.append(chat(c)[0])
            worst[0] = max(worst[0], time.monotonic() - t0)

    def cli_bg(*args):
        return subprocess.Popen([CLI, "--socket", c.gw.sock, "--json"] + list(args),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def hang_up_after(cmd, args):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(c.gw.sock)
        f = s.makefile("rwb")
        assert json.loads(f.readline()).get("protocol") == 1
        f.write((json.dumps({"id": 1, "cmd": cmd, "args": args}) + "\n").encode())
        f.flush()
        f.close()
        s.close()

    def key_names():
        return {k["name"] for k in c.gw.ctl("key.list", {"all": True})["result"]}

    th = threading.Thread(target=traffic)
    try:
        db.execute("BEGIN IMMEDIATE")
        th.start()
        t0 = time.monotonic()
        create = cli_bg("key", "create", "--name", "waited")
        disable = cli_bg("route", "disable", "slow")
        # two toggles queued together flip twice, as they would one after the other
        assert c.gw.ctl("route.show", {"name": "defaults"})["result"]["enabled"] is True
        toggles = [cli_bg("route", "toggle", "defaults") for _ in range(2)]
        hang_up_after("key.create", {"name": "left-early"})
        # while the lock is held (well under the 5 s the writer waits), every other
        # command is answered and both changes are still waiting
        for _ in range(10):
            assert c.gw.ctl("key.list")["ok"] and c.gw.ctl("route.show", {"name": "slow"})["ok"]
            time.sleep(0.1)
        assert create.poll() is None and disable.poll() is None, \
            "a key command finished while the key store was locked"
        assert time.monotonic() - t0 < 4.0, "too slow to tell waiting from failing"
        assert "left-early" not in key_names()
        db.execute("ROLLBACK")
        out, err = create.communicate(timeout=15)
        assert create.returncode == 0, (out, err)
        made = json.loads(out)
        out, err = disable.communicate(timeout=15)
        assert disable.returncode == 0 and json.loads(out)["enabled"] is False, (out, err)
        assert c.gw.ctl("route.show", {"name": "slow"})["result"]["enabled"] is False
        assert c.gw.ctl("route.enable", {"name": "slow"})["ok"]
        got = sorted(json.loads(t.communicate(timeout=15)[0])["enabled"] for t in toggles)
        assert got == [False, True], got
        assert c.gw.ctl("route.show", {"name": "defaults"})["result"]["enabled"] is True
        wait_for(lambda: "left-early" in key_names(), what="the hung-up client's key")
        wait_for(lambda: re.search(r'key\.create name="left-early": done after the client left',
                                   c.gw.proc.stderr()), what="the log line of that change")
        assert re.search(r'control: uid \d+ pid \d+: key\.create id=%d name="waited"$' % made["id"],
                         c.gw.proc.stderr(), re.M), c.gw.proc.stderr()[-2000:]

        # a lock held longer than the writer waits: refused, saying why; commands queued
        # behind each other each wait 5 s from their arrival, not one after the other
        # (the third would otherwise be answered after 15 s, past the CLI's 10 s)
        db.execute("BEGIN IMMEDIATE")
        queued = [cli_bg("key", "create", "--name", "locked-out"),
                  cli_bg("key", "create", "--name", "locked-out-too"),
                  cli_bg("route", "disable", "slow")]
        for p in queued:
            out, err = p.communicate(timeout=30)
            err = err.decode()
            assert p.returncode != 0 and "write lock" in err and "nothing was changed" in err, \
                (p.args, p.returncode, out, err)
        db.execute("ROLLBACK")
    finally:
        stop.set()
        if th.is_alive():
            th.join()
        db.close()
    assert statuses and set(statuses) == {200}, set(statuses)
    assert worst[0] < 1.0, "a request took %.1f s while a key command waited" % worst[0]
    assert not {"locked-out", "locked-out-too"} & key_names()
    assert c.gw.ctl("route.show", {"name": "slow"})["result"]["enabled"] is True
    st, _, _ = chat(c, headers={"Authorization": "Bearer " + made["key"]})
    assert st == 200, st
    for name in ("waited", "left-early"):
        for k in c.gw.ctl("key.list")["result"]:
            if k["name"] == name:
                assert c.gw.ctl("key.revoke", {"id": k["id"]})["ok"]


def test_upstream_connections_are_kept_alive_and_reused(c):
    assert chat(c)[0] == 200
    before = c.mock.stats()["connections_total"]
    for _ in range(10):
        assert chat(c)[0] == 200
    assert c.mock.stats()["connections_total"] == before, "each request opened a new upstream connection"
    st, _, data = c.gw.request("GET", "/metrics")
    idle = re.search(r'^fastgate_upstream_connections\{state="idle"\} (\d+)$', data.decode(), re.M)
    busy = re.search(r'^fastgate_upstream_connections\{state="busy"\} (\d+)$', data.decode(), re.M)
    assert idle and int(idle.group(1)) >= 1 and busy and int(busy.group(1)) == 0, data


def burst(port, key, n, delay_ms):
    """n requests in flight at once, each on its own client connection (all sent before any
    answer is read; the mock holds each answer delay_ms): their statuses."""
    body = json.dumps(CHAT).encode()
    req = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
           "X-Mock-First-Byte-Delay-Ms: %d\r\nContent-Length: %d\r\n\r\n"
           % (key, delay_ms, len(body))).encode() + body
    socks, statuses = [], []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            s.sendall(req)
            socks.append(s)
        for s in socks:
            f = s.makefile("rb")
            status = int(f.readline().split()[1])
            length = 0
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            f.read(length)
            f.close()
            statuses.append(status)
    finally:
        for s in socks:
            s.close()
    return statuses


def test_a_burst_wider_than_256_keeps_all_its_upstream_connections(c):
    # 300 requests at once on one event loop need 300 upstream connections; once answered,
    # every one of them stays idle for the next burst (up to max_connections), rather than
    # the 256 a fixed cap kept, which made a busy gateway close connections only to open
    # them again a moment later
    d = tmpdir()
    gw = Gateway(d, demo_routes(c.mock.url, ""), extra_args=["--workers", "1"], name="burst")
    try:
        key = gw.create_key("burst")["key"]
        assert burst(gw.port, key, 300, 300) == [200] * 300
        idle = lambda: int(re.search(r'^fastgate_upstream_connections\{state="idle"\} (\d+)$',
                                     gw.request("GET", "/metrics")[2].decode(), re.M).group(1))
        assert idle() == 300, idle()
        before = c.mock.stats()["connections_total"]
        assert burst(gw.port, key, 300, 300) == [200] * 300
        opened = c.mock.stats()["connections_total"] - before
        assert opened == 0, "the second burst opened %d upstream connections" % opened
    finally:
        assert gw.stop() == 0
        rmtree(d)


def test_x_api_key_header_authenticates_too(c):
    st, _, _ = c.gw.request("POST", "/v1/chat/completions", CHAT, {"X-API-Key": c.key})
    assert st == 200


def test_query_string_and_strip_prefix_are_applied(c):
    st, _, data = c.gw.request("GET", "/echo/some/path?a=1&b=two", None, c.auth)
    assert st == 200, (st, data)
    echo = json.loads(data)
    assert echo["uri"] == "/some/path?a=1&b=two", echo


def test_body_glob_selects_the_higher_priority_route(c):
    st, _, data = chat(c, body={"model": "special-7b", "messages": []})
    assert st == 200, (st, data)
    assert json.loads(data)["path"] == "/special"


def test_add_body_fields_fill_only_missing_fields(c):
    st, _, data = chat(c, body={"model": "mine", "messages": []}, path="/defaults")
    assert st == 200, (st, data)
    sent = json.loads(c.mock.stats()["last"]["body"])
    assert sent["max_tokens"] == 64 and sent["model"] == "mine", sent
    # nothing to add: the bytes go through unchanged (spacing included)
    raw = b'{"model": "x",  "max_tokens": 5, "messages": []}'
    st, _, _ = c.gw.request("POST", "/defaults", raw, dict(c.auth, **{"Content-Type": "application/json"}))
    assert st == 200 and c.mock.stats()["last"]["body"].encode() == raw


def read_sse(resp_file):
    """Read SSE events until [DONE] or EOF; returns (list of data payloads, saw_done)."""
    events, saw_done = [], False
    for raw in resp_file:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            payload = line[6:]
            if payload == "[DONE]":
                saw_done = True
                break
            events.append(json.loads(payload))
    return events, saw_done


def open_stream(c, chunks=5, delay_ms=0, extra=None, include_usage=False):
    """Send a streaming request on a raw socket; return (socket, file) positioned after
    the response head, and the head text."""
    body = dict(CHAT, stream=True)
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    data = json.dumps(body).encode()
    hdrs = ["POST /v1/chat/completions HTTP/1.1", "Host: x", "Authorization: Bearer " + c.key,
            "Content-Type: application/json", "Content-Length: %d" % len(data),
            "X-Mock-Chunks: %d" % chunks, "X-Mock-Delay-Ms: %d" % delay_ms]
    hdrs += extra or []
    s = socket.create_connection(("127.0.0.1", c.gw.port), timeout=10)
    s.sendall(("\r\n".join(hdrs) + "\r\n\r\n").encode() + data)
    f = s.makefile("rb")
    head = []
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        head.append(line.decode())
    return s, f, "".join(head)


def dechunk_lines(f):
    """Yield the payload lines of a chunked HTTP body."""
    buf = b""
    while True:
        size_line = f.readline()
        if not size_line:
            return
        size = int(size_line.strip() or b"0", 16)
        if size == 0:
            return
        buf += f.read(size)
        f.readline()
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line + b"\n"


def test_stream_is_relayed_and_reassembles(c):
    st, h, data = chat(c, body=dict(CHAT, stream=True), headers={"X-Mock-Chunks": "7"})
    assert st == 200 and h["content-type"].startswith("text/event-stream"), (st, h)
    events, done = read_sse(data.splitlines(keepends=True))
    assert done, "stream must end with [DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    st2, _, d2 = chat(c)
    assert text == json.loads(d2)["choices"][0]["message"]["content"], text


def test_stream_usage_chunk_is_passed_when_asked(c):
    body = dict(CHAT, stream=True, stream_options={"include_usage": True})
    st, _, data = chat(c, body=body)
    events, done = read_sse(data.splitlines(keepends=True))
    assert done and events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] > 0, events[-1]


def test_gateway_asks_a_stream_for_usage_and_hides_it_from_the_client(c):
    st, _, data = chat(c, body=dict(CHAT, stream=True))
    events, done = read_sse(data.splitlines(keepends=True))
    assert done and all(e["choices"] for e in events), events[-1]
    assert all("usage" not in e or e["usage"] is None for e in events), events[-1]
    sent = json.loads(c.mock.stats()["last"]["body"])
    assert sent["stream_options"] == {"include_usage": True}, sent


def test_first_chunk_arrives_before_the_upstream_finishes(c):
    c.mock.reset()
    s, f, head = open_stream(c, chunks=6, delay_ms=300)
    try:
        assert head.startswith("HTTP/1.1 200"), head
        first = next(dechunk_lines(f))
        assert first.startswith(b"data: "), first
        st = c.mock.stats()
        assert st["streams_started"] == 1 and st["streams_completed"] == 0, st
    finally:
        f.close()
        s.close()


def inflight(c):
    st, _, data = c.gw.request("GET", "/metrics")
    m = re.search(r"^fastgate_inflight_requests (\d+)", data.decode(), re.M)
    return int(m.group(1))


def test_client_disconnect_mid_stream_aborts_the_upstream(c):
    wait_for(lambda: inflight(c) == 0, timeout=5, what="earlier streams to end")
    c.mock.reset()
    s, f, head = open_stream(c, chunks=50, delay_ms=200)
    next(dechunk_lines(f))
    f.close()
    s.close()
    wait_for(lambda: c.mock.stats()["streams_aborted"] == 1, timeout=5, what="upstream abort")
    wait_for(lambda: inflight(c) == 0, timeout=5, what="no request in flight")
    assert c.gw.proc.alive()


def test_client_gone_before_a_buffered_answer_is_not_a_crash(c):
    body = json.dumps(CHAT).encode()
    req = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n"
           "X-Mock-First-Byte-Delay-Ms: 300\r\nContent-Length: %d\r\n\r\n" % (c.key, len(body))).encode() + body
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", c.gw.port), timeout=5)
        s.sendall(req)
        s.close()
    wait_for(lambda: inflight(c) == 0, timeout=5, what="requests to finish")
    assert chat(c)[0] == 200 and c.gw.proc.alive()


def metric(c, name):
    st, _, data = c.gw.request("GET", "/metrics")
    m = re.search(r"^%s (\d+)" % re.escape(name), data.decode(), re.M)
    return int(m.group(1))


def test_slow_reader_pauses_the_upstream_and_still_gets_everything(c):
    before = metric(c, "fastgate_upstream_pauses_total")
    # ~8 MB: more than the kernel holds for a client that does not read (the gateway's
    # send buffer grows to 4 MB), so the rest must wait in the gateway, paused
    s, f, head = open_stream(c, chunks=60000, delay_ms=0)
    time.sleep(1.0)   # not reading: the client's socket buffers fill up
    lines = [ln for ln in dechunk_lines(f) if ln.startswith(b"data: ")]
    f.close()
    s.close()
    # the role-only first event, 60000 content chunks, [DONE]
    assert lines[-1] == b"data: [DONE]\n" and len(lines) == 60002, (len(lines), lines[-1])
    assert metric(c, "fastgate_upstream_pauses_total") > before


def start_https_upstream(workdir):
    """A TLS upstream in this process, with a self-signed certificate for 127.0.0.1."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            out = json.dumps({"tls": True, "auth": self.headers.get("Authorization"),
                              "body": body.decode()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, cert


def test_https_upstream_is_verified_against_the_route_ca_file(c):
    srv, cert = start_https_upstream(c.dir)
    path = os.path.join(c.gw.routes_dir, "20-tls.yaml")
    url = "https://127.0.0.1:%d/v1/chat/completions" % srv.server_address[1]
    with open(path, "w") as f:
        f.write("routes:\n  - name: tls\n    match: { path: /tls }\n"
                "    upstream: { url: %s, api_key: tls-key, ca_file: %s }\n"
                "  - name: tls-untrusted\n    match: { path: /tls-untrusted }\n"
                "    upstream: { url: %s }\n    timeout: 5\n" % (url, cert, url))
    try:
        assert c.gw.ctl("reload")["ok"]
        st, _, data = c.gw.request("POST", "/tls", CHAT, c.auth)
        assert st == 200, (st, data)
        got = json.loads(data)
        assert got["tls"] and got["auth"] == "Bearer tls-key" and json.loads(got["body"]) == CHAT, got
        st, _, data = c.gw.request("POST", "/tls-untrusted", CHAT, c.auth)
        assert st == 502 and error_of(data)["code"] == "tls", (st, data)
    finally:
        os.unlink(path)
        c.gw.ctl("reload")
        srv.shutdown()
        srv.server_close()


def start_scripted_upstream(answers):
    """A raw-socket upstream: connection i reads requests and sends answers[i] in turn
    (bytes, or None to close without answering). Returns (port, list of connections'
    request counts, stop function)."""
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    seen, stop = [], threading.Event()

    def read_request(conn, buf):
        while b"\r\n\r\n" not in buf:
            d = conn.recv(65536)
            if not d:
                return None, b""
            buf += d
        head, rest = buf.split(b"\r\n\r\n", 1)
        n = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v)
        while len(rest) < n:
            d = conn.recv(65536)
            if not d:
                return None, b""
            rest += d
        return head, rest[n:]

    def serve():
        i = 0
        while not stop.is_set() and i < len(answers):
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.settimeout(5)
            seen.append(0)
            buf = b""
            with conn:
                for ans in answers[i]:
                    head, buf = read_request(conn, buf)
                    if head is None:
                        break
                    seen[-1] += 1
                    if ans is None:
                        break
                    conn.sendall(ans)
            i += 1
        srv.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], seen, stop.set


def with_route(c, name, port, fn):
    path = os.path.join(c.gw.routes_dir, "30-%s.yaml" % name)
    with open(path, "w") as f:
        f.write("routes:\n  - name: %s\n    match: { path: /%s }\n"
                "    upstream: { url: http://127.0.0.1:%d/x }\n    timeout: 5\n" % (name, name, port))
    try:
        assert c.gw.ctl("reload")["ok"]
        fn()
    finally:
        os.unlink(path)
        c.gw.ctl("reload")


class OneLoop:
    """Requests on one kept-alive client connection. Each event loop keeps its own upstream
    connections (workers), and a client connection stays on the loop that accepted it: the
    tests below, about what the gateway does with a kept-alive upstream connection, send
    their requests this way so that the second one finds the first one's connection."""

    def __init__(self, gw):
        import http.client
        self.c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)

    def request(self, method, path, body=None, headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = dict(headers or {}, **{"Content-Type": "application/json"})
        self.c.request(method, path, body=body, headers=headers or {})
        r = self.c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def close(self):
        self.c.close()


def test_a_post_on_a_kept_alive_connection_closed_under_it_is_not_sent_again(c):
    ok = lambda body: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    # connection 1 answers, then takes the next request and closes without a byte (an
    # upstream timing out its idle connection just as the gateway reuses it): the POST
    # may have been acted on, so it is not sent again (RFC 9110 9.2.2)
    port, seen, stop = start_scripted_upstream([[ok(b'{"n":1}'), None], [ok(b'{"n":2}')]])

    def run():
        one = OneLoop(c.gw)
        st, _, data = one.request("POST", "/stale", CHAT, c.auth)
        assert st == 200 and json.loads(data) == {"n": 1}, (st, data)
        st, _, data = one.request("POST", "/stale", CHAT, c.auth)
        assert st == 502 and error_of(data)["code"] == "reset", (st, data)
        assert seen == [2], seen
        st, _, data = one.request("POST", "/stale", CHAT, c.auth)
        assert st == 200 and json.loads(data) == {"n": 2}, (st, data)
        assert seen == [2, 1], seen
    try:
        with_route(c, "stale", port, run)
    finally:
        stop()


def test_a_get_on_a_kept_alive_connection_closed_under_it_is_retried_once(c):
    ok = lambda body: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    port, seen, stop = start_scripted_upstream([[ok(b'{"n":1}'), None], [ok(b'{"n":2}')]])

    def run():
        one = OneLoop(c.gw)
        st, _, data = one.request("GET", "/stale", None, c.auth)
        assert st == 200 and json.loads(data) == {"n": 1}, (st, data)
        st, _, data = one.request("GET", "/stale", None, c.auth)
        assert st == 200 and json.loads(data) == {"n": 2}, (st, data)
        assert seen == [2, 1], seen
    try:
        with_route(c, "stale", port, run)
    finally:
        stop()


def test_upstream_framings_reach_the_client_intact(c):
    body = b'{"framed":"by close"}'
    answers = [
        # read until close, no length
        [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + body],
        # an interim 100 before the answer, chunked with a trailer; Connection: close, as
        # this upstream closes after it: a kept connection would race the next request
        [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
         b"Connection: close\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\nX-T: 1\r\n\r\n"],
        # not HTTP at all
        [b"SSH-2.0-OpenSSH_9.2\r\n\r\n"],
    ]
    port, seen, stop = start_scripted_upstream(answers)

    def run():
        st, _, data = c.gw.request("POST", "/framing", CHAT, c.auth)
        assert st == 200 and data == body, (st, data)
        st, _, data = c.gw.request("POST", "/framing", CHAT, c.auth)
        assert st == 200 and json.loads(data) == {"a": 1}, (st, data)
        st, _, data = c.gw.request("POST", "/framing", CHAT, c.auth)
        assert st == 502 and error_of(data)["code"] == "protocol", (st, data)
    try:
        with_route(c, "framing", port, run)
    finally:
        stop()


def test_answers_up_to_a_mebibyte_keep_their_length_and_larger_ones_are_relayed(c):
    """An answer with a Content-Length of up to 1 MiB is buffered and sent with its length;
    a larger one is relayed as it arrives (chunked to the client). The status code is the
    upstream's, whatever it is."""
    limit = 1024 * 1024
    small, big = b"s" * limit, b"b" * (limit + 1)
    answer = lambda status, body: (b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\n"
                                   b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body))
    port, seen, stop = start_scripted_upstream([[answer(b"201 Created", small),
                                                 answer(b"203 Non-Authoritative", big)]])

    def run():
        one = OneLoop(c.gw)
        st, h, data = one.request("POST", "/sizes", CHAT, c.auth)
        assert st == 201 and data == small, (st, len(data))
        assert h.get("content-length") == str(limit) and "transfer-encoding" not in h, h
        st, h, data = one.request("POST", "/sizes", CHAT, c.auth)
        assert st == 203 and data == big, (st, len(data))
        assert h.get("transfer-encoding") == "chunked" and "content-length" not in h, h
    try:
        with_route(c, "sizes", port, run)
    finally:
        stop()


# --- the status table ------------------------------------------------------------------

def test_missing_key_is_401_in_openai_shape(c):
    st, h, data = c.gw.request("POST", "/v1/chat/completions", CHAT)
    assert st == 401 and error_of(data)["type"] == "authentication_error", (st, data)
    assert "x-request-id" in h


def test_unknown_and_malformed_keys_are_401_and_not_echoed(c):
    for bad in [c.key[:-1] + ("A" if c.key[-1] != "A" else "B"), "fg_short", "sk-something"]:
        st, _, data = c.gw.request("POST", "/v1/chat/completions", CHAT, {"X-API-Key": bad})
        assert st == 401, (bad, st)
        assert bad not in data.decode()


def test_two_credentials_are_refused(c):
    c.mock.reset()
    st, _, _ = c.gw.request("POST", "/v1/chat/completions", CHAT,
                            {"X-API-Key": c.key, "Authorization": "Bearer " + c.key})
    assert st == 401
    assert c.mock.stats()["requests"] == 0


def test_revoked_key_fails_at_once(c):
    k = c.gw.create_key("to-revoke")
    h = {"X-API-Key": k["key"]}
    assert c.gw.request("GET", "/v1/models", None, h)[0] == 200
    r = c.gw.ctl("key.revoke", {"id": k["id"]})
    assert r["ok"], r
    st, _, data = c.gw.request("GET", "/v1/models", None, h)
    assert st == 401 and "revoked" in error_of(data)["message"], data


def test_key_limited_to_other_routes_is_403(c):
    k = c.gw.create_key("models-only", routes=["models"])
    h = {"X-API-Key": k["key"]}
    assert c.gw.request("GET", "/v1/models", None, h)[0] == 200
    st, _, data = c.gw.request("POST", "/v1/chat/completions", CHAT, h)
    assert st == 403 and error_of(data)["type"] == "permission_error", (st, data)


def test_rate_limited_key_gets_429_with_retry_after(c):
    k = c.gw.create_key("slowpoke", rpm=2)
    h = {"X-API-Key": k["key"]}
    assert [c.gw.request("GET", "/v1/models", None, h)[0] for _ in range(2)] == [200, 200]
    st, hdrs, data = c.gw.request("GET", "/v1/models", None, h)
    assert st == 429 and 1 <= int(hdrs["retry-after"]) <= 60, (st, hdrs)
    assert error_of(data)["type"] == "rate_limit_error"


def test_no_route_is_404(c):
    st, _, data = c.gw.request("GET", "/nothing/here", None, c.auth)
    assert st == 404 and error_of(data)["code"] == "no_route", data
    assert error_of(data)["message"] == "no route matches GET /nothing/here", data
    # the model the body named, when there was one (issue 20: an operator needs it)
    st, _, data = c.gw.request("POST", "/v1/embeddings", {"model": "no-such-model", "input": "x"},
                               c.auth)
    assert st == 404, data
    assert error_of(data)["message"] == \
        'no route for model "no-such-model" on POST /v1/embeddings', data


def test_body_not_json_where_a_route_reads_it_is_400(c):
    st, _, data = c.gw.request("POST", "/v1/chat/completions", b"not json{", c.auth)
    assert st == 400 and error_of(data)["code"] == "invalid_json", data
    st, _, data = c.gw.request("POST", "/defaults", b"[1,2]", c.auth)
    assert st == 400, data


def test_dot_segments_in_the_path_are_400(c):
    for p in ["/echo/../admin", "/echo/%2e%2e/admin", "/echo/./x"]:
        st, _, _ = c.gw.request("GET", p, None, c.auth)
        assert st == 400, (p, st)


def test_body_over_the_limit_is_413_before_it_is_read(c):
    c.mock.reset()
    big = b"x" * (70 * 1024)
    st, h, data = c.gw.request("POST", "/v1/chat/completions", big, c.auth)
    assert st == 413, st
    assert c.mock.stats()["requests"] == 0


def test_headers_over_the_limit_are_431(c):
    st, _, _ = c.gw.request("GET", "/v1/models", None, dict(c.auth, **{"X-Big": "a" * 9000}))
    assert st == 431, st


def test_upstream_errors_pass_through_unchanged(c):
    st, _, data = chat(c, headers={"X-Mock-Fail": "status:418"})
    assert st == 418, st
    st, _, data = chat(c, headers={"X-Mock-Fail": "500"})
    assert st == 500 and "error" in json.loads(data)


def test_upstream_refused_reset_or_garbage_is_502(c):
    st, _, data = c.gw.request("POST", "/refused", CHAT, c.auth)
    assert st == 502 and error_of(data)["code"] == "connect", data
    st, _, data = chat(c, headers={"X-Mock-Fail": "reset"})
    assert st == 502, (st, data)
    st, _, data = chat(c, headers={"X-Mock-Fail": "garbage"})
    assert st == 502, (st, data)


def test_upstream_reset_mid_stream_gets_the_client_what_was_relayed_then_a_cut(c):
    body = json.dumps(dict(CHAT, stream=True)).encode()
    for delay in (0, 100):
        req = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nX-Mock-Fail: reset-mid\r\n"
               "X-Mock-Delay-Ms: %d\r\nContent-Length: %d\r\n\r\n" % (c.key, delay, len(body))).encode() + body
        data, closed = raw_exchange(c.gw.port, req, timeout=5)
        assert closed and data, (delay, "the client got nothing")
        if data.startswith(b"HTTP/1.1 502 "):
            continue   # the reset came before any body byte: a clean gateway error
        assert data.startswith(b"HTTP/1.1 200 "), data[:100]
        # the role-only first event, 2 content chunks, then an error event the SDKs raise
        # on, then the cut
        assert data.count(b"data: {") == 4 and b"[DONE]" not in data, (delay, data[-200:])
        assert b'data: {"error":{' in data and b'"code":"reset"' in data, data[-300:]
        assert not data.endswith(b"0\r\n\r\n"), "a cut stream must not look complete"


def test_upstream_that_does_not_answer_in_time_is_504(c):
    t0 = time.monotonic()
    st, _, data = c.gw.request("POST", "/slow/x", CHAT, dict(c.auth, **{"X-Mock-Fail": "hang"}))
    assert st == 504 and error_of(data)["code"] == "timeout", (st, data)
    assert time.monotonic() - t0 < 4


def test_idle_stream_is_ended_after_its_idle_timeout(c):
    # chunks every 3 s against a 1 s idle timeout: the client sees a truncated stream
    # (no closing chunk, no [DONE]) and the connection closed, well before the 3 s gap ends
    body = json.dumps(dict(CHAT, stream=True)).encode()
    req = ("POST /slow/x HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nX-Mock-Chunks: 3\r\n"
           "X-Mock-Delay-Ms: 3000\r\nContent-Length: %d\r\n\r\n" % (c.key, len(body))).encode() + body
    t0 = time.monotonic()
    data, closed = raw_exchange(c.gw.port, req, timeout=6)
    assert data.startswith(b"HTTP/1.1 200 ") and closed, data[:200]
    assert b"[DONE]" not in data and not data.endswith(b"0\r\n\r\n"), data[-100:]
    assert b'"code":"idle_timeout"' in data, data[-300:]   # the error event before the cut
    assert time.monotonic() - t0 < 2.9


def test_health_and_metrics_are_served(c):
    assert chat(c)[0] == 200
    st, _, data = c.gw.request("GET", "/health")
    assert st == 200 and json.loads(data)["status"] == "ok"
    # a load balancer's HEAD probe and a query string get the same answer, no key needed
    st, h, data = c.gw.request("HEAD", "/health")
    assert st == 200 and data == b"" and int(h["content-length"]) > 0, (st, h, data)
    st, _, data = c.gw.request("GET", "/health?probe=1")
    assert st == 200 and json.loads(data)["status"] == "ok", (st, data)
    st, _, _ = c.gw.request("HEAD", "/health/ready?x")
    assert st == 200, st
    st, h, data = c.gw.request("GET", "/metrics")
    text = data.decode()
    assert st == 200 and "fastgate_requests_total{route=\"chat\",status=\"200\"}" in text, text[:500]
    assert "fastgate_request_duration_seconds_bucket" in text
    p = subprocess.run(["promtool", "check", "metrics"], input=data, capture_output=True, timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr


# --- hostile input: the guard answers, nothing reaches the upstream ---------------------

SMUGGLING = {
    "two content-lengths": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "content-length and chunked": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding not chunked": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "space before colon": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-API-Key : KEY\r\n\r\n",
    "folded header": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-API-Key: KEY\r\n  continued\r\n\r\n",
    "http/1.1 without host": b"GET /v1/models HTTP/1.1\r\nX-API-Key: KEY\r\n\r\n",
    "garbage request line": b"HELLO THERE\r\n\r\n",
    "nul byte in header": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\nX-API-Key: KEY\r\n\r\n",
    "bad method": b"BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute uri": b"GET http://evil/v1/models HTTP/1.1\r\nHost: x\r\nX-API-Key: KEY\r\n\r\n",
    "bad chunk size": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-API-Key: KEY\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
}


def test_smuggling_and_garbage_get_400_and_a_closed_connection(c):
    for name, payload in SMUGGLING.items():
        c.mock.reset()
        data, closed = raw_exchange(c.gw.port, payload.replace(b"KEY", c.key.encode()), timeout=4)
        assert data.startswith(b"HTTP/1.1 400 "), (name, data[:200])
        assert len(re.findall(rb"(?:^|\r\n)HTTP/1\.[01] \d{3} ", data)) == 1, (name, "two answers", data)
        assert closed, (name, "connection left open")
        assert c.mock.stats()["requests"] == 0, (name, "reached the upstream")
    assert c.gw.request("GET", "/health")[0] == 200


def test_pipelined_requests_are_answered_in_order(c):
    one = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-API-Key: " + c.key.encode() + b"\r\n\r\n"
    last = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    data, closed = raw_exchange(c.gw.port, one * 3 + last, timeout=5)
    assert data.count(b"HTTP/1.1 200 ") == 4 and closed, data[:300]
    assert data.rfind(b'"status":"ok"') > data.rfind(b"demo-model")


def test_a_request_sent_during_a_stream_is_answered_after_it(c):
    # the input buffer goes back to the allocator while a stream is relayed; bytes the
    # client sends meanwhile must still be read, in order, once the stream ends
    body = json.dumps(dict(CHAT, stream=True)).encode()
    stream = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              c.key.encode() + b"\r\nContent-Type: application/json\r\nX-Mock-Chunks: 4\r\n"
              b"X-Mock-Delay-Ms: 100\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    s = socket.create_connection(("127.0.0.1", c.gw.port), timeout=5)
    try:
        s.sendall(stream)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 "), first[:200]
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = first
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            d = s.recv(65536)
            if not d:
                break
            rest += d
    finally:
        s.close()
    assert rest.count(b"HTTP/1.1 200 ") == 2, rest[-400:]
    assert rest.index(b"data: [DONE]") < rest.index(b'"status":"ok"'), rest[-400:]


def test_chunked_request_body_reaches_the_upstream_whole(c):
    body = json.dumps(CHAT).encode()
    parts = [body[:7], body[7:50], body[50:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + c.key.encode() +
           b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked)
    data, closed = raw_exchange(c.gw.port, req, timeout=5)
    assert data.startswith(b"HTTP/1.1 200 ") and closed, data[:200]
    last = c.mock.stats()["last"]
    assert json.loads(last["body"]) == CHAT, last["body"]
    hdrs = {k.lower(): v for k, v in last["headers"].items()}
    assert "transfer-encoding" not in hdrs and hdrs.get("content-length") == str(len(body)), hdrs


def test_expect_100_continue_gets_the_interim_answer_first(c):
    body = json.dumps(CHAT).encode()
    s = socket.create_connection(("127.0.0.1", c.gw.port), timeout=5)
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + c.key.encode() +
                  b"\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        interim = s.recv(4096)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        s.sendall(body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    finally:
        s.close()


def test_replies_carry_a_date_and_http10_keep_alive_is_honoured(c):
    one = b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", c.gw.port), timeout=5)
    try:
        for _ in range(2):   # the second request on the same connection proves it stayed open
            s.sendall(one)
            data = b""
            while b'"status"' not in data:
                d = s.recv(4096)
                assert d, "connection closed after an HTTP/1.0 keep-alive request"
                data += d
            head = data.split(b"\r\n\r\n", 1)[0].decode()
            assert head.startswith("HTTP/1.0 200"), head
            assert "\r\nConnection: keep-alive" in head and re.search(r"\r\nDate: \w{3}, \d\d \w{3} \d{4} ", head), head
    finally:
        s.close()
    # a gateway error has exactly one Date too
    st, h, _ = c.gw.request("POST", "/v1/chat/completions", CHAT)
    assert st == 401 and "date" in h, h
    # a proxied answer keeps the upstream's Date (date: in any case, on any line) and
    # gets no second one
    data = json.dumps(CHAT).encode()
    s = socket.create_connection(("127.0.0.1", c.gw.port), timeout=5)
    try:
        s.sendall(("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                   % (c.key, len(data))).encode() + data)
        got = b""
        while b"\r\n\r\n" not in got:
            d = s.recv(4096)
            assert d, got
            got += d
    finally:
        s.close()
    head = got.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 200") and head.lower().count("\r\ndate: ") == 1, head


def test_slow_header_client_is_cut_at_the_deadline_while_others_are_served(c):
    s = socket.create_connection(("127.0.0.1", c.gw.port), timeout=10)
    s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    # others are served meanwhile
    for _ in range(5):
        assert c.gw.request("GET", "/health")[0] == 200
        s.sendall(b"X-Slow: 1\r\n")
        time.sleep(0.2)
    data = b""
    s.settimeout(5)
    while True:
        d = s.recv(4096)
        if not d:
            break
        data += d
    elapsed = time.monotonic() - t0
    s.close()
    assert data.startswith(b"HTTP/1.1 408 "), data[:100]
    assert elapsed < 2 + 1.5, elapsed


def test_bad_config_file_is_reported_with_its_line_and_exit_1(c):
    path = os.path.join(c.dir, "bad-config.yaml")
    with open(path, "w") as f:
        f.write("listen: 127.0.0.1:1\nmax_body: lots\nwhatever: 1\n")
    p = subprocess.run([FASTGATED, "-c", path, "--check"], capture_output=True, timeout=20)
    err = p.stderr.decode()
    assert p.returncode == 1, (p.returncode, err)
    assert "bad-config.yaml:2: max_body" in err and "bad-config.yaml:3: unknown setting 'whatever'" in err, err


def test_connections_past_the_cap_are_refused_cleanly(c):
    d = tmpdir()
    with open(os.path.join(d, "cap.yaml"), "w") as f:
        f.write("max_connections: 5\n")
    gw = Gateway(d, "routes: []\n", extra_args=["-c", os.path.join(d, "cap.yaml")], name="capped")
    idle = []
    try:
        for _ in range(5):
            idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
        # the five accepted (by whichever event loops): the sixth is the one over the cap
        wait_for(lambda: gw.ctl("status")["result"]["connections"] == 5, timeout=5,
                 what="the five connections accepted")
        data, closed = raw_exchange(gw.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        assert data.startswith(b"HTTP/1.1 503 ") and closed, data[:100]
        for s in idle:
            s.close()
        wait_for(lambda: gw.request("GET", "/health")[0] == 200, timeout=5, what="a free slot")
    finally:
        for s in idle:
            s.close()
        assert gw.stop() == 0
        rmtree(d)


def test_keep_alive_timers_follow_each_phase_of_a_connection(c):
    # The first request arms the header deadline (1 s); once answered, the connection
    # is idle (2 s). The connection must outlive the header deadline, serve a second
    # request, and be closed once it has been idle for idle_timeout, not before.
    d = tmpdir()
    with open(os.path.join(d, "t.yaml"), "w") as f:
        f.write("header_timeout: 1\nidle_timeout: 2\n")
    gw = Gateway(d, "routes: []\n", extra_args=["-c", os.path.join(d, "t.yaml")], name="timers")
    req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"

    def answer(s):
        data = b""
        while True:
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                if len(body) >= length:
                    return data
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk

    try:
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        s.sendall(req)
        assert answer(s).startswith(b"HTTP/1.1 200 ")
        time.sleep(1.5)                      # past the first request's header deadline
        s.sendall(req)
        assert answer(s).startswith(b"HTTP/1.1 200 ")
        t0 = time.monotonic()
        s.settimeout(6)
        assert s.recv(4096) == b""           # closed for idling ...
        idle = time.monotonic() - t0
        assert 1.5 < idle < 3.5, idle        # ... after about idle_timeout
        s.close()
    finally:
        assert gw.stop() == 0
        rmtree(d)


def test_out_of_descriptors_pauses_accepting_instead_of_spinning(c):
    import resource
    d = tmpdir()
    gw = Gateway(d, "routes: []\n", name="fdlimited")
    socks = []

    def cpu_s():
        with open("/proc/%d/stat" % gw.proc.pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    try:
        # lower the running daemon's limit under what it has open plus a few connections
        open_fds = len(os.listdir("/proc/%d/fd" % gw.proc.pid))
        resource.prlimit(gw.proc.pid, resource.RLIMIT_NOFILE, (open_fds + 8, open_fds + 8))
        for _ in range(40):   # the kernel completes these; the daemon cannot accept them all
            socks.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
        wait_for(lambda: "cannot accept a connection" in gw.proc.stderr(), timeout=5,
                 what="the EMFILE warning")
        t0 = cpu_s()
        time.sleep(1.0)
        used = cpu_s() - t0
        assert used < 0.5, "daemon spun on accept: %.2f s of CPU in 1 s" % used
        for s in socks:
            s.close()
        socks = []
        wait_for(lambda: gw.request("GET", "/health")[0] == 200, timeout=10, what="accepting again")
    finally:
        for s in socks:
            s.close()
        assert gw.stop() == 0
        rmtree(d)


def test_check_reports_file_and_line(c):
    d = tmpdir()
    try:
        with open(os.path.join(d, "bad.yaml"), "w") as f:
            f.write("routes:\n  - name: a\n    upstream:\n      url: ftp://x/\n    bogus: 1\n")
        p = subprocess.run([FASTGATED, "--check", "--routes", d], capture_output=True, timeout=20)
        err = p.stderr.decode()
        assert p.returncode == 1, (p.returncode, err)
        assert re.search(r"bad\.yaml:4: .*", err) and re.search(r"bad\.yaml:5: .*bogus", err), err
        p = subprocess.run([FASTGATED, "--check", "--routes", c.gw.routes_dir], capture_output=True, timeout=20)
        assert p.returncode == 0, p.stderr
    finally:
        rmtree(d)


def test_expired_key_is_401_after_restart(c):
    k = c.gw.create_key("short-lived", expires_days=1)
    h = {"X-API-Key": k["key"]}
    assert c.gw.request("GET", "/v1/models", None, h)[0] == 200
    assert c.gw.stop() == 0
    db = sqlite3.connect(c.gw.keys)
    db.execute("UPDATE keys SET expires = ? WHERE id = ?", (int(time.time()) - 10, k["id"]))
    db.commit()
    db.close()
    c.gw.start()
    st, _, data = c.gw.request("GET", "/v1/models", None, h)
    assert st == 401 and "expired" in error_of(data)["message"], data
    # the other keys survived the restart
    assert c.gw.request("GET", "/v1/models", None, c.auth)[0] == 200


def test_sigterm_during_a_stream_lets_it_finish(c):
    s, f, head = open_stream(c, chunks=8, delay_ms=150)
    lines = dechunk_lines(f)
    next(lines)
    c.gw.proc.p.send_signal(signal.SIGTERM)
    rest = [ln for ln in lines]
    f.close()
    s.close()
    assert any(b"[DONE]" in ln for ln in rest), rest[-3:]
    rc = c.gw.stop()
    assert rc == 0, rc
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", c.gw.port)) != 0, "still accepting after SIGTERM"
    c.gw.start()   # teardown stops it again


def test_second_signal_during_a_stream_exits_at_once_and_cleanly(c):
    s, f, head = open_stream(c, chunks=50, delay_ms=200)
    next(dechunk_lines(f))
    c.gw.proc.p.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    c.gw.proc.p.send_signal(signal.SIGINT)
    rc = c.gw.stop(timeout=10)
    f.close()
    s.close()
    assert rc == 0, rc
    c.gw.start()


if __name__ == "__main__":
    run_tests(globals(), setup, teardown)
