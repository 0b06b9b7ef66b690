"""End to end: several event-loop threads (`fastgated --workers N`, `workers:` in
fastgate.yaml). The real fastgated with two loops accepting on one port (SO_REUSEPORT), in
front of C mock upstreams on free loopback ports.

What is checked: that connections really spread over both loops (read from the per-loop
metrics fastgate_worker_requests_total{worker} and fastgate_worker_connections{worker}),
that every other count is the sum over the loops, and that the state shared between loops
stays exact: one audit row per request, rate limits and balances admitting exactly what
they allow, one breaker, half-open probe, balancer and health state per upstream target
(not one per loop), one max_connections and auth_fail_limit count, and control changes
(keys, users, routes, upstream drains, reloads) seen by every loop as soon as the command
has answered, also under load. Then SIGTERM with streams open on both loops, the live
tail, a port held by another socket, and the values of the setting.

Which loop a connection lands on is the kernel's choice (a hash of the addresses), so the
tests open many connections (40 or more) and, where their meaning depends on both loops
having served, assert it from the per-loop metrics. Those are read over one kept-alive
connection (Scraper) whose loop and whose own share of the counts are measured once at the
start of each test, before any other client connects, so every per-loop figure is exact.

Every wait is bounded and waits for something observable. Each test says in a comment what
would make it fail."""

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from fractions import Fraction

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (CLI, FASTGATED, Closing, Gateway, Mock, demo_routes,  # noqa: E402
                     free_port, rmtree, run_tests, tmpdir, wait_for)

# Every test here picks its own number of loops; FG_WORKERS (harness.py) would override it.
os.environ.pop("FG_WORKERS", None)

WORKERS = 2
CHAT_PATH = "/v1/chat/completions"
CHAT = {"model": "demo-model", "messages": [{"role": "user", "content": "hi loops"}]}
START_LINE = re.compile(r"fastgated \S+ listening on https?://127\.0\.0\.1:\d+ "
                        r"\((\d+) routes, (\d+) keys, (\d+) workers, control [^)]+\)")


# --- metrics --------------------------------------------------------------------------------

SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{name: {((label, value), ...): float}} of a Prometheus text page."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a Prometheus sample line: %r" % line
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        out.setdefault(m.group(1), {})[labels] = float(m.group(3))
    return out


class Snap:
    """One scrape of /metrics, numbered in the order the Scraper took them."""

    def __init__(self, seq, text):
        self.seq = seq
        self.text = text
        self.m = parse_metrics(text)

    def value(self, name, **labels):
        """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
        want = set(labels.items())
        return sum(v for ls, v in self.m.get(name, {}).items() if want <= set(ls))

    def has(self, name):
        return name in self.m

    def workers(self, name, n):
        """The per-loop series of `name`, as a list indexed by loop; exactly n loops."""
        series = self.m.get(name)
        assert series, "%s missing from /metrics" % name
        by = {}
        for ls, v in series.items():
            d = dict(ls)
            assert set(d) == {"worker"}, "%s has labels %r, want only worker" % (name, d)
            by[d["worker"]] = v
        assert sorted(by) == sorted(str(i) for i in range(n)), \
            "%s has workers %r, want 0..%d" % (name, sorted(by), n - 1)
        return [int(by[str(i)]) for i in range(n)]


class Scraper:
    """/metrics over one kept-alive connection. That connection sits on one loop (self.loop,
    the only loop with an open connection when the test has no other client yet), and each
    scrape may itself count as a finished request there (self.overhead, measured): traffic()
    takes both off, so a per-loop figure is exactly the test's own requests."""

    def __init__(self, gw, n, context=None):
        self.gw = gw
        self.n = n
        self.seq = 0
        if context is not None:
            self.conn = http.client.HTTPSConnection("127.0.0.1", gw.port, timeout=15, context=context)
        else:
            self.conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
        self.conn.connect()
        self.sock = self.conn.sock
        a = self.snap()
        b = self.snap()
        c = self.snap()
        conns = c.workers("fastgate_worker_connections", n)
        assert sum(conns) == 1 and max(conns) == 1, \
            "with only the scraper connected, open connections per loop are %r" % conns
        self.loop = conns.index(1)
        d1 = [y - x for x, y in zip(a.workers("fastgate_worker_requests_total", n),
                                    b.workers("fastgate_worker_requests_total", n))]
        d2 = [y - x for x, y in zip(b.workers("fastgate_worker_requests_total", n),
                                    c.workers("fastgate_worker_requests_total", n))]
        assert d1 == d2, "a scrape counts differently each time: %r then %r" % (d1, d2)
        assert sum(d1) in (0, 1) and d1[self.loop] == sum(d1), \
            "a scrape on loop %d counted as %r" % (self.loop, d1)
        self.overhead = d1

    def snap(self):
        self.conn.request("GET", "/metrics")
        r = self.conn.getresponse()
        data = r.read()
        assert r.status == 200, (r.status, data[:200])
        assert self.seq == 0 or self.conn.sock is self.sock, \
            "the scraper's kept-alive connection was closed (its loop may have changed)"
        self.seq += 1
        return Snap(self.seq, data.decode())

    def requests(self, s):
        return s.workers("fastgate_worker_requests_total", self.n)

    def client_conns(self, s):
        """Open client connections per loop, the scraper's own taken off."""
        c = s.workers("fastgate_worker_connections", self.n)
        c[self.loop] -= 1
        return c

    def traffic(self, a, b):
        """Requests finished per loop between scrapes a and b, the scrapes' own taken off."""
        ra, rb = self.requests(a), self.requests(b)
        return [rb[i] - ra[i] - self.overhead[i] * (b.seq - a.seq) for i in range(self.n)]

    def wait_traffic(self, a, total, timeout=15):
        """Scrape until the loops together have finished `total` requests since a (a
        request is counted when its loop has finished it, a moment after the client has
        its answer). Returns the last scrape and the per-loop counts; the counts may be
        more than total, which the caller asserts against."""
        box = {}

        def enough():
            s = self.snap()
            t = self.traffic(a, s)
            box["s"], box["t"] = s, t
            return sum(t) >= total
        try:
            wait_for(enough, timeout=timeout, interval=0.05,
                     what="%d requests counted by the loops" % total)
        except AssertionError:
            raise AssertionError("the loops counted %r requests, not %d" % (box.get("t"), total))
        return box["s"], box["t"]

    def close(self):
        self.conn.close()


# --- clients --------------------------------------------------------------------------------

def send(conn, method, path, body=None, headers=None):
    h = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


class Burst:
    """n threads, each with a client connection of its own, all connected before any of
    them sends; then fn(conn, i) in each. results[i] is fn's value (or the exception it
    raised) as soon as thread i is done, so a test can watch them come in. With `conns`,
    thread i uses conns[i] (kept open) instead of a new connection."""

    def __init__(self, port, n, fn, timeout=60, conns=None, context=None):
        self.results = [None] * n
        self.done = [False] * n
        self.timeout = timeout
        ready = threading.Barrier(n, timeout=20)

        def run(i):
            c = None
            try:
                if conns is not None:
                    c = conns[i]
                elif context is not None:
                    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
                    c.connect()
                else:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    c.connect()
                ready.wait()
                self.results[i] = fn(c, i)
            except Exception as e:  # noqa: BLE001 - a failed client is a result here
                self.results[i] = e
            finally:
                if c is not None and conns is None:
                    c.close()
                self.done[i] = True
        self.threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def finished(self):
        return sum(self.done)

    def join(self):
        deadline = time.monotonic() + self.timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "client threads still running"
        errors = [r for r in self.results if isinstance(r, Exception)]
        assert not errors, "%d clients failed, e.g. %r" % (len(errors), errors[:3])
        return self.results


def burst(port, n, fn, timeout=60, conns=None, context=None):
    return Burst(port, n, fn, timeout, conns, context).join()


