"""End to end: HTTP/1.1 semantics at both ends of fastgated, each against a tiny upstream
written here in Python (a raw TCP server scripted byte by byte that records every
connection and every request it receives), with the client side spoken over raw sockets
so that framing can be asserted exactly.

Covers bodiless answers (204, 304, HEAD), retries of non-idempotent requests, hop-by-hop
answer headers, HTTP/1.0 chunked answers, large answer heads, header names with '_',
encoded path tricks, Accept-Encoding, transfer-codings the gateway does not decode, upstream
host names, unauthenticated bodies and Expect: 100-continue, body rewrites that keep the
client's bytes, duplicate JSON keys, and X-Request-Id on every answer.

Run one test, or those whose name holds a substring:
    python3 tests/e2e/test_http_semantics.py SUBSTRING      (or FG_ONLY=SUBSTRING)"""

import collections
import contextlib
import gzip
import json
import os
import re
import socket
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Gateway, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

# Every final answer a test read from the gateway: checked for X-Request-Id at the end.
ANSWERS = []


# --- byte-level reading, shared by the client side and the upstream side ---------------

class Eof(Exception):
    """The peer closed the connection (FIN or reset)."""


class Stopped(Exception):
    """The upstream is shutting down."""


class Reader:
    """Buffered reads from a socket, every one bounded by self.deadline (monotonic) and,
    for the upstream, cut short by a stop event."""

    def __init__(self, sock, deadline=None, stop=None):
        self.sock, self.deadline, self.stop = sock, deadline, stop
        self.buf = b""

    def fill(self):
        """Wait at most 0.1 s for more bytes; raises socket.timeout past the deadline,
        Eof when the peer closed, Stopped when the stop event is set."""
        if self.stop is not None and self.stop.is_set():
            raise Stopped()
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(min(left, 0.1))
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            return
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            d = b""
        if not d:
            raise Eof()
        self.buf += d

    def until(self, sep, limit):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out, self.buf = self.buf[:i + len(sep)], self.buf[i + len(sep):]
                return out
            if len(self.buf) > limit:
                raise AssertionError("no %r within %d bytes: %r..." % (sep, limit, self.buf[:200]))
            self.fill()

    def exactly(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def to_close(self, limit=1 << 24):
        try:
            while len(self.buf) <= limit:
                self.fill()
            raise AssertionError("more than %d bytes before the close" % limit)
        except Eof:
            out, self.buf = self.buf, b""
            return out


def parse_headers(lines):
    out = []
    for ln in lines:
        name, colon, value = ln.partition(b":")
        assert colon and name and name == name.strip(), "malformed header line %r" % ln[:200]
        out.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return out


def values_of(headers, name):
    return [v for k, v in headers if k.lower() == name.lower()]


def read_chunked(rd):
    """A chunked body, de-chunked; the trailer section is read and dropped."""
    body = b""
    for _ in range(1000000):
        line = rd.until(b"\r\n", 4096)
        size = int(line[:-2].split(b";")[0].strip(), 16)
        if size == 0:
            for _ in range(1000):
                if rd.until(b"\r\n", 65536) == b"\r\n":
                    return body
            raise AssertionError("endless trailer section")
        body += rd.exactly(size)
        crlf = rd.exactly(2)
        assert crlf == b"\r\n", "chunk not followed by CRLF: %r" % crlf
    raise AssertionError("too many chunks")


# --- the client side -----------------------------------------------------------------------

class Response:
    def __init__(self, head, method):
        lines = head[:-4].split(b"\r\n")
        m = re.fullmatch(rb"(HTTP/1\.[01]) (\d{3})(?: (.*))?", lines[0])
        assert m, "expected a status line, got %r" % head[:300]
        self.method = method
        self.head = head
        self.version = m.group(1).decode()
        self.status = int(m.group(2))
        self.headers = parse_headers(lines[1:])
        self.body = b""

    def all(self, name):
        return values_of(self.headers, name)

    def get(self, name):
        v = self.all(name)
        return v[0] if v else None

    def has(self, name):
        return bool(self.all(name))

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<%d %s %r>" % (self.status, self.headers, self.body[:300])


class Client:
    """One client connection to the gateway, spoken in raw bytes."""

    def __init__(self, c):
        self.sock = socket.create_connection(("127.0.0.1", c.gw.port), timeout=5)
        self.rd = Reader(self.sock)
        self.pending = collections.deque()   # request lines sent and not yet answered

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def send(self, data):
        m = re.match(rb"([A-Z]+) (\S+) HTTP/1\.[01]\r\n", data)
        if m:
            self.pending.append((m.group(1).decode(), m.group(2).decode("latin-1")))
        self.sock.sendall(data)

    def response(self, timeout=10.0):
        """The next answer, interim (1xx) ones included, read exactly by its framing."""
        method, target = self.pending[0] if self.pending else ("GET", "?")
        self.rd.deadline = time.monotonic() + timeout
        try:
            r = Response(self.rd.until(b"\r\n\r\n", 1 << 20), method)
            if r.status < 200 or r.status in (204, 304) or method == "HEAD":
                pass
            elif r.has("transfer-encoding"):
                codings = [t.strip().lower() for v in r.all("transfer-encoding") for t in v.split(",")]
                r.body = read_chunked(self.rd) if codings[-1] == "chunked" else self.rd.to_close()
            elif r.has("content-length"):
                r.body = self.rd.exactly(int(r.get("content-length")))
            else:
                r.body = self.rd.to_close()
        except socket.timeout:
            raise AssertionError("%s %s: no complete answer within %.1fs (got %r)"
                                 % (method, target, timeout, self.rd.buf[:300]))
        except Eof:
            raise AssertionError("%s %s: connection closed before a complete answer (got %r)"
                                 % (method, target, self.rd.buf[:300]))
        if r.status >= 200:
            if self.pending:
                self.pending.popleft()
            ANSWERS.append({"request": "%s %s" % (method, target), "status": r.status,
                            "x-request-id": r.get("x-request-id")})
        return r

    def final(self, timeout=10.0):
        for _ in range(10):
            r = self.response(timeout)
            if r.status >= 200:
                return r
        raise AssertionError("ten interim answers in a row")

    def exchange(self, data, timeout=10.0):
        self.send(data)
        return self.final(timeout)

    def wait_closed(self, timeout):
        """(True, bytes that came first) once the gateway closes; (False, bytes) if it does
        not within timeout."""
        self.rd.deadline = time.monotonic() + timeout
        try:
            return True, self.rd.to_close()
        except socket.timeout:
            return False, self.rd.buf


def request(c, method, path, headers=(), body=None, key=True, version="HTTP/1.1"):
    """Raw request bytes: Host, the test key (unless key=False), headers ("Name: value"
    strings, sent as given) and a Content-Length body."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body, separators=(",", ":")).encode()
    if isinstance(body, str):
        body = body.encode()
    lines = ["%s %s %s" % (method, path, version), "Host: gateway.test"]
    if key:
        lines.append("Authorization: Bearer " + c.key)
    lines += list(headers)
    if body is not None:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def call(c, method, path, headers=(), body=None, key=True, timeout=10.0):
    """One request on a connection of its own; the final answer."""
    with Client(c) as cl:
        return cl.exchange(request(c, method, path, headers, body, key), timeout)


def error_of(r):
    assert r.has("content-type") and "json" in r.get("content-type"), r
    e = json.loads(r.body)["error"]
    assert isinstance(e, dict) and isinstance(e.get("message"), str) and "type" in e, e
    return e


# --- the scripted upstream -------------------------------------------------------------------

class Reply:
    """An answer for the upstream to send; close=True closes the connection after it."""

    def __init__(self, data, close=False):
        self.data, self.close = data, close


def ok(body=b"{}", ctype="application/json", extra=""):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    return (("HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
             % (ctype, len(body), extra)).encode("latin-1") + body)


def chunked(data, size=7):
    out = b""
    for i in range(0, len(data), size):
        part = data[i:i + size]
        out += b"%x\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"


class UpRequest:
    def __init__(self, head, body):
        lines = head[:-4].split(b"\r\n")
        self.head = head
        self.method, target, self.version = (p.decode("latin-1") for p in lines[0].split(b" ", 2))
        self.target = target
        self.path = target.split("?", 1)[0]
        self.headers = parse_headers(lines[1:])
        self.body = body
        self.conn = self.n = self.seq = None   # set by the upstream

    def all(self, name):
        return values_of(self.headers, name)

    def get(self, name):
        v = self.all(name)
        return v[0] if v else None

    def names(self):
        return [k.lower() for k, _ in self.headers]

    def __repr__(self):
        return "<%s %s on conn %s #%s>" % (self.method, self.target, self.conn.index, self.n)


def read_request(rd):
    head = rd.until(b"\r\n\r\n", 1 << 20)
    req = UpRequest(head, b"")
    te = [t.strip().lower() for v in req.all("transfer-encoding") for t in v.split(",")]
    if te and te[-1] == "chunked":
        req.body = read_chunked(rd)
    elif req.all("content-length"):
        req.body = rd.exactly(int(req.get("content-length")))
    return req


class UpConn:
    def __init__(self, index, sock):
        self.index, self.sock = index, sock
        self.requests = []
        self.peer_closed = threading.Event()   # the gateway closed it
        self.ended = threading.Event()         # this side is done with it


class Upstream:
    """A raw-TCP HTTP/1.1 upstream on 127.0.0.1. handler(req) returns the bytes to send
    (the connection then reads the next request), a Reply, or None to close the connection
    without a byte. Every connection and request is recorded. Bounded: it lives at most
    `lifetime` seconds, takes at most max_conns connections and max_requests requests on
    each; stop() (or leaving the with block) ends every thread it started."""

    def __init__(self, handler, lifetime=90.0, max_conns=32, max_requests=64):
        self.handler = handler
        self.max_conns, self.max_requests = max_conns, max_requests
        self.deadline = time.monotonic() + lifetime
        self.lock = threading.Lock()
        self.conns, self.requests, self.errors = [], [], []
        self._stop = threading.Event()
        self._threads = []
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(32)
        self.srv.settimeout(0.1)
        self.port = self.srv.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        left = self.stop()
        if et is None and left:
            raise AssertionError("upstream threads still running: %s" % left)

    def _accept_loop(self):
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            try:
                sock, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                if len(self.conns) >= self.max_conns:
                    self.errors.append("more than %d connections" % self.max_conns)
                    sock.close()
                    continue
                conn = UpConn(len(self.conns), sock)
                self.conns.append(conn)
                t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(t)
            t.start()

    def _serve(self, conn):
        rd = Reader(conn.sock, self.deadline, self._stop)
        try:
            for n in range(self.max_requests):
                try:
                    req = read_request(rd)
                except Eof:
                    conn.peer_closed.set()
                    return
                except (Stopped, socket.timeout):
                    return
                except Exception:
                    self.errors.append(traceback.format_exc())
                    return
                with self.lock:
                    req.conn, req.n, req.seq = conn, n, len(self.requests)
                    self.requests.append(req)
                    conn.requests.append(req)
                try:
                    ans = self.handler(req)
                except Exception:
                    self.errors.append(traceback.format_exc())
                    return
                if ans is None:
                    return   # close without answering
                close = False
                if isinstance(ans, Reply):
                    ans, close = ans.data, ans.close
                try:
                    conn.sock.sendall(ans)
                except OSError:
                    return   # the gateway gave up on the answer (e.g. a head too large)
                if close:
                    return
        finally:
            conn.sock.close()
            conn.ended.set()

    def stop(self):
        """Ends the acceptor and every connection thread; returns those still alive."""
        self._stop.set()
        self._acceptor.join(5)
        self.srv.close()
        with self.lock:
            threads = list(self._threads)
        for t in threads:
            t.join(5)
        return [t.name for t in threads + [self._acceptor] if t.is_alive()]

    def arrivals(self, marker):
        """How many requests, over all connections, carried marker in their body."""
        with self.lock:
            return sum(1 for r in self.requests if marker in r.body)


# --- routes -----------------------------------------------------------------------------------

def route(name, path, url, match_extra="", extra="", timeout=10):
    r = ('  - name: %s\n    match: { path: "%s"%s }\n    upstream: { url: "%s" }\n'
         % (name, path, match_extra, url))
    if timeout:
        r += "    timeout: %d\n" % timeout
    return r + extra


@contextlib.contextmanager
def routes(c, *entries):
    """The given routes, in force (reloaded) for the with block."""
    path = os.path.join(c.gw.routes_dir, "50-semantics.yaml")
    with open(path, "w") as f:
        f.write("routes:\n" + "".join(entries))
    try:
        r = c.gw.ctl("reload")
        assert r.get("ok"), r
        yield
    finally:
        os.unlink(path)
        c.gw.ctl("reload")


# --- setup ------------------------------------------------------------------------------------

class Ctx:
    pass


def setup():
    c = Ctx()
    c.dir = tmpdir("fg-http-")
    try:
        c.gw = Gateway(c.dir, None)
        c.key = c.gw.create_key("semantics")["key"]
    except BaseException:
        rmtree(c.dir)
        raise
    return c


def teardown(c):
    try:
        rc = c.gw.stop()
        assert rc == 0, "fastgated exit code %d" % rc
    finally:
        rmtree(c.dir)


# --- 1. bodiless answers: 204 and 304 -------------------------------------------------------

def test_204_no_content_is_relayed_without_body_or_chunking_and_the_connection_serves_again(c):
    def handler(r):
        if r.path == "/t204/delete":
            return b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\nX-Up: 204\r\n\r\n"
        return ok(b'{"second":true}')
    with Upstream(handler) as up, routes(c, route("t204", "/t204/**", up.url)):
        with Client(c) as cl:
            r = cl.exchange(request(c, "POST", "/t204/delete", body={"id": 1}))
            assert r.status == 204 and r.get("x-up") == "204", r
            assert not r.has("transfer-encoding"), "204 relayed with Transfer-Encoding: %r" % r.head
            assert not r.has("content-length"), "204 relayed with Content-Length: %r" % r.head
            # the next answer must start right after the 204's head: no body bytes between
            r2 = cl.exchange(request(c, "GET", "/t204/next"))
            assert r2.status == 200 and r2.body == b'{"second":true}', r2
        assert [q.path for q in up.requests] == ["/t204/delete", "/t204/next"], up.requests


def test_304_not_modified_is_relayed_without_body_or_chunking_and_the_connection_serves_again(c):
    def handler(r):
        if r.path == "/t304/doc" and r.get("if-none-match") == '"v1"':
            return b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nConnection: keep-alive\r\n\r\n'
        return ok(b'{"fresh":true}', extra='ETag: "v2"\r\n')
    with Upstream(handler) as up, routes(c, route("t304", "/t304/**", up.url)):
        with Client(c) as cl:
            r = cl.exchange(request(c, "GET", "/t304/doc", ['If-None-Match: "v1"']))
            assert r.status == 304 and r.get("etag") == '"v1"', r
            assert not r.has("transfer-encoding"), "304 relayed with Transfer-Encoding: %r" % r.head
            assert not r.has("content-length"), "304 relayed with Content-Length: %r" % r.head
            r2 = cl.exchange(request(c, "GET", "/t304/other"))
            assert r2.status == 200 and r2.body == b'{"fresh":true}', r2


# --- 2. HEAD ------------------------------------------------------------------------------------

def test_head_answer_keeps_its_content_length_and_has_no_body(c):
    def handler(r):
        if r.method == "HEAD":
            return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: 1234\r\n\r\n")
        return ok(b"after-head", ctype="text/plain")
    with Upstream(handler) as up, routes(c, route("head", "/head/**", up.url)):
        with Client(c) as cl:
            r = cl.exchange(request(c, "HEAD", "/head/file"))
            assert r.status == 200, r
            assert r.all("content-length") == ["1234"], "HEAD answer head: %r" % r.head
            assert not r.has("transfer-encoding"), "HEAD answer head: %r" % r.head
            r2 = cl.exchange(request(c, "GET", "/head/file"))
            assert r2.status == 200 and r2.body == b"after-head", r2
        assert [q.method for q in up.requests] == ["HEAD", "GET"], up.requests


# --- 3. no automatic second POST --------------------------------------------------------------

def reused_connection_drops_second_request(r):
    """Connection 0 answers its first request, then reads the second whole and closes
    without a byte; every other connection answers."""
    if r.conn.index == 0 and r.n == 1:
        return None
    return ok({"conn": r.conn.index, "n": r.n})


def test_post_is_not_resent_when_a_reused_upstream_connection_closes_under_it(c):
    marker = "post-two-%d" % time.monotonic_ns()
    with Upstream(reused_connection_drops_second_request) as up, \
            routes(c, route("postonce", "/postonce/**", up.url)):
        # one client connection: it stays on one event loop, whose upstream connection the
        # second request reuses (each loop keeps its own)
        with Client(c) as cl:
            r1 = cl.exchange(request(c, "POST", "/postonce/x", (),
                                     {"model": "m", "marker": "post-one"}, True), 10.0)
            assert r1.status == 200 and r1.json() == {"conn": 0, "n": 0}, r1
            r2 = cl.exchange(request(c, "POST", "/postonce/x", (),
                                     {"model": "m", "marker": marker}, True), 10.0)
        n = up.arrivals(marker.encode())
        assert r2.status == 502 and n == 1, (
            "POST #2: status %d (want 502), reached the upstream %d times (want 1): %s"
            % (r2.status, n, [q for q in up.requests if marker.encode() in q.body]))
        error_of(r2)


def test_idempotent_get_may_be_retried_on_a_new_connection_when_a_reused_one_closes(c):
    with Upstream(reused_connection_drops_second_request) as up, \
            routes(c, route("getretry", "/getretry/**", up.url)):
        with Client(c) as cl:   # one client connection, one loop (as above)
            r1 = cl.exchange(request(c, "GET", "/getretry/one", (), None, True), 10.0)
            assert r1.status == 200 and r1.json() == {"conn": 0, "n": 0}, r1
            r2 = cl.exchange(request(c, "GET", "/getretry/two", (), None, True), 10.0)
        got = [q for q in up.requests if q.path == "/getretry/two"]
        assert r2.status == 200 and r2.json()["conn"] != 0, r2
        assert 1 <= len(got) <= 2, got


# --- 4. hop-by-hop answer headers ----------------------------------------------------------

def test_answer_headers_named_in_connection_are_not_relayed(c):
    def handler(r):
        if r.path == "/hop/one":
            return ok(b"{}", extra="Connection: x-hop-secret\r\nX-Hop-Secret: s3cret\r\nX-Kept: yes\r\n")
        return ok(b"{}", extra="Connection: keep-alive, X-Hop-A , x-hop-b\r\n"
                               "X-Hop-A: aaa\r\nX-HOP-B: bbb\r\nX-Kept: yes\r\n")
    with Upstream(handler) as up, routes(c, route("hop", "/hop/**", up.url)):
        r = call(c, "GET", "/hop/one")
        assert r.status == 200 and r.get("x-kept") == "yes", r
        assert not r.has("x-hop-secret") and b"s3cret" not in r.head, r.head
        r = call(c, "GET", "/hop/many")
        assert r.status == 200 and r.get("x-kept") == "yes", r
        assert not r.has("x-hop-a") and not r.has("x-hop-b"), r.head


# --- 5. HTTP/1.0 chunked answer --------------------------------------------------------------

def test_http10_chunked_answer_is_dechunked_and_its_upstream_connection_not_reused(c):
    body = b'{"part":"one and two","whole":true}'

    def handler(r):
        if r.conn.index == 0 and r.n == 0:
            return (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n" + chunked(body))
        return ok({"conn": r.conn.index, "n": r.n})
    with Upstream(handler) as up, routes(c, route("old", "/old/**", up.url)):
        r = call(c, "GET", "/old/first")
        assert r.status == 200 and r.body == body, r
        r = call(c, "GET", "/old/second")
        assert r.status == 200, r
        second = [q for q in up.requests if q.path == "/old/second"]
        assert second and second[0].conn.index != 0, (
            "the HTTP/1.0 chunked answer's connection was reused: %s" % second)
        wait_for(lambda: up.conns[0].peer_closed.is_set(), timeout=5,
                 what="the gateway to close the HTTP/1.0 upstream connection")


# --- 6. large answer heads --------------------------------------------------------------------

def test_upstream_header_over_8k_reaches_the_client_intact(c):
    big = "a" * 10000
    with Upstream(lambda r: ok(b"{}", extra="X-Big: %s\r\nX-After: 1\r\n" % big)) as up, \
            routes(c, route("bighdr", "/bighdr/**", up.url)):
        r = call(c, "GET", "/bighdr/x")
        assert r.status == 200 and r.get("x-after") == "1", r.status
        assert r.all("x-big") == [big], "X-Big: %r" % [len(v) for v in r.all("x-big")]


def test_upstream_head_over_64k_is_502_and_the_gateway_stays_up(c):
    fill = "".join("X-Fill-%02d: %s\r\n" % (i, "f" * 1000) for i in range(70))   # ~70 KB

    def handler(r):
        if r.path == "/hugehead/huge":
            return Reply(ok(b"{}", extra=fill), close=True)
        return ok(b'{"small":true}')
    with Upstream(handler) as up, routes(c, route("hugehead", "/hugehead/**", up.url)):
        r = call(c, "GET", "/hugehead/huge")
        assert r.status == 502, (r.status, r.head[:300])
        error_of(r)
        r = call(c, "GET", "/hugehead/small")
        assert r.status == 200 and r.body == b'{"small":true}', r
    assert c.gw.proc.alive()


# --- 7. request header names with '_' ---------------------------------------------------------

def test_request_headers_with_underscores_are_not_forwarded(c):
    with Upstream(lambda r: ok(b"{}")) as up, routes(c, route("under", "/under/**", up.url)):
        r = call(c, "GET", "/under/x", ["X_API_Key: fg_whatever", "X_Forwarded_For: 1.2.3.4",
                                        "Some_Header: v", "Some-Header: v"])
        assert r.status == 200, r
        assert len(up.requests) == 1, up.requests
        names = up.requests[0].names()
        leaked = [n for n in names if "_" in n]
        assert not leaked, "forwarded: %s" % leaked
        assert up.requests[0].all("some-header") == ["v"], up.requests[0].headers


# --- 8. encoded path tricks --------------------------------------------------------------------

def test_encoded_path_tricks_are_400_and_reach_no_upstream(c):
    tricks = ["/v1/..%2f..%2fadmin", "/v1/%2e%2e/admin", "/v1/a%2Fb", "/v1/a%5cb", "/v1/a\\b",
              "/v1/./x", "/v1/%2E/x"]
    with Upstream(lambda r: ok({"path": r.path})) as up, routes(c, route("v1", "/v1/**", up.url)):
        wrong = []
        for path in tricks:
            r = call(c, "GET", path)
            arrived = [q.target for q in up.requests]
            if r.status != 400 or arrived:
                wrong.append((path, r.status, arrived))
            with up.lock:
                up.requests.clear()
        assert not wrong, "(path, status, reached upstream as): %s" % wrong
        r = call(c, "POST", "/v1/chat/completions", body={"model": "m", "messages": []})
        assert r.status == 200 and r.json() == {"path": "/v1/chat/completions"}, r


# --- 9. Accept-Encoding -------------------------------------------------------------------------

def test_accept_encoding_reaches_the_upstream_as_identity(c):
    with Upstream(lambda r: ok(b"{}")) as up, routes(c, route("ae", "/ae/**", up.url)):
        r = call(c, "GET", "/ae/x", ["Accept-Encoding: gzip, br"])
        assert r.status == 200, r
        assert up.requests[0].all("accept-encoding") == ["identity"], up.requests[0].headers


# --- 10. transfer-codings the gateway does not decode -------------------------------------------

def test_answer_with_a_transfer_coding_other_than_chunked_is_502(c):
    data = gzip.compress(b'{"hidden":"gzip transfer-coding"}')

    def handler(r):
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: gzip, chunked\r\n\r\n" + chunked(data))
    with Upstream(handler) as up, routes(c, route("tegz", "/tegz/**", up.url)):
        r = call(c, "GET", "/tegz/x")
        assert r.status == 502, (r.status, r.head, r.body[:100])
        error_of(r)


# --- 11. upstreams by name --------------------------------------------------------------------

def test_upstream_given_as_localhost_is_reached(c):
    with Upstream(lambda r: ok({"path": r.path})) as up, \
            routes(c, route("byname", "/byname/**", "http://localhost:%d/named" % up.port)):
        r = call(c, "POST", "/byname/x", body={"model": "m"})
        assert r.status == 200 and r.json() == {"path": "/named"}, r


def test_unresolvable_upstream_is_502_promptly_while_other_requests_are_served(c):
    with Upstream(lambda r: ok({"path": r.path})) as up, \
            routes(c, route("nohost", "/nohost/**", "http://no-such-host.invalid:9/", timeout=0),
                   route("fine", "/fine/**", up.url)):
        out = {}

        def slow():
            t0 = time.monotonic()
            try:
                out["r"] = call(c, "GET", "/nohost/x", timeout=30)
            except Exception as e:  # reported below
                out["e"] = repr(e)
            out["t"] = time.monotonic() - t0
        t = threading.Thread(target=slow, daemon=True)
        t.start()
        for i in range(3):
            t0 = time.monotonic()
            r = call(c, "GET", "/fine/%d" % i, timeout=5)
            assert r.status == 200 and time.monotonic() - t0 < 2.0, (r, time.monotonic() - t0)
        t.join(35)
        assert not t.is_alive() and "e" not in out, out
        assert out["r"].status == 502 and out["t"] < 10.0, (out["r"], out["t"])
        error_of(out["r"])


# --- 12. unauthenticated bodies and Expect: 100-continue -------------------------------------------

def test_unauthenticated_post_is_401_without_its_body_being_read_and_closed(c):
    with Upstream(lambda r: ok(b"{}")) as up, routes(c, route("authbody", "/authbody/**", up.url)):
        with Client(c) as cl:
            cl.send(b"POST /authbody/x HTTP/1.1\r\nHost: gateway.test\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 10485760\r\n\r\n")
            r = cl.final(timeout=2.0)
            assert r.status == 401, r
            closed, extra = cl.wait_closed(5.0)
            assert closed, "connection still open 5 s after the 401 (got %r)" % extra[:100]
        assert not up.requests, up.requests


def test_expect_100_continue_without_a_key_is_401_not_100(c):
    with Upstream(lambda r: ok(b"{}")) as up, routes(c, route("expect", "/expect/**", up.url)):
        with Client(c) as cl:
            cl.send(b"POST /expect/x HTTP/1.1\r\nHost: gateway.test\r\nExpect: 100-continue\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 20\r\n\r\n")
            r = cl.response(timeout=5.0)
            assert r.status == 401, "first answer: %r" % r.head
        assert not up.requests, up.requests


def test_expect_100_continue_with_a_key_gets_100_then_the_answer(c):
    body = b'{"model":"m","x":"after 100"}'
    with Upstream(lambda r: ok({"got": r.body.decode()})) as up, \
            routes(c, route("expect", "/expect/**", up.url)):
        with Client(c) as cl:
            head = request(c, "POST", "/expect/x", ["Expect: 100-continue"], body)
            cl.send(head[:-len(body)])
            r = cl.response(timeout=5.0)
            assert r.head == b"HTTP/1.1 100 Continue\r\n\r\n", r.head
            cl.send(body)
            r = cl.final(timeout=10.0)
            assert r.status == 200 and r.json() == {"got": body.decode()}, r
        assert len(up.requests) == 1 and up.requests[0].body == body, up.requests


# --- 13. body rewrites keep the client's bytes ---------------------------------------------------

def test_added_body_fields_keep_the_clients_number_bytes(c):
    body = b'{"model":"m","temperature":0.7,"seed":123456789012345678901234567890,"messages":[]}'
    with Upstream(lambda r: ok(b"{}")) as up, \
            routes(c, route("addf", "/addf/**", up.url, extra="    add_body_fields: { max_tokens: 2048 }\n")):
        r = call(c, "POST", "/addf/x", ["Content-Type: application/json"], body)
        assert r.status == 200, r
        assert len(up.requests) == 1, up.requests
        got = up.requests[0].body
        for want in (b'"temperature":0.7', b"123456789012345678901234567890", b'"max_tokens":2048'):
            assert want in got, "%r not in the forwarded body %r" % (want, got)
        assert json.loads(got)["model"] == "m", got


# --- 14. duplicate JSON keys ----------------------------------------------------------------------

def audit_row(c, rid):
    def find():
        rc, out, err = c.gw.cli("logs", "export", "--format", "jsonl",
                                "--fields", "request_id,status,route,model")
        assert rc == 0, (rc, out, err)
        for line in out.splitlines():
            rec = json.loads(line)
            if rec["request_id"] == rid:
                return rec
        return None
    return wait_for(find, timeout=15, interval=0.2, what="the audit row of %s" % rid)


def test_duplicate_json_keys_are_400_reach_no_upstream_and_are_not_audited_as_the_first(c):
    body = b'{"model":"cheap","mod\\u0065l":"expensive","messages":[]}'
    assert b"\\u0065" in body   # the escape itself is sent, not the letter
    with Upstream(lambda r: ok(b"{}")) as up, \
            routes(c, route("dup-cheap", "/dup/**", up.url, match_extra=', body: { model: "cheap" }'),
                   route("dup-any", "/dup/**", up.url)):
        r = call(c, "POST", "/dup/chat", ["Content-Type: application/json"], body)
        rid = r.get("x-request-id")
        assert r.status == 400 and not up.requests, (r, up.requests)
        error_of(r)
    assert rid, r.head
    row = audit_row(c, rid)
    assert row["model"] != "cheap", row


# --- 15. X-Request-Id everywhere, and the daemon alive ---------------------------------------------

def test_every_answer_carried_x_request_id_and_the_gateway_is_alive(c):
    assert c.gw.proc.alive(), c.gw.proc.stderr()[-2000:]
    with Client(c) as cl:
        r = cl.exchange(b"GET /health HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        assert r.status == 200, r
    missing = [a for a in ANSWERS if not a["x-request-id"]]
    assert ANSWERS and not missing, "answers without X-Request-Id: %s" % missing


if __name__ == "__main__":
    if len(sys.argv) > 1:
        os.environ["FG_ONLY"] = sys.argv[1]
    run_tests(globals(), setup, teardown)
