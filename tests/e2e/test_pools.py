"""End to end: upstream pools (several upstreams behind one route). The real fastgated in
front of three C mock upstreams on free loopback ports: balancing, priority tiers, retries
and their deadline, the circuit breaker (failures, cooldown, Retry-After, kept across
reloads), active health checks, GET /health/ready, 503 upstream_unavailable, fallback
routes, per-upstream model rewrites, and how streams are held back or cut.

Each test starts its own gateway and mocks (a few tens of ms), so no breaker state leaks
from one test into the next. Arrivals are counted with the mocks' "chat" counter, which
the health checks (GET /v1/models) do not touch. Every wait is bounded and waits for
something observable; where time is the point (cooldowns, Retry-After, deadlines) it is
measured."""

import http.client
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (MOCK, Closing, Gateway, Mock, Proc, raw_exchange, rmtree,  # noqa: E402
                     run_tests, tmpdir, wait_for)

CHAT_PATH = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi pool"}]
CHAT = {"model": "pool-model", "messages": MSG}
STREAM = {"model": "pool-model", "messages": MSG, "stream": True}


# --- environment ---------------------------------------------------------------------------

def mock_on_port(workdir, port, name):
    """A mock-upstream started on a fixed port (harness.Mock always asks for port 0)."""
    m = Mock.__new__(Mock)
    m.proc = Proc([MOCK, "--listen", "127.0.0.1:%d" % port], workdir, name)

    def listening():
        if not m.proc.alive():
            raise AssertionError("mock on port %d exited: %s" % (port, m.proc.stderr()))
        return ("listening 127.0.0.1:%d" % port) in m.proc.stdout()
    wait_for(listening, timeout=5, what="the restarted mock to listen on %d" % port)
    m.port = port
    m.url = "http://127.0.0.1:%d" % port
    return m