def raw_get(port, path, headers=None, timeout=10):
    """A GET on a new raw connection, left open: (socket or None, status or the error)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    extra = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: gw\r\n%s\r\n" % (path, extra)).encode())
        buf = b""
        while True:
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length: *(\d+)", head)
                if m and len(body) >= int(m.group(1)):
                    return s, int(head.split(b" ", 2)[1])
            d = s.recv(65536)
            if not d:
                s.close()
                return None, int(head.split(b" ", 2)[1]) if buf.startswith(b"HTTP/1.1 ") else "closed"
            buf += d
    except (ConnectionResetError, BrokenPipeError) as e:
        s.close()
        return None, type(e).__name__


def error_code(data):
    e = json.loads(data)["error"]
    assert set(e) >= {"message", "type", "code"}, e
    return e["code"]


# --- environment ----------------------------------------------------------------------------

class Env(Closing):
    """Mocks (each in a directory of its own) and a gateway with `workers` loops. `routes`
    is formatted with m = the first mock's origin and m0, m1, ... = each mock's; None means
    harness.demo_routes (chat, models, echo) on the first mock. `config` is written to
    fastgate.yaml and passed with -c; `workers` None leaves the number to the config."""

    def __init__(self, routes=None, config=None, workers=WORKERS, args=(), mocks=1, loops=None,
                 context=None):
        self.dir = tmpdir("fg-workers-")
        self.mocks = []
        self.killed = set()
        self.gw = None
        self.scraper = None
        try:
            for i in range(mocks):
                sub = os.path.join(self.dir, "m%d" % i)
                os.makedirs(sub)
                self.mocks.append(Mock(sub))
            self.mock = self.mocks[0] if self.mocks else None
            fmt = {"m%d" % i: m.url for i, m in enumerate(self.mocks)}
            if self.mock:
                fmt["m"] = self.mock.url
            text = demo_routes(self.mock.url) if routes is None else routes.format(**fmt)
            extra = []
            self.config = None
            if config is not None:
                self.config = os.path.join(self.dir, "fastgate.yaml")
                with open(self.config, "w") as f:
                    f.write(config)
                extra += ["-c", self.config]
            if workers is not None:
                extra += ["--workers", str(workers)]
            extra += list(args)
            self.gw = Gateway(self.dir, text, extra_args=extra)
            self.loops = loops or workers
            self.scraper = Scraper(self.gw, self.loops, context)
        except BaseException:
            self.close()
            raise
        self.db = os.path.join(self.dir, "audit.db")

    def close(self):
        errors = []
        try:
            if self.scraper:
                self.scraper.close()
            if self.gw:
                try:
                    if self.gw.proc.alive():
                        rc = self.gw.stop()
                        if rc != 0:
                            errors.append("fastgated exit code %d" % rc)
                    else:
                        self.gw.proc.stop()     # reaps it and closes its files
                        rc = self.gw.proc.p.returncode
                        rep = self.gw.proc.sanitizer_report()
                        if rc != 0 or rep:
                            errors.append("fastgated exited with %s%s" % (rc, ":\n" + rep if rep else ""))
                except AssertionError as e:     # a sanitizer report: the mocks still go
                    errors.append(str(e))
            for i, m in enumerate(self.mocks):
                if i in self.killed:
                    m.proc.stop()
                    continue
                try:
                    m.stop()
                except AssertionError as e:
                    errors.append(str(e))
        finally:
            if not os.environ.get("FG_KEEP_TMP"):
                rmtree(self.dir)
        if errors:
            raise AssertionError("; ".join(errors))

    def kill_mock(self, i):
        """SIGKILL mock i by its PID and reap it."""
        m = self.mocks[i]
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.p.wait(5)
        self.killed.add(i)

    def start_line(self):
        m = START_LINE.search(self.gw.proc.stderr())
        assert m, "no start-up line with a worker count:\n" + self.gw.proc.stderr()[-2000:]
        return int(m.group(1)), int(m.group(2)), int(m.group(3))

    def auth(self, key):
        return {"Authorization": "Bearer " + key}

    def cli_json(self, *args):
        rc, out, err = self.gw.cli("--json", *args)
        assert rc == 0, "fastgate-cli %s: exit %d\n%s%s" % (" ".join(args), rc, out, err)
        return json.loads(out)

    def audit(self, count, timeout=20):
        """Every audit row, once the writer has committed at least `count` and its queue is
        empty; the caller asserts the exact number."""
        def rows():
            try:
                db = sqlite3.connect(self.db, timeout=5)
            except sqlite3.Error:
                return None
            try:
                db.row_factory = sqlite3.Row
                return [dict(r) for r in db.execute("SELECT * FROM audit ORDER BY rowid")]
            except sqlite3.OperationalError:
                return None     # no table yet
            finally:
                db.close()

        def settled():
            r = rows()
            if r is None or len(r) < count:
                return None
            if self.gw.proc.alive() and self.scraper.snap().value("fastgate_audit_queue_depth") != 0:
                return None
            return rows()
        return wait_for(settled, timeout=timeout, interval=0.1,
                        what="%d audit rows and an empty audit queue" % count)


def conns_by_loop(env, n, path, headers):
    """n kept-alive connections, each with one GET of path on it and the loop that counted
    it: {loop: [connection, ...]} and the list of all of them (for the caller to close)."""
    by_loop = {i: [] for i in range(env.loops)}
    conns = []
    try:
        for _ in range(n):
            c = http.client.HTTPConnection("127.0.0.1", env.gw.port, timeout=15)
            conns.append(c)
            a = env.scraper.snap()
            st, _, data = send(c, "GET", path, headers=headers)
            assert st == 200, (st, data)
            _, t = env.scraper.wait_traffic(a, 1)
            assert sorted(t) == [0] * (env.loops - 1) + [1], t
            by_loop[t.index(1)].append(c)
    except BaseException:
        for c in conns:
            c.close()
        raise
    if not all(by_loop.values()):
        for c in conns:
            c.close()
        raise AssertionError("%d connections, none on some loop: %r" % (
            n, {i: len(v) for i, v in by_loop.items()}))
    return by_loop, conns


def both_served(traffic, what):
    assert len(traffic) == WORKERS and all(t > 0 for t in traffic), \
        "%s: requests per loop %r; the test needs both loops to have served" % (what, traffic)


# --- 1. distribution, and every count is the sum over the loops ----------------------------

def test_requests_spread_over_both_loops_and_every_count_is_their_sum():
    # Fails if the second loop never accepts (all connections on one loop), if the per-loop
    # series are missing or wrong (their sum is not the requests made, the connections
    # gauge does not follow the connections), if fastgate_requests_total, status or the
    # mock do not see exactly the requests made, or if the audit loses or doubles a row or
    # two loops hand out the same request id.
    with Env() as env:
        routes_n, keys_n, workers = env.start_line()
        assert workers == WORKERS and routes_n == 3, (routes_n, keys_n, workers)
        s0 = env.scraper.snap()
        assert s0.value("fastgate_workers") == WORKERS, s0.m.get("fastgate_workers")
        key = env.gw.create_key("spread")["key"]
        n_conns, per = 40, 10
        total = n_conns * per
        hold = threading.Barrier(n_conns + 1, timeout=60)

        def client(c, i):
            out = []
            for j in range(per):
                st, h, data = send(c, "POST", CHAT_PATH, CHAT, env.auth(key))
                out.append((st, h.get("x-request-id"), data))
            hold.wait()      # every connection stays open until the test has looked ...
            hold.wait()      # ... and then closes
            return out
        b = Burst(env.gw.port, n_conns, client)
        hold.wait()
        try:
            s1 = env.scraper.snap()
            conns = env.scraper.client_conns(s1)
            assert sum(conns) == n_conns, "open client connections per loop %r, want %d in all" % (
                conns, n_conns)
            assert all(c > 0 for c in conns), "every connection on one loop: %r" % conns
            assert s1.value("fastgate_open_connections") == n_conns + 1, \
                (s1.value("fastgate_open_connections"), conns)
            st = env.gw.ctl("status")["result"]
            assert st["workers"] == WORKERS and st["connections"] == n_conns + 1, st
        finally:
            hold.wait()
        results = [r for rs in b.join() for r in rs]
        bad = [(st, d[:200]) for st, _, d in results if st != 200]
        assert not bad, "%d of %d not 200, e.g. %r" % (len(bad), total, bad[:3])
        ids = [rid for _, rid, _ in results]
        assert len(set(ids)) == total and None not in ids, "request ids not unique: %d of %d" % (
            len(set(ids)), total)

        s2, traffic = env.scraper.wait_traffic(s0, total)
        both_served(traffic, "400 requests over 40 connections")
        assert sum(traffic) == total, "the loops counted %r, %d in all, not %d" % (
            traffic, sum(traffic), total)
        # the connections closed: every loop's gauge back to what it was
        wait_for(lambda: env.scraper.client_conns(env.scraper.snap()) == [0] * WORKERS,
                 timeout=10, what="the per-loop connection gauges to come back to 0")
        s3 = env.scraper.snap()
        assert s3.value("fastgate_requests_total", route="chat", status="200") == total, \
            s3.value("fastgate_requests_total", route="chat")
        assert s3.value("fastgate_requests_total") == total, s3.value("fastgate_requests_total")
        assert s3.value("fastgate_inflight_requests") == 0
        assert s3.value("fastgate_upstream_attempts_total", route="chat", outcome="ok") == total
        assert s3.value("fastgate_request_duration_seconds_count") == total
        st = env.gw.ctl("status")
        assert st["ok"] and st["result"]["requests"] == total, st
        assert env.mock.stats()["chat"] == total

        rows = env.audit(total)
        assert len(rows) == total, "%d audit rows for %d requests" % (len(rows), total)
        assert sorted(r["request_id"] for r in rows) == sorted(ids), "audit ids differ from answers'"
        assert all(r["status"] == 200 and r["route"] == "chat" for r in rows)
        # and the CLI's export says the same
        rc, out, err = env.gw.cli("logs", "export", "--format", "jsonl")
        assert rc == 0, (rc, err)
        exported = [json.loads(line)["request_id"] for line in out.splitlines() if line.strip()]
        assert sorted(exported) == sorted(ids), (len(exported), total)


# --- 2. an exact rate limit -----------------------------------------------------------------

def test_a_key_requests_limit_is_exact_across_loops():
    # A key limited to 50 requests a minute, 200 requests at once over 40 connections.
    # Fails if each loop keeps its own count (up to 50 per loop get through), if the check
    # and the count are not one step between loops (more than 50), or if a refusal is
    # forwarded or not audited.
    with Env() as env:
        k = env.gw.create_key("limited", limits=["requests:50/min"])
        a = env.scraper.snap()

        def client(c, i):
            return [send(c, "POST", CHAT_PATH, CHAT, env.auth(k["key"])) for _ in range(5)]
        results = [r for rs in burst(env.gw.port, 40, client) for r in rs]
        statuses = [st for st, _, _ in results]
        assert statuses.count(200) == 50 and statuses.count(429) == 150, \
            "200: %d, 429: %d, others %r" % (statuses.count(200), statuses.count(429),
                                            sorted(set(statuses) - {200, 429}))
        for st, h, data in results:
            if st == 429:
                assert error_code(data) == "rate_limited", data
                assert int(h["retry-after"]) >= 1, h
        _, traffic = env.scraper.wait_traffic(a, 200)
        both_served(traffic, "200 requests over 40 connections")
        assert sum(traffic) == 200, traffic
        assert env.mock.stats()["chat"] == 50, env.mock.stats()["chat"]
        st, _, data = env.gw.request("GET", "/v1/usage", headers=env.auth(k["key"]))
        assert st == 200, data
        lim = json.loads(data)["key"]["limits"][0]
        assert lim["used"] == 50 and lim["remaining"] == 0, lim
        # one more, on a new connection on either loop: still refused
        st, _, data = env.gw.request("POST", CHAT_PATH, CHAT, env.auth(k["key"]))
        assert st == 429, (st, data)
        # raised to 70 with key update: exactly 20 more, wherever they land
        r = env.gw.ctl("key.update", {"id": k["id"], "limits": ["requests:70/min"]})
        assert r.get("ok"), r
        a = env.scraper.snap()
        results = [r_ for rs in burst(env.gw.port, 40, lambda c, i: [
            send(c, "POST", CHAT_PATH, CHAT, env.auth(k["key"])) for _ in range(2)]) for r_ in rs]
        statuses = [st for st, _, _ in results]
        assert statuses.count(200) == 20 and statuses.count(429) == 60, statuses
        _, traffic = env.scraper.wait_traffic(a, 80)
        both_served(traffic, "80 requests over 40 connections")
        assert env.mock.stats()["chat"] == 70
        rows = env.audit(282)   # and the GET /v1/usage
        chats = [r_["status"] for r_ in rows if r_["path"] == CHAT_PATH]
        assert len(rows) == 282 and len(chats) == 281, len(rows)
        assert chats.count(200) == 70 and chats.count(429) == 211, chats


# --- 3. an exact balance --------------------------------------------------------------------

W_MODEL = "w-model"
# USD 1000 per 1M tokens: exactly 1,000,000 nano-dollars a token, in and out
PRICING_TEXT = 'version: "workers-1"\nprices:\n  - { match: "%s", input: 1000, output: 1000 }\n' % W_MODEL
NANO = 10 ** 9
NANO_PER_TOKEN = 1000 * NANO // 10 ** 6


@contextlib.contextmanager
def priced_env(**kw):
    """An Env whose gateway prices W_MODEL with PRICING_TEXT (--pricing)."""
    d = tmpdir("fg-workers-pricing-")
    try:
        pricing = os.path.join(d, "pricing.yaml")
        with open(pricing, "w") as f:
            f.write(PRICING_TEXT)
        with Env(args=["--pricing", pricing], **kw) as env:
            yield env
    finally:
        rmtree(d)


def usd(nano):
    return "%d.%09d" % (nano // NANO, nano % NANO)


def nano_of(text):
    whole, _, frac = text.partition(".")
    assert len(frac) == 9 and whole.isdigit() and frac.isdigit(), text
    return int(whole) * NANO + int(frac)


def mock_post(mock, path, obj=None):
    c = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=5)
    c.request("POST", path, body=json.dumps(obj if obj is not None else {}).encode(),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    assert r.status == 200, (path, r.status, data)
    return json.loads(data)


def test_a_user_balance_admits_exactly_what_it_pays_for_across_loops():
    # A balance of 12.5 request estimates, 60 requests at once over 60 connections, the
    # admitted ones held at the mock until every request is decided (so no settlement frees
    # room). Fails if the loops reserve against copies of the balance or not atomically
    # (more than 12 reach the mock), if a reservation is lost or doubled (reserved is not
    # 12 estimates), or if settlement is not exact (spent is not 12 times the cost of one
    # answer to the nano-dollar, reserved not back to 0).
    with priced_env() as env:
        body = json.dumps({"model": W_MODEL, "max_tokens": 200,
                           "messages": [{"role": "user", "content": "x" * 120}]},
                          separators=(",", ":")).encode()
        # fastgated(8), SPEND CONTROL: the estimate is ceil(body bytes / 4) prompt
        # tokens plus max_tokens output tokens
        e = ((len(body) + 3) // 4 + 200) * NANO_PER_TOKEN
        admit = 12
        credit = admit * e + e // 2
        u = env.cli_json("user", "create", "--name", "payer", "--balance", usd(credit))
        k = env.cli_json("key", "create", "--name", "payer-key", "--user", str(u["id"]))
        hdr = dict(env.auth(k["key"]), **{"Content-Type": "application/json"})
        a = env.scraper.snap()
        mock_post(env.mock, "/__mock/hold")
        b = Burst(env.gw.port, 60, lambda c, i: send(c, "POST", CHAT_PATH, body, hdr))
        try:
            wait_for(lambda: b.finished() + env.mock.stats()["held"] >= 60, timeout=30,
                     what="all 60 requests to be refused or held at the mock")
            held = env.mock.stats()["held"]
            show = env.cli_json("user", "show", str(u["id"]))
        finally:
            mock_post(env.mock, "/__mock/release")
        results = b.join()
        assert held == admit, "%d requests admitted for a balance of %d estimates and a half" % (
            held, admit)
        assert nano_of(show["reserved_usd"]) == admit * e, (show, usd(admit * e))
        assert nano_of(show["balance_usd"]) == credit - admit * e, show
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 429]
        assert len(ok) == admit and len(refused) == 60 - admit, [r[0] for r in results]
        for _, _, data in refused:
            assert error_code(data) in ("rate_limited", "insufficient_quota"), data
        usages = {(j["usage"]["prompt_tokens"], j["usage"]["completion_tokens"])
                  for j in (json.loads(d_) for _, _, d_ in ok)}
        assert len(usages) == 1, usages
        p, o = usages.pop()
        c = (p + o) * NANO_PER_TOKEN
        assert all(h["x-fastgate-cost"] == usd(c) for _, h, _ in ok), \
            [h.get("x-fastgate-cost") for _, h, _ in ok]
        _, traffic = env.scraper.wait_traffic(a, 60)
        both_served(traffic, "60 requests over 60 connections")
        assert sum(traffic) == 60, traffic
        show = env.cli_json("user", "show", str(u["id"]))
        assert nano_of(show["spent_usd"]) == admit * c, (show, usd(admit * c))
        assert nano_of(show["balance_usd"]) == credit - admit * c, (show, usd(credit - admit * c))
        assert nano_of(show["reserved_usd"]) == 0, show
        assert env.mock.stats()["chat"] == admit
        m = re.search(r'^fastgate_cost_usd_total\{route="chat",model="%s"\} (\S+)$' % W_MODEL,
                      env.scraper.snap().text, re.M)
        assert m and Fraction(m.group(1)) == Fraction(admit * c, NANO), (m and m.group(0), usd(admit * c))
        rows = env.audit(60)
        assert len(rows) == 60, len(rows)
        billed = [r for r in rows if r["billed"]]
        assert len(billed) == admit and sum(r["cost_nano"] for r in billed) == admit * c, \
            [(r["status"], r["cost_nano"]) for r in billed]


# --- 4. one breaker per target --------------------------------------------------------------

def test_breaker_is_one_per_target_not_one_per_loop():
    # A dead primary (a closed port) and a live backup tier; the breaker opens after 4
    # consecutive failures. Requests go one at a time, alternating between a connection on
    # loop 0 and one on loop 1. Fails if each loop has its own breaker (8 failed attempts,
    # two transitions to open), if the failures seen by one loop do not count for the
    # other, or if once open a loop still tries the dead target.
    failures = 4
    dead = "http://127.0.0.1:%d/v1/chat/completions" % free_port()
    routes = ("routes:\n"
              "  - name: pool\n"
              "    match: {{ path: /v1/chat/completions, methods: [POST] }}\n"
              "    upstreams:\n"
              "      - url: " + dead + "\n"
              "      - url: {m}/v1/chat/completions\n"
              "        priority: 1\n"
              "    retry: {{ attempts: 2, on: [connect] }}\n"
              "    breaker: {{ failures: %d, error_rate: 0, cooldown: 60, max_cooldown: 60 }}\n"
              "    timeout: 5\n"
              "  - name: echo\n"
              "    match: {{ path: /echo/** }}\n"
              "    upstream: {{ url: {m} }}\n"
              "    strip_prefix: /echo\n" % failures)
    with Env(routes) as env:
        key = env.gw.create_key("breaker")["key"]
        auth = env.auth(key)
        # connections whose loop is known (found with the echo route, never the pool)
        by_loop, conns = conns_by_loop(env, 24, "/echo/where", auth)
        try:
            a = env.scraper.snap()
            dead_failed_after = []
            for n in range(4 * failures):
                c = by_loop[n % WORKERS][0]
                sock = c.sock
                st, h, data = send(c, "POST", CHAT_PATH, CHAT, auth)
                assert st == 200, (n, st, data)
                assert c.sock is sock, "the gateway closed a kept-alive connection"
                t = env.gw.ctl("route.show", {"name": "pool"})["result"]["upstreams"][0]
                dead_failed_after.append(t["attempts"]["connect"])
            _, traffic = env.scraper.wait_traffic(a, 4 * failures)
            assert traffic == [4 * failures // WORKERS] * WORKERS, traffic
            # the first `failures` requests (two on each loop) each failed once on the dead
            # target; from then on the breaker keeps every loop away from it
            want = list(range(1, failures + 1)) + [failures] * (3 * failures)
            assert dead_failed_after == want, \
                "connect failures at the dead target after each request: %r, want %r" % (
                    dead_failed_after, want)
            t = env.gw.ctl("route.show", {"name": "pool"})["result"]["upstreams"][0]
            assert t["breaker"] == "open" and t["url"] == dead, t
            s = env.scraper.snap()
            assert s.value("fastgate_breaker_transitions_total", route="pool", upstream=dead,
                           to="open") == 1, [l for l in s.text.splitlines()
                                             if l.startswith("fastgate_breaker_transitions_total")]
            assert s.value("fastgate_upstream_attempts_total", route="pool", upstream=dead,
                           outcome="connect") == failures
            assert s.value("fastgate_upstream_up", route="pool", upstream=dead) == 0
            # and under a burst from both loops, still nothing for the dead target
            a = env.scraper.snap()
            res = [r for rs in burst(env.gw.port, 40, lambda c_, i: [
                send(c_, "POST", CHAT_PATH, CHAT, auth) for _ in range(3)]) for r in rs]
            assert all(r[0] == 200 for r in res), [r[0] for r in res]
            _, traffic = env.scraper.wait_traffic(a, 120)
            both_served(traffic, "120 requests over 40 connections")
            s = env.scraper.snap()
            assert s.value("fastgate_upstream_attempts_total", route="pool", upstream=dead,
                           outcome="connect") == failures
            assert s.value("fastgate_breaker_transitions_total", route="pool", upstream=dead,
                           to="open") == 1
        finally:
            for c in conns:
                c.close()
        rows = env.audit(24 + 4 * failures + 120)
        assert len(rows) == 24 + 4 * failures + 120, len(rows)
        dead_attempts = sum(r["attempts"].count(dead + "=") for r in rows if r["attempts"])
        assert dead_attempts == failures, "the audit shows %d attempts at the dead target" % dead_attempts


def test_half_open_lets_one_probe_through_for_all_loops():
    # An upstream that always answers 500 opens after one failure for 1 s; when the
    # cooldown is over, 40 requests at once over 40 connections. Fails if each loop lets a
    # probe of its own through (two or more reach the failing upstream) or none does.
    routes = ("routes:\n"
              "  - name: pool\n"
              "    match: {{ path: /v1/chat/completions, methods: [POST] }}\n"
              "    upstreams:\n"
              "      - url: {m0}/v1/chat/completions\n"
              "      - url: {m1}/v1/chat/completions\n"
              "    retry: {{ attempts: 2, on: [5xx] }}\n"
              "    breaker: {{ failures: 1, error_rate: 0, cooldown: 1, max_cooldown: 30 }}\n"
              "    timeout: 5\n")
    with Env(routes, mocks=2) as env:
        key = env.gw.create_key("probe")["key"]
        mock_post(env.mocks[0], "/__mock/behave", {"fail": "status:500"})
        for _ in range(4):
            st, _, data = env.gw.request("POST", CHAT_PATH, CHAT, env.auth(key))
            assert st == 200, (st, data)
        target = lambda: env.gw.ctl("route.show", {"name": "pool"})["result"]["upstreams"][0]  # noqa: E731
        assert target()["breaker"] == "open", target()
        assert env.mocks[0].stats()["chat"] == 1, env.mocks[0].stats()["chat"]
        wait_for(lambda: target()["retry_in_ms"] == 0, timeout=3, interval=0.02,
                 what="the cooldown to be over")
        a = env.scraper.snap()
        res = [r for rs in burst(env.gw.port, 40, lambda c, i: [
            send(c, "POST", CHAT_PATH, CHAT, env.auth(key)) for _ in range(2)]) for r in rs]
        assert all(r[0] == 200 for r in res), [r[0] for r in res]
        _, traffic = env.scraper.wait_traffic(a, 80)
        both_served(traffic, "80 requests over 40 connections")
        assert env.mocks[0].stats()["chat"] == 2, \
            "%d probes reached the failing upstream after one cooldown, want 1" % (
                env.mocks[0].stats()["chat"] - 1)
        assert target()["breaker"] == "open", target()


def test_round_robin_goes_round_across_loops():
    # Two upstreams, balance round_robin, requests one at a time alternating between a
    # connection on loop 0 and one on loop 1. Fails if each loop has a balancer of its own
    # (the same upstream twice in a row: A A B B ...) rather than one for the route.
    routes = ("routes:\n"
              "  - name: pool\n"
              "    match: {{ path: /v1/chat/completions, methods: [POST] }}\n"
              "    upstreams:\n"
              "      - url: {m0}/v1/chat/completions\n"
              "      - url: {m1}/v1/chat/completions\n"
              "    balance: round_robin\n"
              "    timeout: 5\n"
              "  - name: echo\n"
              "    match: {{ path: /echo/** }}\n"
              "    upstream: {{ url: {m0} }}\n"
              "    strip_prefix: /echo\n")
    with Env(routes, mocks=2) as env:
        key = env.gw.create_key("rr")["key"]
        by_loop, conns = conns_by_loop(env, 16, "/echo/where", env.auth(key))
        try:
            served = []
            for n in range(16):
                before = [m.stats()["chat"] for m in env.mocks]
                st, _, data = send(by_loop[n % WORKERS][0], "POST", CHAT_PATH, CHAT, env.auth(key))
                assert st == 200, (st, data)
                after = [m.stats()["chat"] for m in env.mocks]
                delta = [y - x for x, y in zip(before, after)]
                assert sorted(delta) == [0, 1], delta
                served.append(delta.index(1))
        finally:
            for c in conns:
                c.close()
        assert all(x != y for x, y in zip(served, served[1:])), \
            "upstreams in the order served, loops alternating: %r" % served


# --- 4b. one health state per target --------------------------------------------------------

def test_health_checks_run_once_per_target_and_every_loop_obeys_them():
    # Health checks every second on two upstreams. Fails if every loop runs its own checks
    # (twice the checks reach the mocks), or if the state they find is not seen by every
    # loop: once the checks call a killed upstream unhealthy, no loop may try it again
    # (its breaker is off here, so only the health state keeps it out).
    interval = 1
    routes = ("routes:\n"
              "  - name: pool\n"
              "    match: {{ path: /v1/chat/completions, methods: [POST] }}\n"
              "    upstreams:\n"
              "      - url: {m0}/v1/chat/completions\n"
              "      - url: {m1}/v1/chat/completions\n"
              "    balance: round_robin\n"
              "    retry: {{ attempts: 2, on: [connect] }}\n"
              "    breaker: {{ failures: 0, error_rate: 0 }}\n"
              "    health: {{ path: /v1/models, interval: %d, timeout: 1, healthy: 1, unhealthy: 2 }}\n"
              "    timeout: 5\n" % interval)
    with Env(routes, mocks=2) as env:
        key = env.gw.create_key("health")["key"]

        def checks(i):   # arrivals that are not chats: the health checks
            st = env.mocks[i].stats()
            return st["requests"] - st["chat"]
        wait_for(lambda: checks(0) >= 1 and checks(1) >= 1, timeout=5,
                 what="the first health checks")
        c0 = [checks(0), checks(1)]
        t0 = time.monotonic()
        time.sleep(4.0)   # the window in which the checks are counted
        c1 = [checks(0), checks(1)]
        window = time.monotonic() - t0
        for i in range(2):
            n = c1[i] - c0[i]
            assert 1 <= n <= window / interval + 1, \
                "%d health checks on upstream %d in %.1f s at one every %d s" % (n, i, window, interval)
        up = env.mocks[0].url + "/v1/chat/completions"
        env.kill_mock(0)
        wait_for(lambda: env.gw.ctl("route.show", {"name": "pool"})["result"]["upstreams"][0]
                 ["health"] == "unhealthy", timeout=10, what="the killed upstream to be unhealthy")
        s = env.scraper.snap()
        before = s.value("fastgate_upstream_attempts_total", route="pool", upstream=up)
        a = s
        res = [r for rs in burst(env.gw.port, 40, lambda c, i: [
            send(c, "POST", CHAT_PATH, CHAT, env.auth(key)) for _ in range(3)]) for r in rs]
        assert all(r[0] == 200 for r in res), [r[0] for r in res]
        _, traffic = env.scraper.wait_traffic(a, 120)
        both_served(traffic, "120 requests over 40 connections")
        s = env.scraper.snap()
        after = s.value("fastgate_upstream_attempts_total", route="pool", upstream=up)
        assert after == before, "%d attempts at the unhealthy upstream after the checks found it down" % (
            after - before)
        assert env.mocks[1].stats()["chat"] >= 120


# --- 5. control changes reach every loop at once --------------------------------------------

def test_control_changes_are_seen_by_every_loop_as_soon_as_they_answer():
    # Here the loops come from `workers: 2` in fastgate.yaml. Each change is followed at
    # once by requests on 40 new connections (and, for the revoke, on 40 kept-alive ones
    # opened before it). Fails if a loop serves with a stale key index or route table: a
    # new key refused, a revoked key served, a disabled route served, an enabled one not,
    # a route added by SIGHUP or removed by `fastgate-cli reload` not seen.
    with Env(config="workers: 2\n", workers=None, loops=WORKERS) as env:
        assert env.start_line()[2] == WORKERS

        def wave(method, path, key, body=None, what=""):
            a = env.scraper.snap()
            res = burst(env.gw.port, 40, lambda c, i: send(c, method, path, body, env.auth(key)))
            _, traffic = env.scraper.wait_traffic(a, 40)
            both_served(traffic, what)
            return res

        k = env.gw.create_key("fresh")
        res = wave("POST", CHAT_PATH, k["key"], CHAT, "a new key")
        assert all(st == 200 for st, _, _ in res), [(st, d[:100]) for st, _, d in res if st != 200]

        # kept-alive connections on both loops, opened and used before the revoke
        kept = []
        try:
            for _ in range(40):
                c = http.client.HTTPConnection("127.0.0.1", env.gw.port, timeout=15)
                kept.append(c)
                st, _, data = send(c, "POST", CHAT_PATH, CHAT, env.auth(k["key"]))
                assert st == 200, (st, data)
            conns = env.scraper.client_conns(env.scraper.snap())
            assert all(n > 0 for n in conns), "kept-alive connections per loop: %r" % conns
            socks = [c.sock for c in kept]
            r = env.gw.ctl("key.revoke", {"id": k["id"]})
            assert r.get("ok"), r
            res = burst(env.gw.port, 40, lambda c, i: send(c, "POST", CHAT_PATH, CHAT,
                                                           env.auth(k["key"])), conns=kept)
            assert all(c.sock is s or c.sock is None for c, s in zip(kept, socks))
            assert all(st == 401 for st, _, _ in res), \
                "a revoked key served on a kept-alive connection: %r" % [st for st, _, _ in res]
        finally:
            for c in kept:
                c.close()
        res = wave("POST", CHAT_PATH, k["key"], CHAT, "a revoked key")
        assert all(st == 401 for st, _, _ in res), [st for st, _, _ in res]

        k2 = env.gw.create_key("routes")["key"]

        def after(cmd, what, answered):
            """fastgate-cli cmd, then a wave under k2: every answer as answered(status, body) says"""
            rc, out, err = env.gw.cli(*cmd)
            assert rc == 0, (rc, out, err)
            res = wave("POST", CHAT_PATH, k2, CHAT, what)
            assert all(answered(st, d) for st, _, d in res), [st for st, _, _ in res]

        after(("route", "disable", "chat"), "a disabled route",
              lambda st, d: st == 404 and error_code(d) == "no_route")
        after(("route", "enable", "chat"), "an enabled route", lambda st, d: st == 200)
        # the route's only upstream drained, then back
        after(("upstream", "drain", "chat/0"), "a drained upstream",
              lambda st, d: st == 503 and error_code(d) == "upstream_unavailable")
        after(("upstream", "undrain", "chat/0"), "an undrained upstream", lambda st, d: st == 200)

        # a rotated key: the old secret nowhere, the new one everywhere
        k3 = env.gw.create_key("rotated")
        r = env.gw.ctl("key.rotate", {"id": k3["id"]})
        assert r.get("ok") and r["result"]["key"] != k3["key"], r
        res = wave("POST", CHAT_PATH, k3["key"], CHAT, "a rotated key's old secret")
        assert all(st == 401 for st, _, _ in res), [st for st, _, _ in res]
        res = wave("POST", CHAT_PATH, r["result"]["key"], CHAT, "a rotated key's new secret")
        assert all(st == 200 for st, _, _ in res), [st for st, _, _ in res]

        # a suspended user's key, then resumed
        u = env.gw.ctl("user.create", {"name": "pausing"})
        assert u.get("ok"), u
        k4 = env.gw.create_key("pausing-key", user=u["result"]["id"])["key"]
        r = env.gw.ctl("user.suspend", {"id": u["result"]["id"]})
        assert r.get("ok"), r
        res = wave("POST", CHAT_PATH, k4, CHAT, "a suspended user")
        assert all(st == 403 and error_code(d) == "account_suspended" for st, _, d in res), \
            [st for st, _, _ in res]
        r = env.gw.ctl("user.resume", {"id": u["result"]["id"]})
        assert r.get("ok"), r
        res = wave("POST", CHAT_PATH, k4, CHAT, "a resumed user")
        assert all(st == 200 for st, _, _ in res), [st for st, _, _ in res]

        # a route added by SIGHUP ...
        added = os.path.join(env.gw.routes_dir, "20-added.yaml")
        with open(added, "w") as f:
            f.write("routes:\n  - name: added\n    match: { path: /added/** }\n"
                    "    upstream: { url: %s }\n    strip_prefix: /added\n" % env.mock.url)
        mark = "configuration re-read from"
        n = env.gw.proc.stderr().count(mark)
        os.kill(env.gw.proc.pid, signal.SIGHUP)
        wait_for(lambda: env.gw.proc.stderr().count(mark) > n or "reload failed" in env.gw.proc.stderr(),
                 timeout=10, what="the reload's log line")
        assert "reload failed" not in env.gw.proc.stderr(), env.gw.proc.stderr()[-1500:]
        res = wave("GET", "/added/seen", k2, None, "a route added by SIGHUP")
        assert all(st == 200 and json.loads(d)["path"] == "/seen" for st, _, d in res), \
            [(st, d[:100]) for st, _, d in res if st != 200][:3]
        # ... and removed by the CLI's reload
        os.unlink(added)
        rc, out, err = env.gw.cli("reload")
        assert rc == 0, (rc, out, err)
        res = wave("GET", "/added/seen", k2, None, "a route removed by reload")
        assert all(st == 404 for st, _, _ in res), [st for st, _, _ in res]

        # the number of loops is read at start only: a reload that changes it says so
        with open(env.config, "w") as f:
            f.write("workers: 3\n")
        rc, out, err = env.gw.cli("reload")
        assert rc == 0, (rc, out, err)
        assert "workers: changed in %s; restart fastgated to apply (still 2)" % env.config in err, err
        assert env.gw.ctl("status")["result"]["workers"] == WORKERS
        assert env.scraper.snap().value("fastgate_workers") == WORKERS


# --- 6. SIGTERM with streams on both loops --------------------------------------------------

def open_stream(port, key, chunks, delay_ms):
    """A streamed chat on a raw socket (Connection: close), read up to its first content
    event. Returns (socket, bytes read so far)."""
    body = json.dumps(dict(CHAT, stream=True)).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(("POST %s HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\nConnection: close\r\nX-Mock-Chunks: %d\r\n"
               "X-Mock-Delay-Ms: %d\r\nContent-Length: %d\r\n\r\n"
               % (CHAT_PATH, key, chunks, delay_ms, len(body))).encode() + body)
    buf = b""
    while b'"content":"Hello' not in buf and b'"content":"H' not in buf:
        d = s.recv(65536)
        assert d, "stream closed before its first content: %r" % buf
        buf += d
    return s, buf


def read_to_close(s, buf, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        if not d:
            return buf, True
        buf += d
    return buf, False


def test_sigterm_waits_for_streams_on_every_loop_then_exits_0_with_all_audited():
    # 20 slow streams, open on both loops, then SIGTERM. Fails if a loop stops accepting
    # late (or never), if a loop's streams are cut instead of finished, if the daemon does
    # not exit 0 once they are done, or if a stream's audit row is lost in the shutdown.
    with Env() as env:
        key = env.gw.create_key("streams")["key"]
        n, chunks, delay = 20, 12, 400
        streams = []
        idle = []
        try:
            for _ in range(n):
                streams.append(open_stream(env.gw.port, key, chunks, delay))
            conns = env.scraper.client_conns(env.scraper.snap())
            assert sum(conns) == n and all(c > 0 for c in conns), \
                "streams per loop %r, want %d over both" % (conns, n)
            for _ in range(n):    # and kept-alive connections, idle after one request each
                s, st = raw_get(env.gw.port, "/health")
                assert s is not None and st == 200, st
                idle.append(s)
            conns2 = env.scraper.client_conns(env.scraper.snap())
            assert all(y - x > 0 for x, y in zip(conns, conns2)), \
                "idle connections per loop %r" % [y - x for x, y in zip(conns, conns2)]
            t_term = time.monotonic()
            env.gw.proc.p.send_signal(signal.SIGTERM)

            def refused_everywhere():
                for _ in range(16):   # SO_REUSEPORT: each connect hashes to one listener
                    with socket.socket() as probe:
                        probe.settimeout(1)
                        if probe.connect_ex(("127.0.0.1", env.gw.port)) == 0:
                            return False
                return True
            wait_for(refused_everywhere, timeout=3, interval=0.05,
                     what="both loops to stop accepting")
            assert env.gw.proc.alive(), "fastgated exited with %d streams open" % n
            # the idle connections are closed on every loop, while the streams go on
            for s in idle:
                data, closed = read_to_close(s, b"", timeout=5)
                assert closed and data == b"", "an idle connection kept open: %r" % data[:200]
            assert env.gw.proc.alive()
            outs = []
            for s, buf in streams:
                outs.append(read_to_close(s, buf))
        finally:
            for s, _ in streams:
                s.close()
            for s in idle:
                s.close()
        ids = []
        for data, closed in outs:
            assert closed, "a stream was not ended: %r" % data[-200:]
            head = data.split(b"\r\n\r\n", 1)[0].decode()
            assert head.startswith("HTTP/1.1 200"), head
            assert b"data: [DONE]" in data and data.endswith(b"0\r\n\r\n"), data[-200:]
            ids.append(re.search(r"(?im)^x-request-id: *(\S+)", head).group(1))
        rc = env.gw.proc.p.wait(30)
        assert time.monotonic() - t_term >= (chunks - 1) * delay / 1000.0 - 0.5
        assert rc == 0, "fastgated exit code %d" % rc
        rep = env.gw.proc.sanitizer_report()
        assert not rep, rep
        db = sqlite3.connect(env.db, timeout=5)
        try:
            rows = db.execute("SELECT request_id, status, is_stream, error FROM audit").fetchall()
        finally:
            db.close()
        assert sorted(r[0] for r in rows) == sorted(ids), (len(rows), n)
        assert all(r[1] == 200 and r[2] == 1 and not r[3] for r in rows), rows


# --- 7. the live tail -----------------------------------------------------------------------

class Lines:
    """Lines of a child's stdout, each read with a deadline."""

    def __init__(self, p):
        self.p = p
        self.buf = b""

    def read(self, timeout):
        import select
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no line from the tail within %.0fs (have %r)" % (timeout, self.buf))
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if r:
                d = os.read(self.p.stdout.fileno(), 65536)
                if not d:
                    raise AssertionError("tail ended (exit %r): %r" % (self.p.poll(), self.buf))
                self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def test_live_tail_shows_the_requests_of_every_loop():
    # `fastgate-cli logs tail -f` runs on loop 0's control socket. Fails if the requests
    # that loop 1 finished are not sent to it (or sent twice), or if `logs tail -n` (the
    # in-memory ring and the database) misses or doubles them.
    with Env() as env:
        key = env.gw.create_key("tailed")
        first = env.gw.request("POST", CHAT_PATH, CHAT, env.auth(key["key"]))[1]["x-request-id"]
        p = subprocess.Popen([CLI, "--socket", env.gw.sock, "--json", "logs", "tail", "-f",
                              "-n", "1", "--key", str(key["id"])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            lines = Lines(p)
            assert json.loads(lines.read(15))["request_id"] == first
            a = env.scraper.snap()
            res = burst(env.gw.port, 40, lambda c, i: [
                send(c, "POST", CHAT_PATH, CHAT, env.auth(key["key"])) for _ in range(2)])
            ids = [h["x-request-id"] for rs in res for _, h, _ in rs]
            _, traffic = env.scraper.wait_traffic(a, 80)
            both_served(traffic, "80 requests over 40 connections")
            seen = [json.loads(lines.read(10))["request_id"] for _ in range(80)]
            assert sorted(seen) == sorted(ids), "the tail showed %d of the 80 (%d distinct)" % (
                len(set(seen) & set(ids)), len(set(seen)))
            rc, out, err = env.gw.cli("--json", "logs", "tail", "-n", "80", "--key", str(key["id"]))
            assert rc == 0, (rc, err)
            got = [json.loads(line)["request_id"] for line in out.splitlines() if line.strip()]
            assert sorted(got) == sorted(ids), (len(got), len(set(got) & set(ids)))
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            p.stdout.close()
            p.stderr.close()


# --- 9. the other state that is one for all loops -------------------------------------------

def test_max_connections_is_one_cap_over_all_loops():
    # max_connections: 20 and 40 clients connecting at once, each keeping its connection.
    # Fails if each loop counts only its own (up to 40 served), if the count is not exact
    # when loops accept at the same moment (more or fewer than 19 beside the scraper), or
    # if a refused one is served.
    with Env(config="max_connections: 20\n") as env:
        hold = threading.Barrier(41, timeout=60)
        ready = threading.Barrier(40, timeout=20)
        results = [None] * 40

        def client(i):
            s = None
            try:
                ready.wait()
                s, results[i] = raw_get(env.gw.port, "/health")
            except Exception as e:  # noqa: BLE001 - a failed client is a result here
                results[i] = repr(e)
            try:
                hold.wait()      # every client has its answer ...
                hold.wait()      # ... and keeps a served connection open until the test has counted
            except threading.BrokenBarrierError:
                pass
            if s is not None:
                s.close()
        ts = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(40)]
        for t in ts:
            t.start()
        try:
            hold.wait()
            served = [r for r in results if r == 200]
            refused = [r for r in results if r != 200]
            assert len(served) == 19, "%d served with max_connections 20 (one is the scraper's): %r" % (
                len(served), results)
            assert all(r in (503, "closed", "ConnectionResetError", "BrokenPipeError")
                       for r in refused), refused
            # the refused ones are closed by the gateway as it answers them
            wait_for(lambda: env.gw.ctl("status")["result"]["connections"] == 20, timeout=5,
                     what="status to count 20 connections")
            conns = env.scraper.client_conns(env.scraper.snap())
            assert sum(conns) == 19 and all(c > 0 for c in conns), conns
        finally:
            try:
                hold.wait()
            except threading.BrokenBarrierError:
                pass
            for t in ts:
                t.join(10)
        # the slots come back, on whichever loop
        wait_for(lambda: env.scraper.client_conns(env.scraper.snap()) == [0] * WORKERS, timeout=10,
                 what="the closed connections to be counted off")
        res = burst(env.gw.port, 19, lambda c, i: send(c, "GET", "/health"))
        assert all(r[0] == 200 for r in res), [r[0] for r in res]


def test_auth_failure_limit_is_exact_across_loops():
    # auth_fail_limit: 10/min and 40 requests at once with an unknown key from one address
    # (loopback is never counted, so the address comes through a trusted proxy's
    # X-Forwarded-For). Fails if each loop keeps its own table (up to 20 get 401), if the
    # count races (other than exactly 10), or if the address is not refused everywhere
    # afterwards, a valid key included.
    with Env(config="auth_fail_limit: 10/min\ntrusted_proxies: [127.0.0.1]\n") as env:
        who = {"X-Forwarded-For": "203.0.113.41"}
        good = dict(env.auth(env.gw.create_key("good")["key"]), **who)
        bad = dict({"Authorization": "Bearer fg_" + "A" * 46}, **who)
        a = env.scraper.snap()
        res = burst(env.gw.port, 40, lambda c, i: send(c, "GET", "/v1/models", None, bad))
        statuses = [r[0] for r in res]
        assert statuses.count(401) == 10 and statuses.count(429) == 30, statuses
        assert all(error_code(d) == "too_many_auth_failures" for st, _, d in res if st == 429)
        _, traffic = env.scraper.wait_traffic(a, 40)
        both_served(traffic, "40 requests over 40 connections")
        res = burst(env.gw.port, 40, lambda c, i: send(c, "GET", "/v1/models", None, good))
        assert all(r[0] == 429 for r in res), [r[0] for r in res]
        # another address is not affected, on any loop
        other = dict(good, **{"X-Forwarded-For": "198.51.100.8"})
        res = burst(env.gw.port, 40, lambda c, i: send(c, "GET", "/v1/models", None, other))
        assert all(r[0] == 200 for r in res), [r[0] for r in res]


def test_a_port_held_elsewhere_is_refused_not_shared():
    # Every loop binds with SO_REUSEPORT, which would let fastgated share a port with any
    # socket of the same user that set it too, and take part of its connections. Fails
    # if a second fastgated, or a socket with SO_REUSEPORT, on the port does not make
    # fastgated refuse to start, or if the first gateway loses connections to the second.
    with Env() as env:
        d = tmpdir("fg-workers-second-")
        held = None
        try:
            def start_on(port):
                p = subprocess.run([FASTGATED, "--listen", "127.0.0.1:%d" % port, "--routes",
                                    env.gw.routes_dir, "--keys", os.path.join(d, "k.db"),
                                    "--audit", os.path.join(d, "a.db"), "--control",
                                    os.path.join(d, "c.sock"), "--workers", str(WORKERS)],
                                   capture_output=True, timeout=20, cwd=d)
                return p.returncode, p.stderr.decode()
            rc, err = start_on(env.gw.port)
            assert rc != 0 and "Address already in use" in err, (rc, err[-800:])
            res = burst(env.gw.port, 40, lambda c, i: send(c, "GET", "/health"))
            assert all(r[0] == 200 for r in res), [r[0] for r in res]
            held = socket.socket()
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            held.bind(("127.0.0.1", 0))
            held.listen(16)
            rc, err = start_on(held.getsockname()[1])
            assert rc != 0 and "Address already in use" in err, (rc, err[-800:])
        finally:
            if held is not None:
                held.close()
            rmtree(d)


# --- 10. control commands and reloads under load --------------------------------------------

def test_control_commands_and_reloads_under_load_lose_nothing_and_spend_stays_exact():
    # Clients on both loops send priced requests without a pause while the control socket
    # reloads, creates keys, tops the user up, toggles a route, drains an upstream and
    # SIGHUP reloads, over and over: the loops are parked for each. Fails if a parked loop
    # drops or fails a request, if a command hangs (every control call is bounded), if
    # the audit loses or doubles a row, or if the balance is not exactly credit plus
    # top-ups minus the sum of what each answer said it cost.
    with priced_env(config="idle_timeout: 60\n") as env:
        credit = 1000 * NANO
        u = env.cli_json("user", "create", "--name", "loaded", "--balance", usd(credit))
        k = env.cli_json("key", "create", "--name", "loaded-key", "--user", str(u["id"]))
        body = json.dumps({"model": W_MODEL, "max_tokens": 20,
                           "messages": [{"role": "user", "content": "under load"}]}).encode()
        hdr = dict(env.auth(k["key"]), **{"Content-Type": "application/json"})
        stop = threading.Event()
        lock = threading.Lock()
        done = []        # (status, request id, cost header or None, detail)
        hard_end = time.monotonic() + 90

        def client(n):
            while not stop.is_set() and time.monotonic() < hard_end:
                c = http.client.HTTPConnection("127.0.0.1", env.gw.port, timeout=30)
                try:
                    for _ in range(4):
                        try:
                            st, h, data = send(c, "POST", CHAT_PATH, body, hdr)
                            r = (st, h.get("x-request-id"), h.get("x-fastgate-cost"), data[:200])
                        except Exception as e:  # noqa: BLE001 - counted as a failure
                            r = (None, None, None, repr(e))
                        with lock:
                            done.append(r)
                finally:
                    c.close()
        a = env.scraper.snap()
        ts = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(12)]
        for t in ts:
            t.start()
        topups = 0
        mark = "configuration re-read from"
        try:
            wait_for(lambda: len(done) >= 50, timeout=20, what="traffic to start")
            for i in range(8):
                rc, out, err = env.gw.cli("reload")
                assert rc == 0, (rc, out, err)
                env.gw.create_key("made-under-load-%d" % i)
                r = env.gw.ctl("user.topup", {"id": u["id"], "amount": "0.000000007"})
                assert r.get("ok"), r
                topups += 7
                for cmd in ("route.disable", "route.enable"):
                    r = env.gw.ctl(cmd, {"name": "echo"})
                    assert r.get("ok"), r
                for cmd in ("upstream.drain", "upstream.undrain"):
                    r = env.gw.ctl(cmd, {"id": "models/0"})
                    assert r.get("ok"), r
                n = env.gw.proc.stderr().count(mark)
                os.kill(env.gw.proc.pid, signal.SIGHUP)
                wait_for(lambda: env.gw.proc.stderr().count(mark) > n, timeout=10,
                         what="SIGHUP reload %d to be done" % i)
            n0 = len(done)
            wait_for(lambda: len(done) >= n0 + 50, timeout=20, what="traffic after the commands")
        finally:
            stop.set()
            for t in ts:
                t.join(40)
        assert not any(t.is_alive() for t in ts), "a client thread is stuck"
        bad = [r for r in done if r[0] != 200]
        assert not bad, "%d of %d requests failed, e.g. %r" % (len(bad), len(done), bad[:3])
        total = len(done)
        _, traffic = env.scraper.wait_traffic(a, total)
        both_served(traffic, "%d requests from 12 clients" % total)
        assert sum(traffic) == total, (traffic, total)
        spent = sum(nano_of(r[2]) for r in done)
        show = env.cli_json("user", "show", str(u["id"]))
        assert nano_of(show["reserved_usd"]) == 0, show
        assert nano_of(show["spent_usd"]) == spent, (show, usd(spent))
        assert nano_of(show["balance_usd"]) == credit + topups - spent, \
            (show, usd(credit + topups - spent))
        rows = [r for r in env.audit(total) if r["path"] == CHAT_PATH]
        assert len(rows) == total, (len(rows), total)
        assert sorted(r["request_id"] for r in rows) == sorted(r[1] for r in done)
        assert sum(r["cost_nano"] for r in rows) == spent



