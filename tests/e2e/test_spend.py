"""End to end: spend control (issue #19). The real fastgated, with the shipped price and
model tables (share/pricing.yaml, share/models.yaml), in front of the C mock upstream on
free loopback ports: users, balances, key and user limits, the estimate reserved in the
policy phase and settled at the end, streams cut by the client (on_disconnect cancel and
drain), persistence across SIGKILL, /v1/models and /v1/usage, require_price, multipliers,
top-ups, suspension, the old --rpm, and a key store written by schema version 2.

Every expected cost and estimate is computed here, independently of the daemon, from the
documented formula (fastgated(8), SPEND CONTROL) and the shipped prices, with exact
rational arithmetic: never from what the daemon reports. Token counts of an answer are the
mock's (ceil(bytes/4) over the message text and the answer text), read from the answer.

Concurrency is made exact with the mock's gate (POST /__mock/hold, /__mock/release): the
requests a gateway admits wait at the mock, unanswered, until every one of the burst has
been decided, so no settlement can free room for a late one. Every wait is bounded and
waits for something observable. Each test says in a comment what would make it fail."""

import calendar
import csv
import fnmatch
import hashlib
import http.client
import io
import json
import math
import os
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
from fractions import Fraction

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ROOT, Closing, Gateway, Mock, rmtree, run_tests, tmpdir,  # noqa: E402
                     wait_for)

PRICING = os.path.join(ROOT, "share", "pricing.yaml")
MODELS = os.path.join(ROOT, "share", "models.yaml")
CHAT = "/v1/chat/completions"
NANO = 10 ** 9
AUDIT_FIELDS = ("request_id,key_id,user_id,status,model,prompt_tokens,completion_tokens,"
                "cost_usd,price_version,estimated,billed,unpriced,is_stream,chunks,bytes_in,"
                "error,started_at")


# --- the shipped tables, read here on their own -------------------------------------------

def _flow_entries(path, key):
    """The `- { match: "glob", k: v, ... }` entries of a shipped table, in order, values as
    exact Fractions (decimal text, never a float)."""
    out = []
    with open(path) as f:
        for line in f:
            m = re.match(r'\s*-\s*\{\s*match:\s*"([^"]+)"\s*,(.*)\}\s*(#.*)?$', line)
            if not m:
                continue
            fields = {}
            for part in m.group(2).split(","):
                k, _, v = part.partition(":")
                k, v = k.strip(), v.strip()
                if re.fullmatch(r"-?\d+(\.\d+)?", v):
                    fields[k] = Fraction(v)
                else:
                    fields[k] = v
            out.append((m.group(1), fields))
    assert out, "no entries read from " + path
    return out


PRICES = _flow_entries(PRICING, "prices")
MODEL_TABLE = _flow_entries(MODELS, "models")
with open(PRICING) as _f:
    PRICE_VERSION = re.search(r'^version:\s*"([^"]+)"', _f.read(), re.M).group(1)


def price_of(model):
    for glob, p in PRICES:
        if fnmatch.fnmatchcase(model, glob):
            return p
    return None


def max_output_of(model):
    for glob, m in MODEL_TABLE:
        if fnmatch.fnmatchcase(model, glob):
            return int(m["max_output_tokens"])
    return None


def cost_nano(model, prompt, completion, cached=0, cache_write=0, mult=Fraction(1)):
    """fastgated(8): (prompt - cached - cache_write) x input + cached x cached_input +
    cache_write x cache_write + completion x output, per 1M tokens, times the multipliers,
    rounded once, half up, to the nano-dollar."""
    p = price_of(model)
    assert p is not None, "no shipped price for " + model
    inp = p["input"]
    usd = (max(prompt - cached - cache_write, 0) * inp + cached * p.get("cached_input", inp)
           + cache_write * p.get("cache_write", inp) + completion * p["output"]) / 10 ** 6
    exact = usd * mult * NANO
    return math.floor(exact + Fraction(1, 2))


def estimate(model, body_len, max_tokens=None):
    """(prompt, output) tokens of the policy-phase estimate: ceil(body bytes / 4), and
    max_tokens, else the model's max_output_tokens, else 4096."""
    out = max_tokens if max_tokens is not None else (max_output_of(model) or 4096)
    return (body_len + 3) // 4, out


def est_cost(model, body_len, max_tokens=None, mult=Fraction(1)):
    p, o = estimate(model, body_len, max_tokens)
    return cost_nano(model, p, o, mult=mult)