class Env(Closing):
    """Three mocks (each in a directory of its own, so their output files do not collide)
    and a gateway whose route file is `routes` formatted with u0..u2 (mock origins)."""

    def __init__(self, routes, n=3):
        self.dir = tmpdir("fg-pools-")
        self.mocks = []
        self.gw = None
        self.killed = set()
        try:
            for i in range(n):
                sub = os.path.join(self.dir, "m%d" % i)
                os.makedirs(sub)
                self.mocks.append(Mock(sub))
            self.urls = [m.url for m in self.mocks]
            fmt = {"u%d" % i: u for i, u in enumerate(self.urls)}
            self.routes_text = routes.format(**fmt)
            self.gw = Gateway(self.dir, self.routes_text)
            self.key = self.gw.create_key("pools")["key"]
        except BaseException:
            self.close()
            raise
        self.auth = {"Authorization": "Bearer " + self.key}
        self.db = os.path.join(self.dir, "audit.db")

    def close(self):
        errors = []
        try:
            if self.gw:
                rc = self.gw.stop()
                if rc != 0:
                    errors.append("fastgated exit code %d" % rc)
            for m in self.mocks:
                try:
                    m.stop()
                except AssertionError as e:
                    errors.append(str(e))
        finally:
            rmtree(self.dir)
        if errors:
            raise AssertionError("; ".join(errors))

    # -- mocks --
    def behave(self, i, plan):
        c = http.client.HTTPConnection("127.0.0.1", self.mocks[i].port, timeout=5)
        c.request("POST", "/__mock/behave", body=json.dumps(plan).encode(),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        assert r.status == 200, (r.status, data)

    def chats(self):
        """Chat arrivals per mock; a killed mock counts as whatever it had (None)."""
        return [None if i in self.killed else m.stats()["chat"] for i, m in enumerate(self.mocks)]

    def kill(self, i):
        """SIGKILL the mock by its PID and reap it."""
        m = self.mocks[i]
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.p.wait(5)
        self.killed.add(i)

    def restart(self, i):
        """A new mock on the same port as mock i, which must have been killed."""
        assert i in self.killed
        old = self.mocks[i]
        old.proc.stop()  # closes its files; the process is already reaped
        m = mock_on_port(os.path.join(self.dir, "m%d" % i), old.port, "mock-again")
        self.mocks[i] = m
        self.killed.discard(i)
        return m

    # -- gateway --
    def chat(self, body=None, headers=None, timeout=20):
        h = dict(self.auth)
        h.update(headers or {})
        return self.gw.request("POST", CHAT_PATH, CHAT if body is None else body, h,
                               timeout=timeout)

    def targets(self, route="pool"):
        r = self.gw.ctl("route.show", {"name": route})
        assert r.get("ok"), r
        return r["result"]["upstreams"]

    def audit(self, rid, timeout=10):
        """The audit row of one request, once the writer thread has committed it."""
        def find():
            try:
                db = sqlite3.connect(self.db, timeout=5)
            except sqlite3.Error:
                return None
            try:
                db.row_factory = sqlite3.Row
                row = db.execute("SELECT * FROM audit WHERE request_id = ?", (rid,)).fetchone()
                return dict(row) if row else None
            except sqlite3.OperationalError:
                return None  # the table may not exist yet
            finally:
                db.close()
        return wait_for(find, timeout=timeout, interval=0.05, what="the audit row of %s" % rid)

    def audit_rows(self, count, timeout=15):
        """All audit rows, once there are at least `count`."""
        def find():
            try:
                db = sqlite3.connect(self.db, timeout=5)
                db.row_factory = sqlite3.Row
                rows = [dict(r) for r in db.execute("SELECT * FROM audit ORDER BY rowid")]
                db.close()
            except sqlite3.Error:
                return None
            return rows if len(rows) >= count else None
        return wait_for(find, timeout=timeout, interval=0.1, what="%d audit rows" % count)


def pool_route(extra="", upstreams=None, name="pool", match=None):
    ups = upstreams or ["      - url: {u0}/v1/chat/completions",
                        "      - url: {u1}/v1/chat/completions",
                        "      - url: {u2}/v1/chat/completions"]
    return ("  - name: %s\n    match: %s\n    upstreams:\n%s\n    timeout: 5\n%s"
            % (name, match or "{{ path: /v1/chat/completions, methods: [POST] }}",
               "\n".join(ups), extra))


def routes(*parts):
    return "routes:\n" + "".join(parts)


def attempts_of(row):
    """The audit attempts column as [(url, outcome, ms)]."""
    if not row.get("attempts"):
        return []
    out = []
    for part in row["attempts"].split(";"):
        url, _, rest = part.rpartition("=")
        outcome, _, ms = rest.partition(":")
        out.append((url, outcome, int(ms)))
    return out


def error_of(data):
    e = json.loads(data)["error"]
    assert set(e) >= {"message", "type", "code"}, e
    return e


def dechunk(raw):
    """(payload, complete) of a chunked body; complete only with the final 0-size chunk."""
    out = bytearray()
    i = 0
    while True:
        j = raw.find(b"\r\n", i)
        if j < 0:
            return bytes(out), False
        try:
            size = int(raw[i:j].split(b";")[0], 16)
        except ValueError:
            return bytes(out), False
        if size == 0:
            return bytes(out), raw[j + 2:j + 4] == b"\r\n"
        if len(raw) < j + 2 + size:
            out += raw[j + 2:]
            return bytes(out), False
        out += raw[j + 2:j + 2 + size]
        i = j + 2 + size + 2


def sse_data(payload):
    """The data: values of an event stream, in order."""
    events = []
    for block in payload.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
        data = [ln[5:].lstrip(" ") for ln in block.split("\n") if ln.startswith("data:")]
        if data:
            events.append("\n".join(data))
    return events


def check_clean_stream(payload):
    """One whole OpenAI stream: exactly one role event first, content, finish_reason stop,
    and [DONE] last. Returns the content text."""
    ev = sse_data(payload)
    assert ev and ev[-1] == "[DONE]", ev[-3:]
    objs = [json.loads(e) for e in ev[:-1]]
    assert all("error" not in o for o in objs), objs
    roles = [o for o in objs if o["choices"] and "role" in o["choices"][0]["delta"]]
    assert len(roles) == 1 and objs[0] is roles[0], "one role event, first: %r" % objs[:3]
    text = "".join(o["choices"][0]["delta"].get("content") or "" for o in objs if o["choices"])
    finishes = [o["choices"][0].get("finish_reason") for o in objs if o["choices"]]
    assert finishes.count("stop") == 1, finishes
    assert text.startswith("Hello from mock.") and "You said: hi pool" in text, text
    return text


def raw_stream(env, body=None, headers=None, timeout=10):
    """A stream request over a raw socket (Connection: close), read until the gateway
    closes. Returns (status, head bytes, payload, complete)."""
    b = json.dumps(STREAM if body is None else body).encode()
    extra = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
    req = ("POST %s HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\nContent-Type: "
           "application/json\r\nConnection: close\r\n%sContent-Length: %d\r\n\r\n"
           % (CHAT_PATH, env.key, extra, len(b))).encode() + b
    data, closed = raw_exchange(env.gw.port, req, timeout=timeout)
    assert closed, "the gateway did not close the connection within %ss" % timeout
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        payload, complete = dechunk(rest)
    else:
        payload, complete = rest, True
    return status, head, payload, complete


def request_id(head):
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"x-request-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError("no X-Request-Id in %r" % head)


# --- the tests ------------------------------------------------------------------------------

def test_killed_upstream_under_load_breaker_opens_then_it_rejoins_on_the_same_port():
    """SIGKILL one of three upstreams under a steady load of plain and streamed chats from
    four client threads: no client sees an error; its breaker opens after `failures`
    failed attempts (plus at most one in flight per other client); it gets no attempt for
    `cooldown` seconds; restarted on the same port it serves again within cooldown + one
    health interval. The audit's attempts column agrees with route.show's counts."""
    failures, cooldown, interval, nthreads = 3, 2, 1, 4
    route = pool_route("    retry: {{ attempts: 3, on: [connect, reset, timeout] }}\n"
                       "    breaker: {{ failures: %d, error_rate: 0, cooldown: %d, max_cooldown: %d }}\n"
                       "    health: {{ path: /v1/models, interval: %d, timeout: 1, healthy: 1, unhealthy: 2 }}\n"
                       % (failures, cooldown, cooldown, interval))
    with Env(routes(route)) as env:
        stop = threading.Event()
        results = []          # (kind, ok, detail)
        lock = threading.Lock()
        hard_end = time.monotonic() + 40

        def client(stream):
            n = 0
            while not stop.is_set() and n < 3000 and time.monotonic() < hard_end:
                n += 1
                try:
                    st, h, data = env.chat(STREAM if stream else CHAT, timeout=15)
                    if st != 200:
                        ok, detail = False, "status %d: %r" % (st, data[:200])
                    elif stream:
                        check_clean_stream(data)
                        ok, detail = True, h["x-request-id"]
                    else:
                        msg = json.loads(data)["choices"][0]["message"]["content"]
                        ok = msg.startswith("Hello from mock.")
                        detail = h["x-request-id"] if ok else msg
                except Exception as e:  # noqa: BLE001 - any client-side failure counts
                    ok, detail = False, repr(e)
                with lock:
                    results.append(("stream" if stream else "plain", ok, detail))
                time.sleep(0.005)

        threads = [threading.Thread(target=client, args=(i % 2 == 1,), daemon=True)
                   for i in range(nthreads)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: all(c >= 3 for c in env.chats()), timeout=10,
                     what="every upstream to take traffic")
            assert all(t["state"] == "up" for t in env.targets()), env.targets()
            dead_url = env.urls[0] + "/v1/chat/completions"

            env.kill(0)
            t_kill = time.monotonic()

            def failed(t):
                return sum(v for k, v in t["attempts"].items() if k != "ok")

            # the breaker opens, from the requests' failed attempts
            def opened():
                t = env.targets()[0]
                return t if t["breaker"] == "open" else None
            t0 = wait_for(opened, timeout=5, interval=0.02, what="the dead upstream's breaker to open")
            t_open = time.monotonic()
            assert t_open - t_kill < 1.0, "opened by health checks, not by the %d failures" % failures
            # a grace window for stragglers dispatched before it opened (refused at once on
            # loopback), then the count it opened with
            time.sleep(0.2)
            at_open = failed(env.targets()[0])
            assert 1 <= at_open <= failures + nthreads - 1, \
                "%d failed attempts before the breaker held (failures %d, %d clients): %r" \
                % (at_open, failures, nthreads, t0)

            # no attempt at all while it is open: poll until the cooldown is nearly over
            samples = []
            while time.monotonic() < t_open + cooldown - 0.25:
                t = env.targets()[0]
                samples.append((round(time.monotonic() - t_open, 2), failed(t), t["state"]))
                time.sleep(0.05)
            assert samples and all(s[1] == at_open for s in samples), \
                "attempts at the dead upstream during its cooldown: %r" % samples
            assert all(s[2] != "up" for s in samples), samples

            # the health checks find it down too; the route as a whole stays ready
            wait_for(lambda: env.targets()[0]["health"] == "unhealthy", timeout=5,
                     what="the health checks to call the dead upstream unhealthy")
            assert env.targets()[0]["state"] != "up", env.targets()[0]
            st, _, data = env.gw.request("GET", "/health/ready")
            assert st == 200, "not ready with two of three upstreams up: %r" % data

            # back on the same port: in rotation within cooldown + one health interval
            env.restart(0)
            t_restart = time.monotonic()
            wait_for(lambda: env.mocks[0].stats()["chat"] >= 1,
                     timeout=cooldown + interval + 5, interval=0.02,
                     what="the restarted upstream to get a request")
            back = time.monotonic() - t_restart
            assert back <= cooldown + interval + 1.0, \
                "back in rotation after %.2fs (cooldown %d + interval %d)" % (back, cooldown, interval)
            wait_for(lambda: env.targets()[0]["state"] == "up", timeout=3,
                     what="route.show to say up again")
            n0 = env.mocks[0].stats()["chat"]
            wait_for(lambda: env.mocks[0].stats()["chat"] >= n0 + 10, timeout=5,
                     what="a share of the load for the restarted upstream")
            dead_failed = failed(env.targets()[0])
        finally:
            stop.set()
            for t in threads:
                t.join(20)
        assert not any(t.is_alive() for t in threads), "a client thread is stuck"

        bad = [r for r in results if not r[1]]
        kinds = {k for k, _, _ in results}
        assert not bad, "%d of %d client requests failed, e.g. %r" % (len(bad), len(results), bad[:5])
        assert kinds == {"plain", "stream"} and len(results) >= 100, (kinds, len(results))

        # every request audited, each a 200; the failed attempts at the dead upstream are
        # exactly what route.show counted, and each was retried on another upstream
        rows = env.audit_rows(len(results))
        assert all(r["status"] == 200 and not r["error"] for r in rows), \
            [(r["status"], r["error"], r["attempts"]) for r in rows if r["status"] != 200][:5]
        audited_failed = 0
        for r in rows:
            att = attempts_of(r)
            assert att and att[-1][1] == "200", r["attempts"]
            assert r["retries"] == len(att) - 1, (r["retries"], r["attempts"])
            assert len({a[0] for a in att}) == len(att), "an upstream tried twice: %s" % r["attempts"]
            audited_failed += sum(1 for a in att if a[0] == dead_url and a[1] != "200")
        assert audited_failed == dead_failed, \
            "audit counts %d failed attempts at the dead upstream, route.show %d" \
            % (audited_failed, dead_failed)


def test_half_open_breaker_lets_one_probe_through_and_doubles_its_cooldown():
    """No health checks here: an upstream answering 500 under load from three clients opens
    after one failure (failures: 1); each cooldown ends with exactly one probe request; a
    failed probe opens it for twice as long (1 s, then 2 s, capped by max_cooldown 2); once
    the upstream is well the next probe closes the breaker and it gets its share again."""
    route = pool_route("    retry: {{ attempts: 3, on: [5xx] }}\n"
                       "    breaker: {{ failures: 1, error_rate: 0, cooldown: 1, max_cooldown: 2 }}\n")
    with Env(routes(route)) as env:
        stop = threading.Event()
        statuses = []
        hard_end = time.monotonic() + 30

        def client():
            n = 0
            while not stop.is_set() and n < 5000 and time.monotonic() < hard_end:
                n += 1
                try:
                    statuses.append(env.chat()[0])
                except Exception as e:  # noqa: BLE001
                    statuses.append(repr(e))
                time.sleep(0.005)
        threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
        env.behave(0, {"fail": "status:500"})
        for t in threads:
            t.start()
        try:
            arrivals = []       # (seconds, count) at each change of mock 0's count
            last = 0
            t_start = time.monotonic()
            while time.monotonic() - t_start < 6.5 and len(arrivals) < 50:
                n = env.mocks[0].stats()["chat"]
                if n != last:
                    arrivals.append((round(time.monotonic() - t_start, 2), n))
                    last = n
                time.sleep(0.01)
            env.behave(0, {})
            t_well = time.monotonic()
            wait_for(lambda: env.targets()[0]["breaker"] == "closed", timeout=3.5,
                     what="a probe to close the breaker once the upstream is well")
            assert time.monotonic() - t_well <= 2.5
            n0 = env.mocks[0].stats()["chat"]
            wait_for(lambda: env.mocks[0].stats()["chat"] >= n0 + 10, timeout=5,
                     what="traffic again after the breaker closed")
        finally:
            stop.set()
            for t in threads:
                t.join(20)
        assert arrivals and arrivals[0][1] == 1, "one failure opens it: %r" % arrivals
        counts = [c for _, c in arrivals]
        assert counts == list(range(1, len(counts) + 1)), "more than one probe at a time: %r" % arrivals
        gaps = [round(b[0] - a[0], 2) for a, b in zip(arrivals, arrivals[1:])]
        want = [1, 2, 2, 2, 2][:len(gaps)]
        assert len(gaps) >= 3, "probes at %r" % arrivals
        assert all(w - 0.15 <= g <= w + 0.5 for g, w in zip(gaps, want)), \
            "probe gaps %r, want about %r (cooldown 1 doubling to max_cooldown 2)" % (gaps, want)
        assert statuses and all(x == 200 for x in statuses), \
            [x for x in statuses if x != 200][:5]


def test_retry_after_429_leaves_the_upstream_alone_that_long_and_the_client_never_sees_it():
    route = pool_route("    retry: {{ attempts: 3, on: [429] }}\n")
    with Env(routes(route)) as env:
        env.behave(0, {"fail": "status:429", "retry_after": 2, "times": 1})
        t429 = None
        for _ in range(6):
            t_start = time.monotonic()
            st, h, data = env.chat()
            t_end = time.monotonic()
            assert st == 200, (st, data)
            if env.mocks[0].stats()["faulted"] == 1:
                t429, rid429 = (t_start, t_end), h["x-request-id"]
                break
        assert t429, "mock 0 never got a request in 6 round-robin requests"
        n429 = env.mocks[0].stats()["chat"]
        t = env.targets()[0]
        assert t["state"] != "up" and 0 < t["retry_in_ms"] <= 2000, t

        # steady requests: the first new arrival at mock 0 is at least 2 s after the 429
        first_again = None
        deadline = t429[0] + 4.0
        n = 0
        while time.monotonic() < deadline and n < 2000:
            n += 1
            r_start = time.monotonic()
            st, h, data = env.chat()
            r_end = time.monotonic()
            assert st == 200, (st, data)
            if env.mocks[0].stats()["chat"] > n429:
                first_again = (r_start, r_end)
                break
            time.sleep(0.01)
        assert first_again, "mock 0 got nothing within 4 s of its Retry-After: 2"
        quiet = first_again[1] - t429[0]
        assert quiet >= 1.95, "mock 0 was asked again %.2fs after its Retry-After: 2" % quiet
        late = first_again[0] - t429[1]
        assert late <= 3.0, "mock 0 was left alone %.2fs after a Retry-After of 2" % late

        row = env.audit(rid429)
        att = attempts_of(row)
        assert row["status"] == 200 and row["retries"] == 1 and len(att) == 2, row
        assert att[0][0].startswith(env.urls[0]) and att[0][1] == "429", att
        assert att[1][1] == "200" and not att[1][0].startswith(env.urls[0]), att
        assert not row["error"], row


def test_stream_closed_right_after_its_head_is_retried_invisibly():
    route = pool_route("    retry: {{ attempts: 3, on: [connect, reset] }}\n")
    with Env(routes(route)) as env:
        env.behave(0, {"fail": "close-after-head", "times": 1})
        hit = None
        for _ in range(6):
            before = env.chats()
            st, head, payload, complete = raw_stream(env)
            after = env.chats()
            assert st == 200 and complete, (st, head, payload[-300:])
            assert b"text/event-stream" in head.lower(), head
            check_clean_stream(payload)
            assert b": ping" not in payload, "the failed upstream's held comment leaked"
            if after[0] > before[0]:
                hit = (request_id(head), [a - b for a, b in zip(after, before)])
                break
        assert hit, "mock 0 never got a stream in 6 requests"
        rid, delta = hit
        assert delta[0] == 1 and sum(delta) == 2, "arrivals per mock for the request: %r" % delta
        assert env.mocks[0].stats()["faulted"] == 1
        row = env.audit(rid)
        att = attempts_of(row)
        assert row["status"] == 200 and row["retries"] == 1 and len(att) == 2, row
        assert att[0][0].startswith(env.urls[0]) and att[0][1] == "reset", att
        assert att[1][1] == "200", att
        assert not row["error"] and row["is_stream"], row
        assert att[1][0].startswith(row["upstream"]) and row["upstream"] != env.urls[0], \
            "the upstream column names the last one tried: %r" % row

        # every upstream closes after its head: one attempt on each, and the last one's
        # held too, so the client gets a plain 502 reset, not a 200 cut with an error
        for i in range(3):
            env.behave(i, {"fail": "close-after-head", "times": 1})
        before = env.chats()
        st, head, payload, complete = raw_stream(env)
        delta = [a - b for a, b in zip(env.chats(), before)]
        assert st == 502 and error_of(payload)["code"] == "reset", (st, head, payload)
        assert delta == [1, 1, 1], delta
        row = env.audit(request_id(head))
        assert row["retries"] == 2 and [a[1] for a in attempts_of(row)] == ["reset"] * 3, row
        assert row["status"] == 502 and row["error"] == "reset", row


def test_stream_that_fails_after_content_is_cut_with_an_error_event_and_not_retried():
    route = pool_route("    retry: {{ attempts: 3, on: [connect, reset, timeout, 5xx] }}\n")
    with Env(routes(route)) as env:
        env.behave(0, {"fail": "fail-after-content"})
        hit = None
        for _ in range(6):
            before = env.chats()
            st, head, payload, complete = raw_stream(env)
            after = env.chats()
            delta = [a - b for a, b in zip(after, before)]
            assert sum(delta) == 1, "one request, %r arrivals" % delta
            if delta[0] == 0:
                assert st == 200 and complete, (st, payload[-200:])
                check_clean_stream(payload)
                continue
            hit = (st, head, payload, complete)
            break
        assert hit, "mock 0 never got a stream in 6 requests"
        st, head, payload, complete = hit
        assert st == 200 and not complete, "a cut stream must not end cleanly: %r" % payload[-200:]
        ev = sse_data(payload)
        assert "[DONE]" not in ev, ev
        assert any('"content":"Hello"' in e.replace(" ", "") for e in ev), ev
        assert ev[-1].startswith('{"error":'), "the stream must end with an error event: %r" % ev[-2:]
        assert error_of(ev[-1])["code"] == "reset", ev[-1]
        row = env.audit(request_id(head))
        att = attempts_of(row)
        assert row["status"] == 502 and row["error"] == "reset", row
        assert row["retries"] == 0 and len(att) == 1 and att[0][0].startswith(env.urls[0]), row


def test_backup_tier_serves_only_when_every_primary_is_down():
    route = pool_route("    retry: {{ attempts: 3, on: [connect, 5xx] }}\n"
                       "    breaker: {{ failures: 2, error_rate: 0, cooldown: 1, max_cooldown: 1 }}\n",
                       upstreams=["      - url: {u0}/v1/chat/completions",
                                  "      - url: {u1}/v1/chat/completions",
                                  "      - url: {u2}/v1/chat/completions",
                                  "        priority: 1"])
    with Env(routes(route)) as env:
        for _ in range(20):
            assert env.chat()[0] == 200
        c = env.chats()
        assert c[2] == 0 and c[0] + c[1] == 20, "backup used while both primaries are up: %r" % c

        # both primaries fail this one request: they were tried, so the backup answers it
        env.behave(0, {"fail": "status:500", "times": 1})
        env.behave(1, {"fail": "status:503", "times": 1})
        st, h, data = env.chat()
        assert st == 200, (st, data)
        att = attempts_of(env.audit(h["x-request-id"]))
        assert [a[1] for a in att] in (["500", "503", "200"], ["503", "500", "200"]), att
        assert att[2][0].startswith(env.urls[2]), att
        assert env.chats()[2] == 1, env.chats()

        env.kill(0)
        for _ in range(20):
            st, _, data = env.chat()
            assert st == 200, (st, data)
        c = env.chats()
        assert c[2] == 1, "backup used while primary 1 is up: %r" % c
        assert env.mocks[1].stats()["chat"] >= 30, c
        env.kill(1)
        for _ in range(10):
            st, _, data = env.chat()
            assert st == 200, (st, data)
        assert env.mocks[2].stats()["chat"] == 11, env.mocks[2].stats()["chat"]

        # a primary back (its cooldown is 1 s): the traffic returns to it, the backup idles
        env.restart(0)
        t_end = time.monotonic() + 4
        while env.mocks[0].stats()["chat"] == 0 and time.monotonic() < t_end:
            st, _, data = env.chat()
            assert st == 200, (st, data)
            time.sleep(0.02)
        assert env.mocks[0].stats()["chat"] > 0, "the restarted primary got nothing in 4 s"
        b = env.mocks[2].stats()["chat"]
        for _ in range(20):
            st, _, data = env.chat()
            assert st == 200, (st, data)
        assert env.mocks[2].stats()["chat"] == b, "backup used while primary 0 is up again"
        assert env.mocks[0].stats()["chat"] >= 20


def test_retry_attempts_caps_the_tries_each_on_an_upstream_not_yet_tried():
    """Every upstream answers 5xx: with attempts 2 the client gets the second one's answer as
    it came, after exactly two arrivals on two different upstreams; with the default
    (number of upstreams, at most 3) each of the three is tried once."""
    capped = pool_route("    retry: {{ attempts: 2, on: [5xx] }}\n", name="capped",
                        match="{{ path: /v1/chat/completions, body: {{ model: \"capped\" }} }}")
    default = pool_route("    retry: {{ on: [5xx] }}\n", name="default",
                         match="{{ path: /v1/chat/completions, body: {{ model: \"default\" }} }}")
    with Env(routes(capped, default)) as env:
        for i, code in enumerate((500, 502, 503)):
            env.behave(i, {"fail": "status:%d" % code})
        before = env.chats()
        st, h, data = env.chat(dict(CHAT, model="capped"))
        delta = [a - b for a, b in zip(env.chats(), before)]
        row = env.audit(h["x-request-id"])
        att = attempts_of(row)
        assert sorted(delta) == [0, 1, 1], delta
        assert len(att) == 2 and row["retries"] == 1 and att[0][0] != att[1][0], row
        assert st == int(att[1][1]), "the last attempt's answer is passed on: %d vs %r" % (st, att)
        assert "mock upstream: forced status %d" % st in error_of(data)["message"], data

        before = env.chats()
        st, h, data = env.chat(dict(CHAT, model="default"))
        delta = [a - b for a, b in zip(env.chats(), before)]
        row = env.audit(h["x-request-id"])
        assert delta == [1, 1, 1] and row["retries"] == 2, (delta, row)
        assert st == int(attempts_of(row)[-1][1]), (st, row["attempts"])


def test_error_rate_opens_after_min_requests_and_other_4xx_are_successes():
    """A listed 4xx (retry on [409]) is retried but is no failure: failures: 1 never opens.
    With failures off, error_rate 50 over min_requests 10 opens on the 10th failed attempt,
    not before."""
    codes = pool_route("    retry: {{ attempts: 3, on: [409] }}\n"
                       "    breaker: {{ failures: 1, error_rate: 0, cooldown: 30 }}\n",
                       name="codes", match="{{ path: /v1/chat/completions, body: {{ model: \"codes\" }} }}")
    rate = pool_route("    retry: {{ attempts: 3, on: [5xx] }}\n"
                      "    breaker: {{ failures: 0, error_rate: 50, min_requests: 10, cooldown: 30 }}\n",
                      name="rate", match="{{ path: /v1/chat/completions, body: {{ model: \"rate\" }} }}")
    with Env(routes(codes, rate)) as env:
        env.behave(0, {"fail": "status:409"})
        for _ in range(30):
            st, h, data = env.chat(dict(CHAT, model="codes"))
            assert st == 200, (st, data)
        t = env.targets("codes")[0]
        assert t["breaker"] == "closed" and t["state"] == "up", t
        assert env.chats()[0] >= 8, "mock 0 left out after 409s: %r" % env.chats()
        att = t["attempts"]
        assert att["ok"] == env.chats()[0] and sum(att.values()) == att["ok"], att

        env.behave(0, {"fail": "status:500"})
        before = env.chats()[0]
        for n in range(60):
            st, h, data = env.chat(dict(CHAT, model="rate"))
            assert st == 200, (st, data)
            if env.targets("rate")[0]["breaker"] == "open":
                break
        failed_on_0 = env.chats()[0] - before
        t = env.targets("rate")[0]
        assert t["breaker"] == "open", t
        assert failed_on_0 == 10 and t["attempts"]["5xx"] == 10, \
            "opened after %d failed attempts (min_requests 10): %r" % (failed_on_0, t)


def test_latency_balance_keeps_away_from_a_slow_upstream():
    route = pool_route("    balance: latency\n")
    with Env(routes(route)) as env:
        env.behave(0, {"first_byte_delay_ms": 150})
        n = 60
        for _ in range(n):
            st, _, data = env.chat()
            assert st == 200, (st, data)
        c = env.chats()
        assert sum(c) == n, c
        assert c[0] <= n // 10, "the slow upstream got %d of %d: %r" % (c[0], n, c)
        assert min(c[1], c[2]) >= n // 5, c


def test_client_leaving_while_the_attempt_waits_is_audited_as_abandoned():
    route = pool_route("    retry: {{ attempts: 3, on: [timeout, connect] }}\n")
    with Env(routes(route)) as env:
        for i in range(3):
            env.behave(i, {"fail": "hang"})
        body = json.dumps(CHAT).encode()
        s = socket.create_connection(("127.0.0.1", env.gw.port), timeout=5)
        s.sendall(("POST %s HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                   % (CHAT_PATH, env.key, len(body))).encode() + body)
        wait_for(lambda: sum(env.chats()) == 1, timeout=5, what="the first attempt to arrive")
        s.close()
        t_left = time.monotonic()

        def row():
            try:
                db = sqlite3.connect(env.db, timeout=5)
                db.row_factory = sqlite3.Row
                r = db.execute("SELECT * FROM audit WHERE path = ?", (CHAT_PATH,)).fetchone()
                db.close()
                return dict(r) if r else None
            except sqlite3.Error:
                return None
        r = wait_for(row, timeout=8, interval=0.05, what="the audit row")
        assert time.monotonic() - t_left < 2.0, "the gateway noticed the client leave late"
        assert r["status"] == 499 and r["error"] == "client_closed", r
        att = attempts_of(r)
        assert len(att) == 1 and att[0][1] == "abandoned", r["attempts"]
        assert sum(env.chats()) == 1, "an attempt after the client left: %r" % env.chats()


def test_retry_deadline_bounds_the_whole_request_however_many_attempts():
    """Every upstream hangs; timeout 5, deadline 1: 504 'timeout' after about 1 s, not 3 x 5 s.
    'When it passes, the attempt under way ends with 504 timeout and no other is made': each
    POST reaches exactly one upstream. Six requests (three streamed), overlapping, since a
    second attempt started just before the deadline is a matter of a few milliseconds."""
    route = pool_route("    retry: {{ attempts: 3, on: [connect, timeout, reset, 5xx], deadline: 1 }}\n")
    with Env(routes(route)) as env:
        for i in range(3):
            env.behave(i, {"fail": "hang"})
        results = [None] * 6

        def one(k):
            t0 = time.monotonic()
            try:
                st, h, data = env.chat(STREAM if k % 2 else CHAT, timeout=20)
                results[k] = (st, h, data, time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001
                results[k] = (repr(e), {}, b"", time.monotonic() - t0)
        threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(6)]
        for t in threads:     # staggered, so that each starts at another point of the loop
            t.start()
            time.sleep(0.13)
        for t in threads:
            t.join(25)
        rows = []
        for st, h, data, took in results:
            assert st == 504 and error_of(data)["code"] == "timeout", (st, data)
            assert 0.9 <= took <= 1.8, "answered after %.2fs with retry.deadline 1 (timeout 5)" % took
            rows.append(env.audit(h["x-request-id"]))
        arrivals = sum(env.chats())
        bad = [r["attempts"] for r in rows if len(attempts_of(r)) != 1 or r["retries"] != 0]
        assert not bad and arrivals == 6, \
            "attempts made after the deadline: %d arrivals for 6 POSTs; %r" % (arrivals, bad)
        for r in rows:
            assert r["status"] == 504 and r["error"] == "timeout", r
            assert attempts_of(r)[0][1] == "timeout", r["attempts"]


def test_post_is_not_resent_on_an_outcome_that_retry_on_does_not_list():
    route = pool_route("    retry: {{ attempts: 3, on: [connect] }}\n")
    with Env(routes(route)) as env:
        for fail, status in (("status:500", 500), ("reset", 502), ("status:503", 503)):
            for i in range(3):
                env.behave(i, {"fail": fail})
            before = env.chats()
            st, h, data = env.chat()
            delta = [a - b for a, b in zip(env.chats(), before)]
            assert st == status, (fail, st, data)
            if status == 502:
                assert error_of(data)["code"] == "reset", data
            assert sum(delta) == 1, "%s: arrivals %r for one POST" % (fail, delta)
            row = env.audit(h["x-request-id"])
            assert row["retries"] == 0 and len(attempts_of(row)) == 1, row


def test_reload_keeps_an_open_breaker_and_a_changed_url_or_key_starts_fresh():
    def text(first_url="{u0}/v1/chat/completions", key_line="", timeout=5, reorder=False):
        ups = ["      - url: " + first_url + key_line,
               "      - url: {u1}/v1/chat/completions",
               "      - url: {u2}/v1/chat/completions"]
        if reorder:
            ups = ups[1:] + ups[:1]
        return routes(pool_route(
            "    retry: {{ attempts: 3, on: [5xx] }}\n"
            "    breaker: {{ failures: 2, error_rate: 0, cooldown: 60 }}\n",
            upstreams=ups).replace("timeout: 5", "timeout: %d" % timeout))

    def by_url(env, url):
        ts = [t for t in env.targets() if t["url"] == url]
        assert len(ts) == 1, env.targets()
        return ts[0]

    def write(env, t):
        fmt = {"u%d" % i: u for i, u in enumerate(env.urls)}
        with open(os.path.join(env.gw.routes_dir, "10-test.yaml"), "w") as f:
            f.write(t.format(**fmt))
        rc, out, err = env.gw.cli("reload")
        assert rc == 0, (rc, out, err)

    def open_breaker(env):
        env.behave(0, {"fail": "status:500"})
        for _ in range(12):
            st, _, data = env.chat()
            assert st == 200, (st, data)
            if env.targets()[0]["breaker"] == "open":
                break
        t = env.targets()[0]
        assert t["breaker"] == "open" and t["state"] == "open", t
        env.behave(0, {})   # healthy again: only the breaker keeps it out now

    def gets_nothing(env, n=15):
        before = env.mocks[0].stats()["chat"]
        for _ in range(n):
            assert env.chat()[0] == 200
        return env.mocks[0].stats()["chat"] == before

    with Env(text()) as env:
        open_breaker(env)
        assert gets_nothing(env)

        # the same file, and then one with another route timeout: still open, no traffic
        write(env, text())
        t = env.targets()[0]
        assert t["breaker"] == "open" and t["state"] == "open", "reload lost the open breaker: %r" % t
        assert gets_nothing(env), "a reload let traffic through an open breaker"
        write(env, text(timeout=6))
        t = env.targets()[0]
        assert t["breaker"] == "open", "a reload changing only the route timeout lost it: %r" % t
        assert gets_nothing(env)

        # the state follows the upstream, not its place in the list; SIGHUP reloads too
        fmt = {"u%d" % i: u for i, u in enumerate(env.urls)}
        with open(os.path.join(env.gw.routes_dir, "10-test.yaml"), "w") as f:
            f.write(text(timeout=7, reorder=True).format(**fmt))
        env.gw.proc.p.send_signal(signal.SIGHUP)
        wait_for(lambda: env.gw.ctl("route.show", {"name": "pool"})["result"]["timeout"] == 7,
                 timeout=5, what="the SIGHUP reload")
        dead = env.urls[0] + "/v1/chat/completions"
        assert env.targets()[2]["url"] == dead, env.targets()
        t = by_url(env, dead)
        assert t["breaker"] == "open", "reordering the upstreams moved or lost the state: %r" % t
        assert all(by_url(env, env.urls[i] + "/v1/chat/completions")["breaker"] == "closed"
                   for i in (1, 2)), env.targets()
        assert gets_nothing(env)
        write(env, text(timeout=6))
        assert env.targets()[0]["breaker"] == "open", env.targets()

        # another key for that upstream: a new target with a fresh state
        write(env, text(key_line="\n        api_key: another-key"))
        t = env.targets()[0]
        assert t["breaker"] == "closed" and t["state"] == "up", t
        assert t["consecutive_failures"] == 0 and sum(t["attempts"].values()) == 0, t
        assert not gets_nothing(env), "a target with a new key got no traffic"

        # open it again, then another URL (no path: the client's path is kept) is fresh too
        open_breaker(env)
        write(env, text(first_url="{u0}", key_line="\n        api_key: another-key"))
        t = env.targets()[0]
        assert t["url"] == env.urls[0], t
        assert t["breaker"] == "closed" and t["state"] == "up", t
        assert not gets_nothing(env), "a target with a new URL got no traffic"


def test_health_ready_is_503_naming_the_route_while_no_upstream_is_available():
    route = pool_route("    health: {{ path: /v1/models, interval: 1, timeout: 1, healthy: 1, unhealthy: 1 }}\n",
                       upstreams=["      - url: {u0}/v1/chat/completions\n        api_key: health-key-0",
                                  "      - url: {u1}/v1/chat/completions",
                                  "      - url: {u2}/v1/chat/completions"])
    other = "  - name: other\n    match: {{ path: /other }}\n    upstream: {{ url: \"{u0}\" }}\n"
    with Env(routes(route, other)) as env:
        def ready():
            st, _, data = env.gw.request("GET", "/health/ready")
            return st, json.loads(data)
        wait_for(lambda: ready()[0] == 200, timeout=5, what="ready at start")
        assert ready()[1] == {"status": "ready"}, ready()
        wait_for(lambda: all(t["health"] == "healthy" for t in env.targets()), timeout=5,
                 what="the health checks to pass")
        # a check is a GET of path on the upstream's origin, with its key
        last = env.mocks[0].stats()["last"]
        assert last["method"] == "GET" and last["uri"] == "/v1/models", last
        assert {k.lower(): v for k, v in last["headers"].items()}.get("authorization") == \
            "Bearer health-key-0", last["headers"]
        assert sum(env.chats()) == 0

        for i in range(3):
            env.behave(i, {"fail": "status:500"})
        st, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(ready()),
                            timeout=6, what="/health/ready to turn 503")
        assert body["status"] == "not_ready", body
        reasons = body["reasons"]
        assert isinstance(reasons, list) and any("pool" in str(r) for r in reasons), reasons
        assert not any("other" in str(r) for r in reasons), reasons
        assert all(t["state"] != "up" for t in env.targets()), env.targets()

        for i in range(3):
            env.behave(i, {})
        wait_for(lambda: ready()[0] == 200, timeout=6, what="/health/ready to turn 200 again")
        assert ready()[1] == {"status": "ready"}
        st, _, data = env.chat()
        assert st == 200, (st, data)


def test_health_checks_run_every_interval_seconds():
    """health.interval 1: a GET of the health path reaches each upstream once a second, not
    every other second. Measured over three intervals at one mock (no chats are sent, so
    every arrival is a check)."""
    route = pool_route("    health: {{ path: /v1/models, interval: 1, timeout: 1 }}\n")
    with Env(routes(route)) as env:
        def checks():
            st = env.mocks[0].stats()
            return st["requests"] - st["chat"]
        wait_for(lambda: checks() >= 1, timeout=3, what="a first health check")
        n0 = checks()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.6 and checks() < n0 + 3:
            time.sleep(0.02)
        took = time.monotonic() - t0
        n = checks() - n0
        assert n >= 3, "%d health checks in %.1fs with interval 1" % (n, took)
        assert took >= 1.7, "%d health checks in %.1fs with interval 1: too often" % (n, took)
        assert env.mocks[0].stats()["last"]["uri"] == "/v1/models"
        assert sum(env.chats()) == 0


def test_health_passes_close_the_breaker_but_not_before_the_upstreams_retry_after():
    """fastgate-routes(5), health: 'healthy passes in a row close it again, unless the
    upstream's own Retry-After is still running'. One upstream answers 429 with
    Retry-After: 6 and then fails a health check and passes again, all within those 6 s: it
    stays out until the Retry-After is over, and the passes close its breaker soon after
    (within two health intervals, not only after breaker.cooldown, 10 s here, and a
    request probe)."""
    ra = 6
    route = pool_route("    retry: {{ attempts: 1 }}\n"
                       "    breaker: {{ cooldown: 10, max_cooldown: 10 }}\n"
                       "    health: {{ path: /v1/models, interval: 1, timeout: 1, healthy: 1, unhealthy: 1 }}\n")
    with Env(routes(route)) as env:
        wait_for(lambda: all(t["health"] == "healthy" for t in env.targets()), timeout=5,
                 what="the health checks to pass")
        t429 = time.monotonic()
        st, h, data = env.chat(headers={"X-Mock-Fail": "status:429", "X-Mock-Retry-After": str(ra)})
        assert st == 429 and h.get("retry-after") == str(ra), (st, h, data)
        out = [i for i, t in enumerate(env.targets()) if t["state"] != "up"]
        assert len(out) == 1, env.targets()
        i = out[0]
        env.behave(i, {"fail": "status:500"})
        wait_for(lambda: env.targets()[i]["health"] == "unhealthy", timeout=2.6,
                 what="a failed health check")
        env.behave(i, {})
        wait_for(lambda: env.targets()[i]["health"] == "healthy", timeout=2.6,
                 what="a passed health check")
        t_healthy = time.monotonic() - t429
        assert t_healthy < ra - 0.3, "inconclusive: healthy again only %.2fs after the 429" % t_healthy
        t = env.targets()[i]
        assert t["state"] != "up" and t["breaker"] != "closed", \
            "a health pass closed the breaker while Retry-After was running: %r" % t
        wait_for(lambda: time.monotonic() - t429 >= ra - 0.2, timeout=ra)
        assert env.targets()[i]["state"] != "up", env.targets()[i]
        try:
            wait_for(lambda: env.targets()[i]["breaker"] == "closed", timeout=2.7,
                     what="healthy passes to close the breaker once Retry-After was over")
        except AssertionError as e:
            t = env.targets()[i]
            raise AssertionError("%s; %.1fs after the 429: state %s, breaker %s, health %s, "
                                 "retry_in_ms %d" % (e, time.monotonic() - t429, t["state"],
                                                     t["breaker"], t["health"], t["retry_in_ms"]))


def test_no_upstream_available_is_503_upstream_unavailable_with_retry_after():
    cooldown = 5
    route = pool_route("    retry: {{ attempts: 3, on: [connect] }}\n"
                       "    breaker: {{ failures: 1, error_rate: 0, cooldown: %d }}\n" % cooldown)
    with Env(routes(route)) as env:
        assert env.chat()[0] == 200
        for i in range(3):
            env.kill(i)
        # one request tries all three (each refuses) and gets the last attempt's error
        st, h, data = env.chat()
        assert st == 502 and error_of(data)["code"] == "connect", (st, data)
        row = env.audit(h["x-request-id"])
        att = attempts_of(row)
        assert row["retries"] == 2 and [a[1] for a in att] == ["connect"] * 3, row
        assert len({a[0] for a in att}) == 3, att
        assert all(t["breaker"] == "open" for t in env.targets()), env.targets()

        t0 = time.monotonic()
        st, h, data = env.chat()
        assert time.monotonic() - t0 < 1.0
        assert st == 503, (st, data)
        e = error_of(data)
        assert e["code"] == "upstream_unavailable", e
        ra = h.get("retry-after", "")
        assert ra.isdigit() and 1 <= int(ra) <= cooldown, "Retry-After %r (cooldown %d)" % (ra, cooldown)
        row = env.audit(h["x-request-id"])
        assert row["status"] == 503 and not row["attempts"] and not row["upstream"], row
        assert row["error"] == "unavailable" and row["retries"] == 0, row

        st, _, data = env.gw.request("GET", "/health/ready")
        assert st == 503 and any("pool" in str(r) for r in json.loads(data)["reasons"]), data
        # only enabled routes count
        r = env.gw.ctl("route.disable", {"name": "pool"})
        assert r.get("ok"), r
        st, _, data = env.gw.request("GET", "/health/ready")
        assert st == 200, "a disabled route keeps the gateway unready: %r" % data


def test_weighted_balance_follows_the_weights_over_real_requests():
    r31 = pool_route("    balance: weighted\n", name="w31",
                     match="{{ path: /v1/chat/completions, body: {{ model: \"w31\" }} }}",
                     upstreams=["      - url: {u0}/v1/chat/completions",
                                "        weight: 3",
                                "      - url: {u1}/v1/chat/completions",
                                "        weight: 1"])
    r511 = pool_route("", name="w511",
                      match="{{ path: /v1/chat/completions, body: {{ model: \"w511\" }} }}",
                      upstreams=["      - url: {u0}/v1/chat/completions",
                                 "        weight: 5",
                                 "      - url: {u1}/v1/chat/completions",
                                 "      - url: {u2}/v1/chat/completions"])
    with Env(routes(r31, r511)) as env:
        n = 200
        for _ in range(n):
            st, _, data = env.chat(dict(CHAT, model="w31"))
            assert st == 200, (st, data)
        c = env.chats()
        assert c[0] + c[1] == n and c[2] == 0, c
        share = c[0] / n
        assert abs(share - 0.75) <= 0.075, "weights 3:1 gave %d:%d" % (c[0], c[1])

        # smooth weighted round robin, the default: 5, 1, 1 goes a a b a c a a, never
        # five in a row
        order = ""
        for _ in range(14):
            before = env.chats()
            assert env.chat(dict(CHAT, model="w511"))[0] == 200
            after = env.chats()
            order += "abc"[[k for k in range(3) if after[k] > before[k]][0]]
        cycles = {("aabacaa" * 3)[k:k + 7] for k in range(7)}
        assert order[:7] in cycles and order[7:] == order[:7], "order %s, want a a b a c a a" % order

        # random follows the weights too; round_robin ignores them
        # (400 random picks: 0.75 +- 0.1 is 4.6 standard deviations)
        for balance, lo, hi, n in (("random", 0.65, 0.85, 400), ("round_robin", 0.5, 0.5, 200)):
            fmt = {"u%d" % i: u for i, u in enumerate(env.urls)}
            with open(os.path.join(env.gw.routes_dir, "10-test.yaml"), "w") as f:
                f.write(routes(r31.replace("balance: weighted", "balance: " + balance), r511)
                        .format(**fmt))
            rc, out, err = env.gw.cli("reload")
            assert rc == 0, (rc, out, err)
            assert env.gw.ctl("route.show", {"name": "w31"})["result"]["balance"] == balance
            before = env.chats()
            for _ in range(n):
                assert env.chat(dict(CHAT, model="w31"))[0] == 200
            c = [a - b for a, b in zip(env.chats(), before)]
            assert c[0] + c[1] == n and lo <= c[0] / n <= hi, \
                "%s with weights 3:1 gave %d:%d" % (balance, c[0], c[1])


def test_fallback_route_serves_when_every_upstream_failed_with_a_listed_outcome():
    a = pool_route("    retry: {{ attempts: 3, on: [5xx] }}\n"
                   "    breaker: {{ failures: 1, error_rate: 0, cooldown: 30 }}\n"
                   "    fallback: [backup]\n",
                   name="primary", match="{{ path: /v1/chat/completions, body: {{ model: \"fa-*\" }} }}",
                   upstreams=["      - url: {u0}/v1/chat/completions",
                              "      - url: {u1}/v1/chat/completions"])
    a2 = pool_route("    retry: {{ attempts: 3, on: [connect] }}\n    fallback: [backup]\n",
                    name="strict", match="{{ path: /v1/chat/completions, body: {{ model: \"fb-*\" }} }}",
                    upstreams=["      - url: {u0}/v1/chat/completions",
                               "      - url: {u1}/v1/chat/completions"])
    b = pool_route("    add_headers: {{ X-Via: backup }}\n", name="backup",
                   match="{{ path: /backup-only }}",
                   upstreams=["      - url: {u2}/v1/chat/completions",
                              "        model: backup-model"])
    with Env(routes(a, a2, b)) as env:
        env.behave(0, {"fail": "status:500"})
        env.behave(1, {"fail": "status:502"})
        st, h, data = env.chat(dict(CHAT, model="fa-1"))
        assert st == 200, (st, data)
        c = env.chats()
        assert c == [1, 1, 1], c
        # the fallback's own rewrites apply
        last = env.mocks[2].stats()["last"]
        assert json.loads(data)["model"] == "backup-model", data
        assert json.loads(last["body"])["model"] == "backup-model", last["body"]
        assert {k.lower(): v for k, v in last["headers"].items()}.get("x-via") == "backup", last
        row = env.audit(h["x-request-id"])
        att = attempts_of(row)
        assert [x[1] for x in att] in (["500", "502", "200"], ["502", "500", "200"]), att
        assert att[-1][0].startswith(env.urls[2]) and row["retries"] == 2, row
        assert row["status"] == 200 and not row["error"], row

        # 500 is not in the strict route's retry.on: the answer is passed on, no fallback
        st, h, data = env.chat(dict(CHAT, model="fb-1"))
        assert st in (500, 502), (st, data)
        c = env.chats()
        assert c[2] == 1 and c[0] + c[1] == 3, c

        # the primary's breakers are open now (failures: 1): straight to the fallback
        assert all(t["breaker"] == "open" for t in env.targets("primary")), env.targets("primary")
        st, h, data = env.chat(dict(CHAT, model="fa-2"))
        assert st == 200, (st, data)
        c = env.chats()
        assert c[2] == 2 and c[0] + c[1] == 3, c
        att = attempts_of(env.audit(h["x-request-id"]))
        assert len(att) == 1 and att[0][0].startswith(env.urls[2]), att

        # a fallback the client's key may not use is skipped
        limited = env.gw.create_key("primary-only", routes=["primary"])["key"]
        st, h, data = env.gw.request("POST", CHAT_PATH, dict(CHAT, model="fa-2b"),
                                     {"Authorization": "Bearer " + limited})
        assert st == 503 and error_of(data)["code"] == "upstream_unavailable", (st, data)
        assert env.chats()[2] == 2, env.chats()

        # a disabled fallback is skipped: nothing left, 503 upstream_unavailable
        r = env.gw.ctl("route.disable", {"name": "backup"})
        assert r.get("ok"), r
        st, h, data = env.chat(dict(CHAT, model="fa-3"))
        assert st == 503 and error_of(data)["code"] == "upstream_unavailable", (st, data)
        assert h.get("retry-after", "").isdigit(), h
        assert env.chats()[2] == 2, env.chats()


def test_per_upstream_model_is_rewritten_in_the_body_it_is_sent():
    route = pool_route("    balance: round_robin\n    retry: {{ attempts: 3, on: [5xx] }}\n",
                       upstreams=["      - url: {u0}/v1/chat/completions",
                                  "        model: alpha-model",
                                  "      - url: {u1}/v1/chat/completions",
                                  "        model: beta-model",
                                  "      - url: {u2}/v1/chat/completions"])
    with Env(routes(route)) as env:
        raw = b'{"model" : "client-model","messages":[{"role":"user","content":"hi"}],"temperature":0.70}'
        want = {0: "alpha-model", 1: "beta-model", 2: "client-model"}
        seen = set()
        for _ in range(6):
            before = env.chats()
            st, h, data = env.chat(raw, headers={"Content-Type": "application/json"})
            after = env.chats()
            assert st == 200, (st, data)
            i = [k for k in range(3) if after[k] > before[k]]
            assert len(i) == 1, (before, after)
            i = i[0]
            seen.add(i)
            assert json.loads(data)["model"] == want[i], (i, data)
            got = env.mocks[i].stats()["last"]["body"].encode()
            assert got == raw.replace(b'"client-model"', ('"%s"' % want[i]).encode()), (i, got)
            row = env.audit(h["x-request-id"])
            assert row["model"] == "client-model", row
        assert seen == {0, 1, 2}, seen
        # one request tried on all three (each fails once): each attempt has its own model
        for i in range(3):
            env.behave(i, {"fail": "status:500", "times": 1})
        st, h, data = env.chat(raw, headers={"Content-Type": "application/json"})
        assert st == 500 and len(attempts_of(env.audit(h["x-request-id"]))) == 3, (st, data)
        for i in range(3):
            got = env.mocks[i].stats()["last"]["body"].encode()
            assert got == raw.replace(b'"client-model"', ('"%s"' % want[i]).encode()), (i, got)

        # a body without a model gets the upstream's model added
        for _ in range(3):
            before = env.chats()
            st, h, data = env.chat({"messages": MSG})
            after = env.chats()
            i = [k for k in range(3) if after[k] > before[k]][0]
            sent = json.loads(env.mocks[i].stats()["last"]["body"])
            if i in (0, 1):
                assert sent.get("model") == want[i], (i, sent)
            else:
                assert "model" not in sent, sent


def test_upstream_drain_takes_a_target_out_of_rotation():
    """fastgate-routes(5): 'not drained with fastgate-cli upstream drain'; DESIGN: upstream
    list / drain ID / undrain ID, persisted like route state."""
    route = pool_route("")
    with Env(routes(route)) as env:
        rc, out, err = env.gw.cli("upstream", "drain", "pool/0")
        assert rc == 0, (rc, out, err)
        t = env.targets()[0]
        assert t["drained"] and t["state"] == "drained", t
        for _ in range(15):
            assert env.chat()[0] == 200
        assert env.chats()[0] == 0, env.chats()
        rc, out, err = env.gw.cli("upstream", "undrain", "pool/0")
        assert rc == 0, (rc, out, err)
        for _ in range(15):
            assert env.chat()[0] == 200
        assert env.chats()[0] > 0, env.chats()


def test_pool_metrics_are_exported():
    """DESIGN, Upstream pools: fastgate_upstream_up{route,upstream},
    fastgate_upstream_attempts_total{route,upstream,outcome},
    fastgate_breaker_transitions_total{route,upstream,to}."""
    route = pool_route("    retry: {{ attempts: 3, on: [5xx] }}\n"
                       "    breaker: {{ failures: 1, error_rate: 0, cooldown: 30 }}\n")
    with Env(routes(route)) as env:
        env.behave(0, {"fail": "status:500"})
        for _ in range(4):
            assert env.chat()[0] == 200
        st, _, data = env.gw.request("GET", "/metrics")
        text = data.decode()
        for name in ("fastgate_upstream_up{", "fastgate_upstream_attempts_total{",
                     "fastgate_breaker_transitions_total{", "fastgate_upstream_inflight"):
            assert name in text, "%s missing from /metrics" % name.rstrip("{")


if __name__ == "__main__":
    run_tests(globals())