# --- 11. a TLS certificate reloaded on every loop -------------------------------------------

def self_signed(d, name):
    """(cert, key) of a self-signed certificate with CN=name, made with the openssl command."""
    cert, key = os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=" + name,
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    os.chmod(key, 0o600)
    return cert, key


def test_a_reloaded_certificate_is_served_by_every_loop():
    # TLS on the listener, two loops; the certificate files are replaced and
    # `fastgate-cli reload` answers. Fails if a loop keeps serving the old certificate to
    # new connections (each loop has its own TLS context to swap), or if a loop stops
    # serving TLS.
    d = tmpdir("fg-workers-tls-")
    try:
        one = self_signed(d, "loop-cert-one")
        two = self_signed(d, "loop-cert-two")
        cert, key = os.path.join(d, "live.pem"), os.path.join(d, "live.key")

        def install(pair):
            for src, dst in zip(pair, (cert, key)):
                with open(src, "rb") as f, open(dst + ".tmp", "wb") as g:
                    g.write(f.read())
                os.chmod(dst + ".tmp", 0o600)
                os.replace(dst + ".tmp", dst)
        install(one)
        ders = {}
        for name, pair in (("one", one), ("two", two)):
            with open(pair[0]) as f:
                ders[ssl.PEM_cert_to_DER_cert(f.read())] = name
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with Env(config="tls_cert: %s\ntls_key: %s\n" % (cert, key), context=ctx) as env:
            assert env.gw.base.startswith("https://"), env.gw.base
            key_ = env.gw.create_key("tls")["key"]

            def wave(what):
                a = env.scraper.snap()

                def one_request(c, i):
                    st, _, data = send(c, "POST", CHAT_PATH, CHAT, env.auth(key_))
                    return st, ders.get(c.sock.getpeercert(binary_form=True), "unknown")
                res = burst(env.gw.port, 40, one_request, context=ctx)
                _, traffic = env.scraper.wait_traffic(a, 40)
                both_served(traffic, what)
                return res
            res = wave("TLS before the reload")
            assert all(r == (200, "one") for r in res), res
            install(two)
            rc, out, err = env.gw.cli("reload")
            assert rc == 0, (rc, out, err)
            res = wave("TLS after the reload")
            assert all(r == (200, "two") for r in res), \
                "certificates served after the reload: %r" % sorted({r[1] for r in res})
    finally:
        rmtree(d)