def usd(nano):
    sign = "-" if nano < 0 else ""
    nano = abs(nano)
    return "%s%d.%09d" % (sign, nano // NANO, nano % NANO)


def nano_of(text):
    m = re.fullmatch(r"(-?)(\d+)\.(\d{9})", text)
    assert m, "not a 9-decimal USD amount: %r" % (text,)
    v = int(m.group(2)) * NANO + int(m.group(3))
    return -v if m.group(1) else v


def next_month_start(t):
    tm = time.gmtime(t)
    y, mo = (tm.tm_year + 1, 1) if tm.tm_mon == 12 else (tm.tm_year, tm.tm_mon + 1)
    return calendar.timegm((y, mo, 1, 0, 0, 0, 0, 0, 0))


# The daemon reads time() (glibc: the coarse real-time clock, a few ms behind): a second
# read here just before a request may still be the previous one there.
CLOCK_LAG = 0.05


def before_s():
    """The earliest second the daemon's clock can show from now on."""
    return int(time.time() - CLOCK_LAG)


def after_s():
    """The latest second the daemon's clock can have shown until now."""
    return int(time.time())


def next_day_start(t):
    return (int(t) // 86400 + 1) * 86400


def body_of(model, content="hi", max_tokens=None, stream=False, **extra):
    b = {"model": model, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    if stream:
        b["stream"] = True
    b.update(extra)
    return json.dumps(b, separators=(",", ":")).encode()


# --- environment ---------------------------------------------------------------------------

BASE_ROUTES = """routes:
  - name: chat
    match: {{ path: /v1/chat/completions, methods: [POST] }}
    upstream: {{ url: {m}/v1/chat/completions, api_key: upstream-key }}
    models: [gpt-4o-mini, gpt-4o, o1]
    timeout: 30
    idle_timeout: 10
"""


class Env(Closing):
    """A mock and a gateway with the shipped prices and models; `routes` is formatted with
    {m} = the mock's origin."""

    def __init__(self, routes=BASE_ROUTES, args=(), config=None):
        self.dir = tmpdir("fg-spend-")
        self.mock = None
        self.gw = None
        try:
            self.mock = Mock(self.dir)
            extra = ["--pricing", PRICING, "--models", MODELS] + list(args)
            if config is not None:
                cpath = os.path.join(self.dir, "fastgate.yaml")
                with open(cpath, "w") as f:
                    f.write(config)
                extra = ["-c", cpath] + extra
            self.gw = Gateway(self.dir, routes.format(m=self.mock.url), extra_args=extra)
        except BaseException:
            self.close()
            raise

    def close(self):
        errors = []
        try:
            try:
                if self.gw and self.gw.proc.alive():
                    rc = self.gw.stop()
                    if rc != 0:
                        errors.append("fastgated exit code %d" % rc)
                elif self.gw:
                    self.gw.proc.stop()         # reaps it, closes its files
                    rep = self.gw.proc.sanitizer_report()
                    errors.append("fastgated died (exit %s)%s" % (
                        self.gw.proc.p.returncode, ":\n" + rep if rep else ""))
            except AssertionError as e:         # a sanitizer report: the mock still goes
                errors.append(str(e))
            if self.mock:
                try:
                    self.mock.stop()
                except AssertionError as e:
                    errors.append(str(e))
        finally:
            if not os.environ.get("FG_KEEP_TMP"):
                rmtree(self.dir)
        if errors:
            raise AssertionError("; ".join(errors))

    # -- CLI (the interface under test) --
    def cli_json(self, *args):
        rc, out, err = self.gw.cli("--json", *args)
        assert rc == 0, "fastgate-cli %s: exit %d\n%s%s" % (" ".join(args), rc, out, err)
        return json.loads(out)

    def user(self, name, balance=None, multiplier=None, limits=()):
        a = ["user", "create", "--name", name]
        if balance is not None:
            a += ["--balance", balance]
        if multiplier is not None:
            a += ["--multiplier", multiplier]
        for lim in limits:
            a += ["--limit", lim]
        return self.cli_json(*a)

    def key(self, name, user=None, limits=(), multiplier=None, rpm=None, routes=None):
        a = ["key", "create", "--name", name]
        if user is not None:
            a += ["--user", str(user)]
        for lim in limits:
            a += ["--limit", lim]
        if multiplier is not None:
            a += ["--multiplier", multiplier]
        if rpm is not None:
            a += ["--rpm", str(rpm)]
        if routes is not None:
            a += ["--routes", routes]
        return self.cli_json(*a)

    def user_show(self, uid):
        return self.cli_json("user", "show", str(uid))

    # -- HTTP --
    def post(self, secret, body, headers=None, path=CHAT, timeout=30):
        h = {"Authorization": "Bearer " + secret, "Content-Type": "application/json"}
        h.update(headers or {})
        s, hd, data = self.gw.request("POST", path, body=body, headers=h, timeout=timeout)
        try:
            j = json.loads(data)
        except ValueError:
            j = None
        return s, hd, j

    def get(self, secret, path):
        s, hd, data = self.gw.request("GET", path, headers={"Authorization": "Bearer " + secret})
        return s, hd, json.loads(data) if data else None

    # -- mock --
    def mock_post(self, path, obj=None):
        c = http.client.HTTPConnection("127.0.0.1", self.mock.port, timeout=5)
        c.request("POST", path, body=json.dumps(obj if obj is not None else {}).encode(),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        d = r.read()
        c.close()
        assert r.status == 200, (path, r.status, d)
        return json.loads(d)

    # -- audit, read with the CLI's export --
    def rows(self, *filters):
        rc, out, err = self.gw.cli("logs", "export", "--format", "csv", "--fields",
                                   AUDIT_FIELDS, *filters)
        assert rc == 0, (rc, out, err)
        return list(csv.DictReader(io.StringIO(out)))

    def rows_when(self, n, *filters, what=None):
        """The audit rows once there are (at least) n of them: rows land within ~50 ms."""
        return wait_for(lambda: (lambda r: r if len(r) >= n else None)(self.rows(*filters)),
                        timeout=10, what=what or "%d audit rows" % n)


def hammer(fn, n):
    """Run fn(i) in n threads started together; returns their results in order."""
    res = [None] * n
    go = threading.Event()

    def run(i):
        go.wait(10)
        try:
            res[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - a failed request is a result here
            res[i] = e
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    go.set()
    return ts, res


def join_all(ts, timeout=30):
    deadline = time.monotonic() + timeout
    for t in ts:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in ts), "request threads still running"


def error_of(j):
    assert j and "error" in j, j
    return j["error"]


# --- issue #19, 1: a burst against a cost limit -------------------------------------------

def test_concurrent_burst_admits_exactly_floor_limit_over_estimate():
    # Fails if the check and the reservation are not one step (more than floor(L/E) get
    # through), if the estimate is not ceil(bytes/4) + max_tokens at the shipped price (the
    # count moves), if a refused request is forwarded (the mock counts it), or if 429 lacks
    # the exact Retry-After of a calendar window.
    with Env() as env:
        body = body_of("gpt-4o-mini", "concurrency", max_tokens=100)
        e = est_cost("gpt-4o-mini", len(body), 100)
        admit = 37
        limit = e * (admit + 1) - 1          # one nano-dollar short of a 38th estimate
        assert limit // e == admit
        k = env.key("burst", limits=["cost:%s/month" % usd(limit)])
        env.mock_post("/__mock/hold")
        t_before = before_s()
        ts, res = hammer(lambda i: env.post(k["key"], body), 200)
        # decided: refused at the gateway, or waiting at the mock's gate
        wait_for(lambda: sum(1 for r in res if r is not None) + env.mock.stats()["held"] >= 200,
                 timeout=30, what="all 200 requests to be decided")
        st = env.mock.stats()
        refused = [r for r in res if r is not None]
        t_after = after_s()
        assert st["held"] == admit, "admitted (at the mock) %d, expected floor(%d/%d) = %d" % (
            st["held"], limit, e, admit)
        assert st["chat"] == admit, st
        assert len(refused) == 200 - admit, len(refused)
        for r in refused:
            assert not isinstance(r, Exception), r
            s, h, j = r
            assert s == 429, (s, j)
            err = error_of(j)
            assert err["code"] == "rate_limited", err
            assert "cost:%s/month" % usd(limit).rstrip("0").rstrip(".") in err["message"], err
            ra = int(h["retry-after"])
            assert next_month_start(t_after) - t_after <= ra <= next_month_start(t_before) - t_before, \
                (ra, t_before, t_after)
            assert h["x-ratelimit-limit-cost"] == usd(limit), h
            assert nano_of(h["x-ratelimit-remaining-cost"]) == limit - admit * e, h
        env.mock_post("/__mock/release")
        join_all(ts)
        ok = [r for r in res if r[0] == 200]
        assert len(ok) == admit, [r[0] for r in res if r[0] != 429]
        assert env.mock.stats()["chat"] == admit
        # each answer's cost, from its own usage, is what it says and what the audit says
        total = 0
        for s, h, j in ok:
            c = cost_nano("gpt-4o-mini", j["usage"]["prompt_tokens"], j["usage"]["completion_tokens"])
            assert h["x-fastgate-cost"] == usd(c), (h.get("x-fastgate-cost"), usd(c))
            total += c
        rows = env.rows_when(200)
        billed = [r for r in rows if r["billed"] == "1"]
        assert len(billed) == admit, len(billed)
        assert sum(nano_of(r["cost_usd"]) for r in billed) == total
        s, _, u = env.get(k["key"], "/v1/usage")
        assert s == 200, u
        lim = u["key"]["limits"][0]
        assert nano_of(lim["used"]) == total, (lim, usd(total))
        assert nano_of(u["key"]["spend"]["month"]["cost_usd"]) == total


# --- issue #19, 2: a stream the client cuts -----------------------------------------------

def read_events_then_close(port, secret, body, n_events, headers=()):
    """POST a streaming request over a raw socket, read until n_events SSE events
    ("data: ..." blocks) have come, then close. Returns the events' data texts."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    head = ("POST %s HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n" % (CHAT, secret, len(body)))
    for k, v in headers:
        head += "%s: %s\r\n" % (k, v)
    s.sendall(head.encode() + b"\r\n" + body)
    buf = b""
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            d = s.recv(65536)
            if not d:
                break
            buf += d
            events = re.findall(rb"(?m)^data: (.*)$", buf.split(b"\r\n\r\n", 1)[-1])
            if len(events) >= n_events:
                return [e.decode() for e in events]
        raise AssertionError("got %r, not %d events" % (buf[-500:], n_events))
    finally:
        s.close()


def test_stream_cut_by_client_cancel_bills_estimate_of_events_relayed():
    # Fails if a cut stream is billed other than prompt estimate + (events relayed - 1)
    # completion tokens at the model's price, if the row is not flagged estimated, if the
    # upstream is not stopped (cancel), or if the user's balance moves by anything else.
    with Env() as env:
        u = env.user("streamer", balance="1")
        k = env.key("cut", user=u["id"])
        body = body_of("gpt-4o-mini", "please stream slowly " * 5, stream=True)
        # chunks a second apart: the client is long gone before the next one
        n = 4   # the role event and three content chunks
        ev = read_events_then_close(env.gw.port, k["key"], body, n,
                                    [("X-Mock-Chunks", "30"), ("X-Mock-Delay-Ms", "1000")])
        assert len(ev) == n, ev
        row = env.rows_when(1)[0]
        wait_for(lambda: env.mock.stats()["streams_aborted"] == 1, what="the upstream stopped")
        assert env.mock.stats()["streams_completed"] == 0
        prompt, _ = estimate("gpt-4o-mini", len(body))
        assert row["status"] == "499" and row["error"] == "client_closed", row
        assert row["estimated"] == "1" and row["billed"] == "1", row
        assert int(row["prompt_tokens"]) == prompt, (row["prompt_tokens"], prompt)
        assert int(row["completion_tokens"]) == n - 1, row["completion_tokens"]
        c = cost_nano("gpt-4o-mini", prompt, n - 1)
        assert row["cost_usd"] == usd(c), (row["cost_usd"], usd(c))
        assert row["price_version"] == PRICE_VERSION
        show = env.user_show(u["id"])
        assert nano_of(show["spent_usd"]) == c and nano_of(show["balance_usd"]) == NANO - c, show
        assert nano_of(show["reserved_usd"]) == 0, show


def test_stream_cut_by_client_drain_bills_upstream_usage():
    # Fails if on_disconnect: drain does not read the upstream to its end (the mock's stream
    # is not completed), or bills anything but the upstream's own usage (estimated=0).
    routes = BASE_ROUTES + """    on_disconnect: drain
"""
    with Env(routes) as env:
        u = env.user("drainer", balance="1")
        k = env.key("drain", user=u["id"])
        content = "drain me please " * 4
        # the mock's usage for this text, from a whole answer of the same request
        s, _, ref = env.post(k["key"], body_of("gpt-4o-mini", content))
        assert s == 200, ref
        env.mock.reset()
        body = body_of("gpt-4o-mini", content, stream=True)
        ev = read_events_then_close(env.gw.port, k["key"], body, 2,
                                    [("X-Mock-Chunks", "6"), ("X-Mock-Delay-Ms", "150")])
        assert len(ev) == 2
        wait_for(lambda: env.mock.stats()["streams_completed"] == 1, timeout=15,
                 what="the drained stream to end at the mock")
        rows = env.rows_when(2)
        row = rows[1]
        assert row["status"] == "499", row
        assert row["estimated"] == "0" and row["billed"] == "1", row
        assert int(row["prompt_tokens"]) == ref["usage"]["prompt_tokens"], row
        assert int(row["completion_tokens"]) == ref["usage"]["completion_tokens"], row
        c = cost_nano("gpt-4o-mini", ref["usage"]["prompt_tokens"], ref["usage"]["completion_tokens"])
        assert row["cost_usd"] == usd(c), (row["cost_usd"], usd(c))
        show = env.user_show(u["id"])
        assert nano_of(show["spent_usd"]) == 2 * c, (show, c)


def send_then_close_when_held(env, secret, body):
    """Send a request while the mock holds every request, close the connection once the
    mock has it (the upstream has the request, nothing has come back), then release."""
    env.mock_post("/__mock/hold")
    s = socket.create_connection(("127.0.0.1", env.gw.port), timeout=15)
    try:
        s.sendall(("POST %s HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                   % (CHAT, secret, len(body))).encode() + body)
        wait_for(lambda: env.mock.stats()["held"] == 1, what="the request at the mock")
    finally:
        s.close()
    env.mock_post("/__mock/release")


def test_client_leaving_before_the_first_byte_is_billed_its_prompt_or_drained():
    # The upstream had the request when the client left, before any byte came back.
    # cancel: billed the prompt's estimate and no completion, flagged estimated. drain: the
    # gateway waits for the answer and bills the upstream's own usage. Fails if such a
    # request is billed nothing (its reservation released as if no upstream had it), or if
    # drain does not read the answer (estimated=1, or the estimate's tokens).
    with Env(BASE_ROUTES + """    on_disconnect: cancel
""") as env:
        u = env.user("leaver", balance="1")
        k = env.key("leave", user=u["id"])
        body = body_of("gpt-4o-mini", "who reads this " * 6, max_tokens=50)
        send_then_close_when_held(env, k["key"], body)
        row = env.rows_when(1)[0]
        prompt, _ = estimate("gpt-4o-mini", len(body), 50)
        assert row["status"] == "499" and row["billed"] == "1" and row["estimated"] == "1", row
        assert int(row["prompt_tokens"]) == prompt and int(row["completion_tokens"]) == 0, row
        c = cost_nano("gpt-4o-mini", prompt, 0)
        assert row["cost_usd"] == usd(c), (row["cost_usd"], usd(c))
        show = env.user_show(u["id"])
        assert nano_of(show["spent_usd"]) == c and nano_of(show["reserved_usd"]) == 0, show
    with Env(BASE_ROUTES + """    on_disconnect: drain
""") as env:
        u = env.user("waiter", balance="1")
        k = env.key("wait", user=u["id"])
        content = "wait for me " * 6
        s, _, ref = env.post(k["key"], body_of("gpt-4o-mini", content))
        assert s == 200, ref
        send_then_close_when_held(env, k["key"], body_of("gpt-4o-mini", content))
        rows = env.rows_when(2)
        row = rows[1]
        assert row["status"] == "499" and row["billed"] == "1" and row["estimated"] == "0", row
        assert int(row["prompt_tokens"]) == ref["usage"]["prompt_tokens"], row
        assert int(row["completion_tokens"]) == ref["usage"]["completion_tokens"], row
        c = cost_nano("gpt-4o-mini", ref["usage"]["prompt_tokens"],
                      ref["usage"]["completion_tokens"])
        assert row["cost_usd"] == usd(c), (row["cost_usd"], usd(c))


def test_n_choices_multiply_the_output_estimate():
    # OpenAI's "n" asks for n answers of up to max_tokens each. Fails if the estimate
    # ignores it (a request for two answers fits a limit made for one).
    with Env() as env:
        body1 = body_of("gpt-4o-mini", "two answers please", max_tokens=100)
        prompt, _ = estimate("gpt-4o-mini", len(body1) + len(b',"n":2'), 100)
        k = env.key("choices", limits=["tokens:%d/day" % (prompt + 150)])["key"]
        s, _, j = env.post(k, body_of("gpt-4o-mini", "two answers please", max_tokens=100, n=2))
        assert s == 429 and error_of(j)["code"] == "request_too_large", (s, j)
        assert env.mock.stats()["chat"] == 0
        s, _, j = env.post(k, body1)
        assert s == 200, j


# --- issue #19, 3: a balance runs out mid-burst -------------------------------------------

def test_balance_runs_out_mid_burst_and_nothing_past_it_is_served():
    # Fails if the balance is not reserved against (more is served than the credit pays
    # for), if settlement is not exact (balance != credit - sum of the audit's costs), if a
    # request is served once the balance is below an estimate, if the refusal is not 429
    # insufficient_quota with x-should-retry: false once the balance is spent (and 429
    # rate_limited with Retry-After: 1 while requests in flight only hold it), or if a
    # refused request is forwarded.
    with Env() as env:
        body = body_of("gpt-4o", "x" * 120, max_tokens=200)
        e = est_cost("gpt-4o", len(body), 200)
        credit = e * 12 + e // 3
        u = env.user("burst-user", balance=usd(credit))
        k = env.key("burst-key", user=u["id"])
        # the burst: what the balance pays for waits at the mock, the rest is refused
        env.mock_post("/__mock/hold")
        ts, res = hammer(lambda i: env.post(k["key"], body), 60)
        wait_for(lambda: sum(1 for r in res if r is not None) + env.mock.stats()["held"] >= 60,
                 timeout=30, what="all 60 requests to be decided")
        assert env.mock.stats()["held"] == credit // e == 12, (env.mock.stats()["held"], credit // e)
        show = env.user_show(u["id"])
        assert nano_of(show["reserved_usd"]) == 12 * e, show
        assert nano_of(show["balance_usd"]) == credit - 12 * e, show
        env.mock_post("/__mock/release")
        join_all(ts)
        assert not [r for r in res if isinstance(r, Exception)], res
        assert [r[0] for r in res].count(200) == 12, [r[0] for r in res]
        statuses = [r[0] for r in res]
        assert set(statuses) <= {200, 429}, statuses
        # then one at a time until the balance says no, and no request past it is served
        served_after = []
        for _ in range(60):
            r = env.post(k["key"], body)
            served_after.append(r)
            if r[0] == 429:
                break
        assert served_after[-1][0] == 429, "the balance never ran out"
        for _ in range(5):
            served_after.append(env.post(k["key"], body))
        first_no = next(i for i, r in enumerate(served_after) if r[0] == 429)
        assert all(r[0] == 429 for r in served_after[first_no:]), [r[0] for r in served_after]
        # in the burst the balance was not spent, only held by the 12 in flight: a
        # temporary refusal with Retry-After: 1 (they settle at their real, lower cost)
        for s, h, j in [r for r in res if r[0] == 429]:
            err = error_of(j)
            assert err["code"] == "rate_limited" and "in flight" in err["message"], err
            assert h.get("retry-after") == "1" and "x-should-retry" not in h, h
        for s, h, j in served_after[first_no:]:
            err = error_of(j)
            assert err["code"] == "insufficient_quota", err
            assert h.get("x-should-retry") == "false", h
            assert "retry-after" not in h, h
            assert "balance" in err["message"], err
        n_ok = statuses.count(200) + sum(1 for r in served_after if r[0] == 200)
        assert env.mock.stats()["chat"] == n_ok, (env.mock.stats()["chat"], n_ok)
        rows = env.rows_when(60 + len(served_after))
        billed = [r for r in rows if r["billed"] == "1"]
        assert len(billed) == n_ok
        spent = sum(nano_of(r["cost_usd"]) for r in billed)
        # every answer costs less than its estimate here: the credit is never passed
        assert spent <= credit, (usd(spent), usd(credit))
        show = env.user_show(u["id"])
        assert nano_of(show["spent_usd"]) == spent, (show, usd(spent))
        assert nano_of(show["balance_usd"]) == credit - spent, show
        assert nano_of(show["reserved_usd"]) == 0, show
        # refused because what is left is below one estimate: the balance is spent down
        assert credit - spent < e, (usd(credit - spent), usd(e))
        assert n_ok >= credit // e, (n_ok, credit // e)


def test_balance_overshoot_is_at_most_one_request_then_refused():
    # An answer may cost more than its estimate (here the mock ignores max_tokens: 1): the
    # balance may go below zero by that one request's overshoot, never more, and then every
    # request is refused. Fails if a request is admitted once the balance left is below its
    # estimate (user "short" would be served a 4th time), if the balance is not settled to
    # the answers' real cost, or if the refusal does not say what is left and what was
    # needed (or that the balance is spent).
    with Env() as env:
        body = body_of("gpt-4o", "y" * 200, max_tokens=1)
        e = est_cost("gpt-4o", len(body), 1)
        s_ref, _, ref = env.post(env.key("ref")["key"], body)
        assert s_ref == 200
        c = cost_nano("gpt-4o", ref["usage"]["prompt_tokens"], ref["usage"]["completion_tokens"])
        assert c > e, "the test needs an answer dearer than its estimate (%d <= %d)" % (c, e)
        served = 1
        # short: after 3 answers less than one estimate is left; over: exactly one is left,
        # so a 4th is served and overshoots by c - e
        for name, credit, n_ok in (("short", 3 * c + e // 2, 3), ("over", 3 * c + e, 4)):
            u = env.user(name, balance=usd(credit))
            k = env.key(name + "-key", user=u["id"])
            res = [env.post(k["key"], body) for _ in range(8)]
            st = [r[0] for r in res]
            assert st == [200] * n_ok + [429] * (8 - n_ok), (name, st)
            served += n_ok
            spent = n_ok * c
            assert spent <= credit + (c - e), (name, usd(spent), usd(credit), usd(c - e))
            show = env.user_show(u["id"])
            assert nano_of(show["balance_usd"]) == credit - spent, (name, show)
            for _, h, j in res[n_ok:]:
                err = error_of(j)
                assert err["code"] == "insufficient_quota" and h.get("x-should-retry") == "false", err
                if credit - spent <= 0:
                    assert "spent" in err["message"], err
                else:
                    assert usd(credit - spent) in err["message"] and usd(e) in err["message"], err
        assert env.mock.stats()["chat"] == served


# --- issue #19, 4: SIGKILL under load, then a restart --------------------------------------

def test_sigkill_under_load_then_restart_balances_equal_audit_and_day_windows_hold():
    # Fails if the spend counters are not written in the rows' transaction or not read back
    # at start (the balance or the day totals after the restart differ from the sum of the
    # audit rows), or if a day limit starts empty again after the restart (a request that
    # the restored usage leaves no room for is then admitted).
    with Env() as env:
        credit = 5 * NANO
        u = env.user("durable", balance=usd(credit), limits=["cost:100/day"])
        k = env.key("durable-key", user=u["id"], limits=["tokens:10M/day"])
        plain = body_of("gpt-4o-mini", "load " * 20, max_tokens=50)
        stream = body_of("gpt-4o-mini", "load stream " * 10, max_tokens=50, stream=True)
        stop = threading.Event()

        def load(i):
            n = 0
            while not stop.is_set() and n < 400:
                try:
                    if i % 2:
                        env.gw.request("POST", CHAT, body=stream, headers={
                            "Authorization": "Bearer " + k["key"], "X-Mock-Chunks": "3"}, timeout=10)
                    else:
                        env.post(k["key"], plain, timeout=10)
                except Exception:  # noqa: BLE001 - the gateway is being killed
                    return n
                n += 1
            return n
        ts, res = hammer(load, 6)
        # a top-up in the middle of the load, some rows committed and more on their way
        wait_for(lambda: len(env.rows()) >= 20, timeout=30, what="rows written under load")
        env.cli_json("user", "topup", str(u["id"]), "--amount", "0.000000007")
        credit += 7
        wait_for(lambda: len(env.rows()) >= 40, timeout=30, what="more rows written under load")
        os.kill(env.gw.proc.pid, signal.SIGKILL)
        env.gw.proc.p.wait(10)
        stop.set()
        join_all(ts)
        rep = env.gw.proc.sanitizer_report()
        assert rep is None, rep
        env.gw.name = "fastgated-restarted"
        env.gw.start()
        rows = env.rows("--user", str(u["id"]))
        billed = [r for r in rows if r["billed"] == "1"]
        assert billed, "no billed rows survived"
        spent = sum(nano_of(r["cost_usd"]) for r in billed)
        tokens = sum(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in billed)
        show = env.user_show(u["id"])
        assert nano_of(show["spent_usd"]) == spent, (show["spent_usd"], usd(spent))
        assert nano_of(show["balance_usd"]) == credit - spent, (show["balance_usd"], usd(credit - spent))
        today = time.strftime("%Y-%m-%d", time.gmtime())
        day_rows = [r for r in billed if r["started_at"].startswith(today)]
        assert show["spend"]["day"]["requests"] == len(day_rows), (show["spend"], len(day_rows))
        assert nano_of(show["spend"]["day"]["cost_usd"]) == sum(nano_of(r["cost_usd"]) for r in day_rows)
        kshow = env.cli_json("key", "show", str(k["id"]))
        assert kshow["spend"]["day"]["tokens"] == tokens, (kshow["spend"], tokens)
        s, _, us = env.get(k["key"], "/v1/usage")
        assert s == 200
        assert us["key"]["limits"][0]["used"] == tokens, (us["key"]["limits"], tokens)
        assert nano_of(us["user"]["limits"][0]["used"]) == spent, us["user"]["limits"]
        # the restored day window bites: room for one estimate less one token
        probe = body_of("gpt-4o-mini", "probe", max_tokens=10)
        need = sum(estimate("gpt-4o-mini", len(probe), 10))
        env.cli_json("key", "update", str(k["id"]), "--limit", "tokens:%d/day" % (tokens + need - 1))
        s, h, j = env.post(k["key"], probe)
        assert s == 429 and error_of(j)["code"] == "rate_limited", (s, j)
        assert h["x-ratelimit-remaining-tokens"] == str(need - 1), h
        assert "tokens:%d/day" % (tokens + need - 1) in error_of(j)["message"], j
        env.cli_json("key", "update", str(k["id"]), "--limit", "tokens:%d/day" % (tokens + need))
        s, h, j = env.post(k["key"], probe)
        assert s == 200, (s, j)


# --- the rest of spend control -------------------------------------------------------------

def test_models_lists_only_the_routes_the_key_may_use():
    # Fails if /v1/models lists a route the key may not use, a disabled route's models, or
    # repeats a model, or is not OpenAI's list shape.
    routes = BASE_ROUTES + """  - name: claude
    match: {{ path: /v1/messages, methods: [POST] }}
    upstream: {{ url: {m}, provider: anthropic, api_key: a }}
    models: [claude-sonnet-4-5, gpt-4o]
  - name: spare
    enabled: false
    match: {{ path: /v1/spare, methods: [POST] }}
    upstream: {{ url: {m} }}
    models: [spare-model]
"""
    with Env(routes) as env:
        only_chat = env.key("chat-only", routes="chat")["key"]
        every = env.key("every")["key"]
        only_claude = env.key("claude-only", routes="claude")["key"]

        def ids(secret):
            s, h, j = env.get(secret, "/v1/models")
            assert s == 200, (s, j)
            assert j["object"] == "list", j
            for m in j["data"]:
                assert m["object"] == "model" and isinstance(m["created"], int), m
            return [m["id"] for m in j["data"]]
        assert ids(only_chat) == ["gpt-4o-mini", "gpt-4o", "o1"]
        assert sorted(ids(every)) == sorted(["gpt-4o-mini", "gpt-4o", "o1", "claude-sonnet-4-5"])
        assert ids(only_claude) == ["claude-sonnet-4-5", "gpt-4o"]
        s, _, j = env.get(only_claude, "/v1/models")
        owners = {m["id"]: m["owned_by"] for m in j["data"]}
        assert owners["claude-sonnet-4-5"] == "anthropic", owners
        env.cli_json("route", "enable", "spare")
        assert "spare-model" in ids(every)
        env.cli_json("route", "disable", "chat")
        assert ids(only_chat) == []
        assert env.mock.stats()["requests"] == 0
        s, _, _ = env.gw.request("GET", "/v1/models")
        assert s == 401


def test_usage_endpoint_numbers_match_the_audit():
    # Fails if /v1/usage's spend, limits (used, remaining, reset) or the user's balance
    # differ from what the audit rows and the top-ups add up to.
    with Env() as env:
        u = env.user("reader", balance="2", limits=["requests:1000/day"])
        k = env.key("reader-key", user=u["id"], limits=["tokens:100000/day", "cost:1/month"])
        for content in ("one", "two two", "three three three"):
            s, _, j = env.post(k["key"], body_of("gpt-4o-mini", content, max_tokens=30))
            assert s == 200, j
        rows = env.rows_when(3)
        cost = sum(nano_of(r["cost_usd"]) for r in rows)
        tokens = sum(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in rows)
        t0 = before_s()
        s, _, us = env.get(k["key"], "/v1/usage")
        t1 = after_s()
        assert s == 200 and us["object"] == "usage", us
        assert us["key"]["id"] == k["id"] and us["key"]["name"] == "reader-key"
        for period in ("day", "month", "total"):
            sp = us["key"]["spend"][period]
            assert (sp["requests"], sp["tokens"], nano_of(sp["cost_usd"])) == (3, tokens, cost), sp
            assert us["user"]["spend"][period]["requests"] == 3
        lims = {l["limit"]: l for l in us["key"]["limits"]}
        tl = lims["tokens:100000/day"]
        assert (tl["used"], tl["remaining"]) == (tokens, 100000 - tokens), tl
        assert next_day_start(t1) - t1 <= tl["reset_seconds"] <= next_day_start(t0) - t0, tl
        cl = lims["cost:1/month"]
        assert nano_of(cl["used"]) == cost and nano_of(cl["remaining"]) == NANO - cost, cl
        ul = us["user"]["limits"][0]
        assert ul["limit"] == "requests:1000/day" and ul["used"] == 3 and ul["remaining"] == 997, ul
        assert nano_of(us["user"]["balance_usd"]) == 2 * NANO - cost, us["user"]
        assert nano_of(us["user"]["credit_usd"]) == 2 * NANO
        assert nano_of(us["user"]["spent_usd"]) == cost
        # /v1/usage itself is not billed and counts against no limit
        s, _, us2 = env.get(k["key"], "/v1/usage")
        assert us2["key"]["spend"]["day"]["requests"] == 3
        assert env.mock.stats()["requests"] == 3


def test_require_price_refuses_unpriced_models_on_route_and_gateway():
    # Fails if require_price (route key, or fastgate.yaml) lets an unpriced model through,
    # forwards it, or refuses a priced one.
    routes = BASE_ROUTES + """  - name: strict
    match: {{ path: /v1/strict/chat/completions, methods: [POST] }}
    upstream: {{ url: {m}/v1/chat/completions }}
    require_price: true
"""
    with Env(routes) as env:
        k = env.key("k")["key"]
        s, _, j = env.post(k, body_of("my-own-model"), path="/v1/strict/chat/completions")
        assert s == 403 and error_of(j)["code"] == "model_not_priced", (s, j)
        assert "my-own-model" in error_of(j)["message"], j
        assert env.mock.stats()["chat"] == 0
        s, _, j = env.post(k, body_of("gpt-4o-mini"), path="/v1/strict/chat/completions")
        assert s == 200, j
        s, _, j = env.post(k, body_of("my-own-model"))     # the lax route serves it
        assert s == 200, j
    with Env(config="require_price: true\n") as env:
        k = env.key("k")["key"]
        s, _, j = env.post(k, body_of("my-own-model"))
        assert s == 403 and error_of(j)["code"] == "model_not_priced", (s, j)
        assert env.mock.stats()["chat"] == 0
        s, _, j = env.post(k, body_of("gpt-4o-mini"))
        assert s == 200, j


def test_unpriced_model_refused_for_a_cost_limit_or_a_balance():
    # Fails if a key whose spend must be bounded (a cost limit on it or its user, or a user
    # balance) is served a model with no price.
    with Env() as env:
        k_cost = env.key("capped", limits=["cost:5/month"])["key"]
        u_bal = env.user("payer", balance="5")
        k_bal = env.key("paying", user=u_bal["id"])["key"]
        u_lim = env.user("limited", limits=["cost:1/day"])
        k_ulim = env.key("user-capped", user=u_lim["id"])["key"]
        for secret, word in ((k_cost, "cost limit"), (k_bal, "balance"), (k_ulim, "cost limit")):
            s, _, j = env.post(secret, body_of("my-own-model"))
            assert s == 403, (s, j)
            err = error_of(j)
            assert err["code"] == "model_not_priced", err
            assert "my-own-model" in err["message"] and word in err["message"], err
        assert env.mock.stats()["chat"] == 0
        s, _, j = env.post(k_cost, body_of("gpt-4o-mini"))
        assert s == 200, j


def test_unpriced_model_is_served_with_an_empty_cost_never_zero():
    # Fails if an unpriced model's audit row says 0 (or any cost) instead of empty, is not
    # flagged unpriced, if the answer carries an X-Fastgate-Cost, or if a request without a
    # model is not a cost of exactly 0.
    routes = BASE_ROUTES + """  - name: echo
    match: {{ path: /echo/** }}
    upstream: {{ url: {m} }}
    strip_prefix: /echo
"""
    with Env(routes) as env:
        k = env.key("free")["key"]
        s, h, j = env.post(k, body_of("my-own-model"))
        assert s == 200, j
        assert "x-fastgate-cost" not in h, h
        s, h, j = env.post(k, b'{"hello":"world"}', path="/echo/thing")
        assert s == 200, j
        rows = env.rows_when(2)
        r = rows[0]
        assert r["model"] == "my-own-model" and r["cost_usd"] == "", r
        assert r["unpriced"] == "1" and r["billed"] == "1" and r["price_version"] == "", r
        assert int(r["prompt_tokens"]) > 0, r
        assert rows[1]["cost_usd"] == usd(0) and rows[1]["unpriced"] == "0", rows[1]
        show = env.cli_json("key", "show", rows[0]["key_id"])
        assert show["spend"]["total"]["requests"] == 2, show["spend"]


def test_unpriced_requests_metric_counts_them():
    # DESIGN.md and fastgated(8): an unpriced request is counted in
    # fastgate_unpriced_requests_total. Fails if the metric is missing or does not count.
    with Env() as env:
        k = env.key("free")["key"]
        for _ in range(2):
            s, _, j = env.post(k, body_of("my-own-model"))
            assert s == 200, j
        s, _, data = env.gw.request("GET", "/metrics")
        assert s == 200
        text = data.decode()
        vals = [float(m.group(1)) for m in
                re.finditer(r"(?m)^fastgate_unpriced_requests_total(?:\{[^}]*\})? (\S+)$", text)]
        assert vals and sum(vals) == 2, "fastgate_unpriced_requests_total: %r" % (vals,)


def test_multipliers_key_times_user_change_the_cost_exactly():
    # Fails if a key's or a user's multiplier is not applied, applied twice, or rounded other
    # than once, half up, on the exact product (fastgated(8), Prices).
    with Env() as env:
        cases = [("1.5", "2", Fraction(3)), ("0.25", "1.2", Fraction(3, 10)),
                 ("1.5", "1.333333", Fraction(15, 10) * Fraction(1333333, 10 ** 6))]
        content = "m" * 400
        for km, um, mult in cases:
            u = env.user("u" + um, multiplier=um)
            k = env.key("k" + km + um, user=u["id"], multiplier=km)
            s, h, j = env.post(k["key"], body_of("o1", content, max_tokens=100))
            assert s == 200, j
            want = cost_nano("o1", j["usage"]["prompt_tokens"], j["usage"]["completion_tokens"],
                             mult=mult)
            assert h["x-fastgate-cost"] == usd(want), (km, um, h["x-fastgate-cost"], usd(want))
        plain = env.key("plain")["key"]
        s, h, j = env.post(plain, body_of("o1", content, max_tokens=100))
        assert h["x-fastgate-cost"] == usd(cost_nano("o1", j["usage"]["prompt_tokens"],
                                                     j["usage"]["completion_tokens"]))


def test_global_multiplier_from_the_price_table():
    # Fails if the price table's top-level multiplier is not applied, or is rounded other
    # than once together with the key's.
    d = tmpdir("fg-spend-prices-")
    try:
        path = os.path.join(d, "pricing.yaml")
        with open(PRICING) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace('version: "%s"' % PRICE_VERSION,
                                 'version: "test-x"\nmultiplier: 1.1', 1))
        with Env(args=["--pricing", path]) as env:
            k = env.key("k", multiplier="3")["key"]
            s, h, j = env.post(k, body_of("gpt-4o", "g" * 333, max_tokens=100))
            assert s == 200, j
            want = cost_nano("gpt-4o", j["usage"]["prompt_tokens"], j["usage"]["completion_tokens"],
                             mult=Fraction(33, 10))
            assert h["x-fastgate-cost"] == usd(want), (h["x-fastgate-cost"], usd(want))
            row = env.rows_when(1)[0]
            assert row["price_version"] == "test-x" and row["cost_usd"] == usd(want), row
    finally:
        rmtree(d)


def test_key_update_limit_applies_at_once_and_no_limits_lifts_it():
    # Fails if key update --limit waits for anything (a restart, a reload) to bite, or if
    # --no-limits does not lift it at once.
    with Env() as env:
        k = env.key("changing")
        body = body_of("gpt-4o-mini", "hello", max_tokens=10)
        for _ in range(3):
            assert env.post(k["key"], body)[0] == 200
        upd = env.cli_json("key", "update", str(k["id"]), "--limit", "requests:3/day")
        assert upd["limits"] == ["requests:3/day"], upd
        s, h, j = env.post(k["key"], body)
        assert s == 429 and error_of(j)["code"] == "rate_limited", (s, j)
        assert "requests:3/day" in error_of(j)["message"], j
        assert h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-remaining-requests"] == "0", h
        upd = env.cli_json("key", "update", str(k["id"]), "--no-limits")
        assert upd["limits"] == [], upd
        s, h, j = env.post(k["key"], body)
        assert s == 200, j
        assert not [x for x in h if x.startswith("x-ratelimit-")], h
        # a user's limit too
        u = env.user("later")
        k2 = env.key("owned", user=u["id"])
        assert env.post(k2["key"], body)[0] == 200
        env.cli_json("user", "update", str(u["id"]), "--limit", "requests:1/day")
        s, _, j = env.post(k2["key"], body)
        assert s == 429 and "user" in error_of(j)["message"] and "requests:1/day" in error_of(j)["message"], j


def test_request_too_large_is_final_and_names_the_limit():
    # Fails if an estimate over a limit on its own is answered as a wait (rate_limited with a
    # Retry-After) instead of request_too_large with x-should-retry: false.
    with Env() as env:
        k = env.key("small", limits=["tokens:500/day"])["key"]
        body = body_of("gpt-4o-mini", "big", max_tokens=1000)
        s, h, j = env.post(k, body)
        assert s == 429, (s, j)
        err = error_of(j)
        assert err["code"] == "request_too_large", err
        assert "tokens:500/day" in err["message"], err
        assert str(sum(estimate("gpt-4o-mini", len(body), 1000))) in err["message"], err
        assert h.get("x-should-retry") == "false" and "retry-after" not in h, h
        # no max_tokens: the model's output cap from share/models.yaml is the estimate
        small = body_of("gpt-4o-mini", "x")
        fits = sum(estimate("gpt-4o-mini", len(small)))
        assert estimate("gpt-4o-mini", len(small))[1] == max_output_of("gpt-4o-mini") == 16384
        k2 = env.key("capped", limits=["tokens:%d/day" % fits])["key"]
        bigger = body_of("gpt-4o-mini", "xxxxx")
        assert sum(estimate("gpt-4o-mini", len(bigger))) == fits + 1
        s, _, j = env.post(k2, bigger)
        assert s == 429 and error_of(j)["code"] == "request_too_large", j
        s, _, j = env.post(k2, small)
        assert s == 200, j
        assert env.mock.stats()["chat"] == 1


def test_failure_before_the_first_byte_releases_the_reservation():
    # Fails if a request that no upstream answered is billed or keeps its reservation
    # (the balance or the limit stays down).
    with Env() as env:
        u = env.user("unlucky", balance="1")
        k = env.key("unlucky-key", user=u["id"], limits=["requests:2/day"])["key"]
        body = body_of("gpt-4o-mini", "fail me", max_tokens=10)
        for _ in range(3):
            s, _, j = env.post(k, body, headers={"X-Mock-Fail": "reset"})
            assert s == 502, (s, j)
        rows = env.rows_when(3)
        assert all(r["billed"] == "0" and r["cost_usd"] == "" for r in rows), rows
        show = env.user_show(u["id"])
        assert show["balance_usd"] == "1.000000000" and show["reserved_usd"] == "0.000000000", show
        assert show["spend"]["total"]["requests"] == 0
        for _ in range(2):
            assert env.post(k, body)[0] == 200
        s, _, j = env.post(k, body)
        assert s == 429 and "requests:2/day" in error_of(j)["message"], j


def test_user_suspend_refuses_and_resume_serves():
    # Fails if a suspended user's key is served (or forwarded), or a resumed one is not.
    with Env() as env:
        u = env.user("pauser")
        k = env.key("pauser-key", user=u["id"])["key"]
        body = body_of("gpt-4o-mini", "hi")
        assert env.post(k, body)[0] == 200
        assert env.cli_json("user", "suspend", str(u["id"]))["status"] == "suspended"
        s, _, j = env.post(k, body)
        assert s == 403 and error_of(j)["code"] == "account_suspended", (s, j)
        assert "suspended" in error_of(j)["message"], j
        assert env.mock.stats()["chat"] == 1
        assert env.cli_json("user", "resume", str(u["id"]))["status"] == "active"
        assert env.post(k, body)[0] == 200


def test_old_rpm_flag_is_requests_per_minute_with_exact_retry_after():
    # Fails if --rpm N is not the limit requests:N/min (its text, its count), or its 429 does
    # not say in Retry-After exactly when the oldest request leaves the minute window.
    with Env() as env:
        k = env.key("legacy", rpm=2)
        assert k["limits"] == ["requests:2/min"] and k["rpm"] == 2, k
        rc, out, err = env.gw.cli("key", "list")
        assert rc == 0 and re.search(r"^ID .* USER .* LIMITS +ROUTES$", out, re.M), (out, err)
        assert re.search(r"\blegacy\b.*\brequests:2/min\s+all$", out, re.M), out
        body = body_of("gpt-4o-mini", "rpm")
        t_first = before_s()
        s1, h1, _ = env.post(k["key"], body)
        t_first_done = after_s()
        s2, h2, _ = env.post(k["key"], body)
        assert (s1, s2) == (200, 200)
        assert (h1["x-ratelimit-limit-requests"], h1["x-ratelimit-remaining-requests"]) == ("2", "1"), h1
        assert h2["x-ratelimit-remaining-requests"] == "0", h2
        # a second later on the clock, so that a fixed "60" cannot pass for the exact wait
        wait_for(lambda: before_s() > t_first_done, timeout=3, interval=0.05,
                 what="the next second")
        t0 = before_s()
        s, h, j = env.post(k["key"], body)
        t1 = after_s()
        assert s == 429 and error_of(j)["code"] == "rate_limited", (s, j)
        assert "requests:2/min" in error_of(j)["message"], j
        ra = int(h["retry-after"])
        # counted at second s leaves at s + 60
        assert t_first + 60 - t1 <= ra <= t_first_done + 60 - t0 <= 59, (ra, t_first, t1)
        assert env.mock.stats()["chat"] == 2
        shown = env.cli_json("key", "show", str(k["id"]))
        assert shown["limits"] == ["requests:2/min"], shown


def test_retry_after_is_the_wait_of_the_limit_that_frees_last():
    # Fails if Retry-After is not exact for an hour window (usage leaves at the start of the
    # 60th minute after its own) or, with a key and a user limit both full, is not the wait
    # of the one that frees last (waiting less would only meet the other limit).
    with Env() as env:
        body = body_of("gpt-4o-mini", "wait", max_tokens=5)
        k = env.key("hourly", limits=["requests:1/hour"])
        t_first = before_s()
        assert env.post(k["key"], body)[0] == 200
        t_done = after_s()
        t0 = before_s()
        s, h, j = env.post(k["key"], body)
        t1 = after_s()
        assert s == 429 and "requests:1/hour" in error_of(j)["message"], j
        ra = int(h["retry-after"])
        assert (t_first // 60) * 60 + 3600 - t1 <= ra <= (t_done // 60) * 60 + 3600 - t0, (ra, t_first, t1)
        u = env.user("daily", limits=["requests:1/day"])
        k2 = env.key("minutely", user=u["id"], limits=["requests:1/min"])
        assert env.post(k2["key"], body)[0] == 200
        t0 = before_s()
        s, h, j = env.post(k2["key"], body)
        t1 = after_s()
        assert s == 429, j
        ra = int(h["retry-after"])
        assert next_day_start(t1) - t1 <= ra <= next_day_start(t0) - t0, (ra, t0)
        msg = error_of(j)["message"]
        assert "requests:1/day" in msg and "user" in msg, msg


def test_price_table_reload_takes_new_prices_and_a_bad_one_keeps_the_old():
    # Fails if SIGHUP does not re-read the price table (cost and price_version stay old), or
    # if a bad table replaces a good one.
    d = tmpdir("fg-spend-reload-")
    try:
        path = os.path.join(d, "pricing.yaml")
        with open(path, "w") as f:
            f.write('version: "one"\nprices:\n  - { match: "gpt-4o-mini", input: 1, output: 3 }\n')
        with Env(args=["--pricing", path]) as env:
            k = env.key("k")["key"]

            def cost_now():
                s, h, j = env.post(k, body_of("gpt-4o-mini", "reload"))
                assert s == 200, j
                u_ = j["usage"]
                return nano_of(h["x-fastgate-cost"]), u_["prompt_tokens"], u_["completion_tokens"]

            def reload_and_wait(marker, n):
                os.kill(env.gw.proc.pid, signal.SIGHUP)
                wait_for(lambda: env.gw.proc.stderr().count(marker) >= n, timeout=10,
                         what="the reload to be logged")
            c, p, o = cost_now()
            assert c == (p * 1 + o * 3) * 1000, (c, p, o)
            with open(path, "w") as f:
                f.write('version: "two"\nprices:\n  - { match: "gpt-4o-mini", input: 2, output: 5 }\n')
            reload_and_wait("price table read", 2)
            c, p, o = cost_now()
            assert c == (p * 2 + o * 5) * 1000, (c, p, o)
            with open(path, "w") as f:
                f.write('version: "three"\nprices:\n  - { match: "gpt-4o-mini", input: x, output: 5 }\n')
            reload_and_wait("reload failed", 1)
            c, p, o = cost_now()
            assert c == (p * 2 + o * 5) * 1000, (c, p, o)
            assert [r["price_version"] for r in env.rows_when(3)] == ["one", "two", "two"]
    finally:
        rmtree(d)


def test_v2_key_store_keeps_working():
    # Fails if a key store written by schema version 2 (before users and limits) is not
    # migrated: its keys stop authenticating, or its rpm is not requests:N/min.
    d = tmpdir("fg-spend-v2-")
    try:
        with Env() as env:      # a real secret and its hash, from the daemon itself
            k = env.key("made-now")
        secret = k["key"]
        db = os.path.join(d, "old.db")
        c = sqlite3.connect(db)
        c.executescript(
            "CREATE TABLE keys (id INTEGER PRIMARY KEY, name TEXT NOT NULL, display TEXT NOT NULL,"
            " hash BLOB NOT NULL UNIQUE, created INTEGER, expires INTEGER, revoked INTEGER,"
            " last_used INTEGER, routes TEXT, rpm INTEGER);"
            "CREATE TABLE route_state (name TEXT PRIMARY KEY, enabled INTEGER NOT NULL,"
            " updated INTEGER);"
            "CREATE TABLE target_state (route TEXT NOT NULL, url TEXT NOT NULL,"
            " drained INTEGER NOT NULL, updated INTEGER, PRIMARY KEY (route, url));"
            "PRAGMA user_version = 2;")
        c.execute("INSERT INTO keys VALUES (5, 'old', ?, ?, 1700000000, 0, 0, 0, 'chat', 1)",
                  (secret[:11], hashlib.sha256(secret.encode()).digest()))
        c.commit()
        c.close()
        with Env(args=["--keys", db]) as env:
            shown = env.cli_json("key", "show", "5")
            assert shown["limits"] == ["requests:1/min"] and shown["user_id"] is None, shown
            assert shown["multiplier"] == "1", shown
            body = body_of("gpt-4o-mini", "old key")
            s, h, j = env.post(secret, body)
            assert s == 200, (s, j)
            assert h["x-ratelimit-limit-requests"] == "1", h
            s, _, j = env.post(secret, body)
            assert s == 429 and "requests:1/min" in error_of(j)["message"], j
            # and the old store now takes users and limits
            u = env.user("new-owner", balance="1")
            assert u["id"] >= 1
            env.cli_json("key", "update", "5", "--no-limits")
            assert env.post(secret, body)[0] == 200
    finally:
        rmtree(d)


def test_topups_add_exactly():
    # Fails if a top-up is not added to the nano-dollar (a float anywhere would lose the
    # last digits of 0.1 + 0.2 or of 1e-9), or if a negative one does not take off.
    with Env() as env:
        u = env.user("saver", balance="0.1")
        uid = str(u["id"])
        assert u["balance_usd"] == "0.100000000", u
        for amt in ("0.2", "0.000000001", "12345.678901234", "-0.000000002"):
            env.cli_json("user", "topup", uid, "--amount", amt)
        show = env.user_show(uid)
        want = nano_of("0.100000000") + nano_of("0.200000000") + 1 + nano_of("12345.678901234") - 2
        assert nano_of(show["credit_usd"]) == want and nano_of(show["balance_usd"]) == want, show
        k = env.key("spender", user=u["id"])["key"]
        s, h, j = env.post(k, body_of("gpt-4o", "spend"))
        assert s == 200, j
        c = nano_of(h["x-fastgate-cost"])
        assert c == cost_nano("gpt-4o", j["usage"]["prompt_tokens"], j["usage"]["completion_tokens"])
        show = env.user_show(uid)
        assert nano_of(show["balance_usd"]) == want - c, show
        # the control command too, and a user with no balance starts with none
        r = env.gw.ctl("user.topup", {"id": int(uid), "amount": "1.000000001"})
        assert r.get("ok"), r
        assert nano_of(env.user_show(uid)["balance_usd"]) == want - c + NANO + 1
        # DESIGN.md's form, the amount as a second argument (-- before a negative one)
        env.cli_json("user", "topup", uid, "2")
        env.cli_json("user", "topup", uid, "--", "-0.5")
        assert nano_of(env.user_show(uid)["balance_usd"]) == want - c + NANO + 1 + NANO * 3 // 2
        assert env.user("no-balance")["balance_usd"] is None


def test_every_refusal_message_names_what_refused():
    # Fails if a refusal's message does not name the limit (kind, amount, window), whose it
    # is (key or user, with the id), or the balance, so that a person knows what to change.
    with Env() as env:
        u = env.user("namer", limits=["tokens:50/day"])
        k = env.key("namer-key", user=u["id"], limits=["requests:1/month"])
        body = body_of("gpt-4o-mini", "n", max_tokens=5)
        assert env.post(k["key"], body)[0] == 200
        s, _, j = env.post(k["key"], body)
        msg = error_of(j)["message"]
        assert s == 429 and "requests:1/month" in msg and "id %d" % k["id"] in msg, msg
        assert "key" in msg.lower(), msg
        k2 = env.key("namer-key2", user=u["id"])
        s, _, j = env.post(k2["key"], body_of("gpt-4o-mini", "n", max_tokens=100))
        msg = error_of(j)["message"]
        assert s == 429 and "tokens:50/day" in msg and "user" in msg, msg
        u2 = env.user("broke", balance="0.000000001")
        k3 = env.key("broke-key", user=u2["id"])
        s, _, j = env.post(k3["key"], body)
        msg = error_of(j)["message"]
        assert s == 429 and "balance" in msg and "id %d" % u2["id"] in msg, msg
        assert "0.000000001" in msg, msg


def test_limit_added_while_a_request_is_in_flight_keeps_the_settled_usage():
    # A limit added with key update while a request is in flight starts from the day's
    # settled usage; when that request then fails (its reservation is released), the new
    # limit must still hold the usage settled before. Fails if the release takes the
    # in-flight request's estimate off a counter that never held it.
    with Env() as env:
        k = env.key("racing")
        kid = str(k["id"])
        first = body_of("gpt-4o-mini", "x" * 400, max_tokens=10)
        s, _, j = env.post(k["key"], first)
        assert s == 200, j
        settled = j["usage"]["prompt_tokens"] + j["usage"]["completion_tokens"]
        env.mock_post("/__mock/behave", {"fail": "reset", "times": 1})
        env.mock_post("/__mock/hold")
        doomed = body_of("gpt-4o-mini", "y" * 2000, max_tokens=10)
        ts, res = hammer(lambda i: env.post(k["key"], doomed), 1)
        wait_for(lambda: env.mock.stats()["held"] == 1, what="the request to be in flight")
        env.cli_json("key", "update", kid, "--limit", "tokens:1000/day")
        env.mock_post("/__mock/release")
        join_all(ts)
        assert res[0][0] == 502, res
        s, _, us = env.get(k["key"], "/v1/usage")
        lim = us["key"]["limits"][0]
        assert lim["used"] == settled, (lim, settled)
        assert us["key"]["spend"]["day"]["tokens"] == settled


def test_huge_max_tokens_is_refused_not_overflowed():
    # max_tokens is any non-negative JSON integer; the estimate's token count must not
    # overflow (a crash, or a negative estimate that fits any tokens limit). Fails if the
    # daemon dies or admits the request past a tokens limit.
    with Env() as env:
        k = env.key("greedy", limits=["tokens:100/day"])["key"]
        s, _, j = env.post(k, body_of("gpt-4o-mini", "hi", max_tokens=2 ** 63 - 1))
        assert s == 429 and error_of(j)["code"] == "request_too_large", (s, j)
        assert env.gw.proc.alive()
        assert env.mock.stats()["chat"] == 0


if __name__ == "__main__":
    run_tests(globals())