# --- 8. the setting's values ----------------------------------------------------------------

def test_bad_worker_counts_are_refused_and_good_ones_accepted():
    # Fails if --workers takes 0, 65 or a word (or exits other than 2 without naming the
    # flag), if `workers:` in fastgate.yaml takes a bad value without FILE:LINE in --check,
    # if auto is not one loop per online core, or if the flag does not win over the file.
    d = tmpdir("fg-workers-values-")
    started = []
    try:
        routes = os.path.join(d, "routes.d")
        os.makedirs(routes)
        base = [FASTGATED, "--listen", "127.0.0.1:0", "--routes", routes,
                "--keys", os.path.join(d, "keys.db"), "--audit", os.path.join(d, "audit.db"),
                "--control", os.path.join(d, "ctl.sock")]
        for bad in ("0", "65", "abc", "-1", "2x", ""):
            p = subprocess.Popen(base + ["--workers", bad], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=d)
            started.append(p)
            try:
                out, err = p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate(timeout=5)
                raise AssertionError("fastgated --workers %r started instead of exiting 2" % bad)
            err = err.decode()
            assert p.returncode == 2, "--workers %r: exit %d\n%s" % (bad, p.returncode, err)
            assert "--workers" in err, "--workers %r: the message does not name the flag: %r" % (bad, err)
        for bad in ("0", "65", "abc", "-3", "1.5", "[2]"):
            cfg = os.path.join(d, "bad.yaml")
            with open(cfg, "w") as f:
                f.write("idle_timeout: 30\nworkers: %s\n" % bad)
            p = subprocess.run([FASTGATED, "--check", "-c", cfg, "--routes", routes],
                               capture_output=True, timeout=20, cwd=d)
            err = p.stderr.decode()
            assert p.returncode == 1, "workers: %s: --check exit %d\n%s" % (bad, p.returncode, err)
            assert re.search(r"bad\.yaml:2: workers: ", err), "workers: %s: %r" % (bad, err)
        for good in ("1", "2", "64", "auto"):
            cfg = os.path.join(d, "good.yaml")
            with open(cfg, "w") as f:
                f.write("workers: %s\n" % good)
            p = subprocess.run([FASTGATED, "--check", "-c", cfg, "--routes", routes],
                               capture_output=True, timeout=20, cwd=d)
            assert p.returncode == 0, "workers: %s: --check exit %d\n%s" % (
                good, p.returncode, p.stderr.decode())
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        rmtree(d)
    cores = os.sysconf("SC_NPROCESSORS_ONLN")
    with Env(config="workers: auto\n", workers=None, loops=cores) as env:
        assert env.start_line()[2] == cores, (env.start_line(), cores)
        assert env.scraper.snap().value("fastgate_workers") == cores
        assert env.gw.ctl("status")["result"]["workers"] == cores
    with Env(config="workers: 1\n", workers=3, loops=3) as env:
        assert env.start_line()[2] == 3, env.start_line()
        s = env.scraper.snap()
        assert s.value("fastgate_workers") == 3
        assert len(s.workers("fastgate_worker_requests_total", 3)) == 3


def test_a_reload_asking_for_other_workers_keeps_the_loops_and_names_the_running_value():
    # `workers:` is read at start only (fastgated(8)); a reload that changes it warns, as
    # RELOAD shows for listen: "listen: changed in FILE; restart fastgated to apply (still
    # 127.0.0.1:8514)", the value still in use. Fails if the loops change, or if the
    # warning for a daemon started with `workers: auto` names anything but auto or the
    # number of loops auto made (it must not show the internal 0).
    cores = os.sysconf("SC_NPROCESSORS_ONLN")
    with Env(config="workers: auto\n", workers=None, loops=cores) as env:
        with open(env.config, "w") as f:
            f.write("workers: %d\n" % (cores + 1))
        rc, out, err = env.gw.cli("reload")
        assert rc == 0, (rc, out, err)
        assert env.gw.ctl("status")["result"]["workers"] == cores
        assert env.scraper.snap().value("fastgate_workers") == cores
        m = re.search(r"workers: changed in %s; restart fastgated to apply \(still ([^)]*)\)"
                      % re.escape(env.config), err)
        assert m, err
        assert m.group(1) in ("auto", str(cores)), \
            "the warning names %r as the running value, not auto or %d: %r" % (m.group(1), cores, err)


if __name__ == "__main__":
    run_tests(globals())
