"""System test of the audit read side over the control socket: fastgate-cli logs tail
(filters, -f live, Ctrl-C), logs export (CSV read back with the csv module, JSON lines,
--fields, --since/--until, a closed pipe), logs show, the cache and reasoning token
columns (from the mock's usage details, plain and streamed), metrics (totals, series,
breakdown, no database), and a follower that never reads: it gets a dropped count while the
daemon's memory stays bounded.

Each test makes its own requests with its own key (or its own paths) and filters on
them, so the tests do not depend on each other's traffic."""

import csv
import datetime
import http.client
import io
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import CLI, Gateway, Mock, free_port, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

ROUTES = """routes:
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: %(m)s/v1/chat/completions }
  - name: echo
    match: { path: /echo/** }
    upstream: { url: %(m)s }
    strip_prefix: /echo
  - name: dead
    match: { path: /dead/** }
    upstream: { url: http://127.0.0.1:%(dead)d }
    timeout: 5
"""

# DESIGN.md's columns, in its order; then the upstream retries, every attempt and the rest
# of the normalised usage (DESIGN.md, Providers)
DESIGN_COLUMNS = ["request_id", "started_at", "key_id", "key_name", "client_ip", "method",
                  "path", "route", "upstream", "status", "latency_ms", "ttfb_ms", "is_stream",
                  "chunks", "bytes_in", "bytes_out", "model", "prompt_tokens",
                  "completion_tokens", "error"]
CSV_COLUMNS = DESIGN_COLUMNS + ["retries", "attempts", "cached_tokens", "cache_write_tokens",
                                "reasoning_tokens", "upstream_request_id", "user_id", "cost_usd",
                                "price_version", "estimated"]
# what a pool with retries records: upstream=outcome:ms for each attempt, joined by ';'
ATTEMPTS = "http://10.0.0.5:8000=connect:3;http://10.0.0.6:8000=ok:120"

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Ctx:
    pass


def setup():
    c = Ctx()
    c.dir = tmpdir("fg-logs-")
    c.mock = Mock(c.dir)
    try:
        c.gw = Gateway(c.dir, ROUTES % {"m": c.mock.url, "dead": free_port()})
    except BaseException:
        c.mock.stop()
        raise
    return c


def teardown(c):
    try:
        assert c.gw.stop() == 0
        c.mock.stop()
    finally:
        rmtree(c.dir)


# --- helpers ---------------------------------------------------------------------------

def cli(c, *args, timeout=60):
    return c.gw.cli(*args, timeout=timeout)


def cli_ok(c, *args):
    rc, out, err = cli(c, *args)
    assert rc == 0, (args, rc, out, err)
    return out


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def new_key(c, name):
    return c.gw.create_key(name)


def chat(c, key, model="demo-model", stream=False):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    st, hdrs, data = c.gw.request("POST", "/v1/chat/completions", body, {"X-API-Key": key})
    assert st == 200, (st, data)
    return hdrs["x-request-id"]


def get(c, path, key=None, want=200):
    st, hdrs, data = c.gw.request("GET", path, None, {"X-API-Key": key} if key else {})
    assert st == want, (path, st, data)
    return hdrs["x-request-id"]


def iso(t):
    """Unix seconds as ISO 8601 UTC with milliseconds, rounded down."""
    d = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (d.microsecond // 1000)


def export_rows(c, *args):
    """logs export --format csv as a list of dicts (header checked)."""
    out = cli_ok(c, "logs", "export", "--format", "csv", *args)
    rows = list(csv.reader(io.StringIO(out, newline="")))
    assert rows, out
    header = rows[0]
    return header, [dict(zip(header, r)) for r in rows[1:]]


def wait_exported(c, ids, *args):
    """Export reads the database: wait (bounded) until the writer has committed ids."""
    want = set(ids)

    def have():
        _, rows = export_rows(c, *args)
        got = {r["request_id"] for r in rows}
        return rows if want <= got else None
    return wait_for(have, timeout=15, interval=0.1, what="rows to reach the audit database")


class LineReader:
    """Lines from a child's stdout, read with a deadline (no thread, no blocking read)."""

    def __init__(self, p):
        self.p = p
        self.buf = b""
        self.lines = []

    def read_line(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.lines:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no line from %s within %.1fs (got %r)" %
                                     (self.p.args, timeout, self.buf))
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if not r:
                continue
            d = os.read(self.p.stdout.fileno(), 65536)
            if not d:
                raise AssertionError("stdout closed (exit %r): %r" % (self.p.poll(), self.buf))
            self.buf += d
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                self.lines.append(line.decode())
        return self.lines.pop(0)


def start_cli(c, *args):
    return subprocess.Popen([CLI, "--socket", c.gw.sock] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def stop_cli(p, sig=signal.SIGINT):
    """Signal a CLI we started and wait (bounded) for it: its exit code and stderr."""
    if p.poll() is None:
        p.send_signal(sig)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
        raise AssertionError("fastgate-cli did not exit within 10s of signal %d" % sig)
    err = p.stderr.read().decode()
    p.stdout.close()
    p.stderr.close()
    return p.returncode, err


class SockLines:
    """Lines from a socket, each read with its own deadline; a timeout loses nothing."""

    def __init__(self, s):
        self.s = s
        self.buf = b""

    def readline(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no line within %.1fs" % timeout)
            self.s.settimeout(left)
            d = self.s.recv(1 << 20)
            if not d:
                return b""
            self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


# --- logs tail ---------------------------------------------------------------------------

def test_tail_prints_the_last_requests_oldest_first(c):
    k = new_key(c, "tail-alice")
    ids = [chat(c, k["key"]) for _ in range(4)]
    out = cli_ok(c, "logs", "tail", "-n", "3", "--key", str(k["id"]))
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert [re.search(r"id=(\S+)$", ln).group(1) for ln in lines] == ids[1:], out
    line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z 200 POST /v1/chat/completions "
                      r"route=chat key=tail-alice [\d.]+ms ttfb=[\d.]+ms model=demo-model "
                      r"tokens=\d+/\d+ id=\S+$")
    for ln in lines:
        assert line.match(ln), ln
    # default: ten lines
    ids += [chat(c, k["key"]) for _ in range(8)]
    out = cli_ok(c, "logs", "tail", "--key", str(k["id"]))
    assert len(out.splitlines()) == 10, out
    # --json: one full record per line, retries and attempts included
    recs = json_lines(cli_ok(c, "--json", "logs", "tail", "-n", "2", "--key", str(k["id"])))
    assert [r["request_id"] for r in recs] == ids[-2:], recs
    assert recs[0]["key_name"] == "tail-alice" and recs[0]["route"] == "chat", recs
    assert "retries" in recs[0] and "attempts" in recs[0], recs
    assert ISO_MS.match(recs[0]["started_at"]), recs


def test_tail_filters(c):
    a, b = new_key(c, "filter-a"), new_key(c, "filter-b")
    plain = chat(c, a["key"])
    streamed = chat(c, a["key"], stream=True)
    echo = get(c, "/echo/filters-%d" % os.getpid(), b["key"])
    missing = get(c, "/echo/filters-nokey-%d" % os.getpid(), None, want=401)

    def ids(*args):
        return [r["request_id"] for r in
                json_lines(cli_ok(c, "--json", "logs", "tail", "-n", "50", *args))]

    assert ids("--key", str(a["id"])) == [plain, streamed]
    assert ids("--key", str(b["id"])) == [echo]
    assert ids("--key", str(a["id"]), "--stream") == [streamed]
    assert ids("--key", str(a["id"]), "--no-stream") == [plain]
    assert ids("--key", str(b["id"]), "--route", "echo") == [echo]
    assert ids("--key", str(b["id"]), "--route", "chat") == []
    assert missing in ids("--key", "0")
    assert missing in ids("--status", "401") and missing in ids("--status", "4xx")
    assert plain not in ids("--status", "4xx") and plain in ids("--status", "2xx")
    # filters are checked, not ignored
    rc, _, err = cli(c, "logs", "tail", "--status", "abc")
    assert rc == 1 and "status" in err, (rc, err)
    rc, _, err = cli(c, "logs", "tail", "--stream", "--no-stream")
    assert rc == 2 and "cannot be used together" in err, (rc, err)


def test_tail_follow_prints_requests_made_after_it_started(c):
    k = new_key(c, "follower")
    first = chat(c, k["key"])
    p = start_cli(c, "logs", "tail", "-f", "-n", "1", "--key", str(k["id"]))
    try:
        r = LineReader(p)
        # The backlog line arrives when the follower is registered.
        assert r.read_line(15).endswith("id=" + first)
        later = chat(c, k["key"], stream=True)
        line = r.read_line(10)
        assert line.endswith("id=" + later) and " stream chunks=" in line, line
        other = new_key(c, "not-followed")
        chat(c, other["key"])             # filtered out
        third = get(c, "/echo/follow-%d" % os.getpid(), k["key"])
        assert r.read_line(10).endswith("id=" + third)
        # Quiet for longer than nothing: the CLI's 10 s socket timeout is off with -f.
        time.sleep(1)
        assert p.poll() is None
    finally:
        rc, err = stop_cli(p, signal.SIGINT)
    assert rc == 0, (rc, err)
    assert err == "", err


def test_tail_follow_json_and_sigterm(c):
    k = new_key(c, "follow-json")
    chat(c, k["key"])
    p = start_cli(c, "--json", "logs", "tail", "-f", "-n", "1", "--key", str(k["id"]))
    try:
        r = LineReader(p)
        json.loads(r.read_line(15))
        rid = chat(c, k["key"])
        assert json.loads(r.read_line(10))["request_id"] == rid
    finally:
        rc, err = stop_cli(p, signal.SIGTERM)
    assert rc == 0 and err == "", (rc, err)


# --- logs export -------------------------------------------------------------------------

def insert_row(c, rid, key, path, model, attempts=None):
    """Write one audit row straight into the database, as the writer would. Traffic cannot
    put a newline into any field (key names refuse control characters, the proxy keeps an
    escaped model name as written), nor record attempts yet, but the reading side must still
    carry them through."""
    import sqlite3
    db = sqlite3.connect(os.path.join(c.dir, "audit.db"), timeout=10)
    try:
        db.execute("INSERT INTO audit (request_id, started_at, key_id, key_name, client_ip, "
                   "method, path, route, upstream, status, latency_ms, ttfb_ms, is_stream, "
                   "chunks, bytes_in, bytes_out, model, prompt_tokens, completion_tokens, "
                   "error, retries, attempts) VALUES (?, ?, ?, ?, '127.0.0.1', 'POST', ?, "
                   "'chat', NULL, 200, 1.5, NULL, 0, 1, 10, 20, ?, 3, 4, NULL, 2, ?)",
                   (rid, time.time(), key["id"], key["name"], path, model, attempts))
        db.commit()
    finally:
        db.close()


def test_export_csv_round_trips_through_the_csv_module(c):
    k = new_key(c, "export, \"csv\"")
    odd_model = "model, with a comma"
    made = [chat(c, k["key"]), chat(c, k["key"], model=odd_model),
            chat(c, k["key"], stream=True),
            get(c, "/echo/q%22uote,comma", k["key"])]
    direct = "direct-%d" % os.getpid()
    odd_path, odd_model2 = '/v1/"odd",path\nline two', 'm,"x"\r\ny'
    rows = wait_exported(c, made, "--key", str(k["id"]))
    insert_row(c, direct, k, odd_path, odd_model2, ATTEMPTS)
    made.append(direct)
    rows = wait_exported(c, made, "--key", str(k["id"]))
    header, _ = export_rows(c, "--key", str(k["id"]))
    assert header == CSV_COLUMNS, header
    assert [r["request_id"] for r in rows] == made, rows     # one row each, in order
    by_id = {r["request_id"]: r for r in rows}
    assert by_id[made[1]]["model"] == odd_model, by_id[made[1]]
    assert by_id[made[3]]["path"] == "/echo/q%22uote,comma", by_id[made[3]]
    assert by_id[direct]["path"] == odd_path and by_id[direct]["model"] == odd_model2, \
        by_id[direct]
    assert by_id[direct]["ttfb_ms"] == "" and by_id[direct]["error"] == "", by_id[direct]
    assert by_id[direct]["retries"] == "2" and by_id[direct]["attempts"] == ATTEMPTS, by_id[direct]
    for r in rows:
        assert r["key_name"] == 'export, "csv"' and r["key_id"] == str(k["id"]), r
        assert ISO_MS.match(r["started_at"]) and r["status"] == "200", r
    assert by_id[made[2]]["is_stream"] == "1" and by_id[made[0]]["is_stream"] == "0"
    # RFC 4180: CRLF line ends, quotes doubled, the newline kept inside its quoted field
    rc, out, _ = cli(c, "logs", "export", "--format", "csv", "--key", str(k["id"]))
    assert out.endswith("\r\n") and '"/v1/""odd"",path\nline two"' in out, out
    # ';' and '=' need no quotes: the attempts as written, then the unknown token counts, no
    # upstream id, no user, cost or price version, not estimated
    assert out.endswith(",2,%s,,,,,,,,0\r\n" % ATTEMPTS), out[-200:]
    # the same row as JSON, only the fields asked for
    rec = json_lines(cli_ok(c, "logs", "export", "--format", "jsonl", "--key", str(k["id"]),
                            "--fields", "request_id,path,model,retries,attempts"))[-1]
    assert rec == {"request_id": direct, "path": odd_path, "model": odd_model2, "retries": 2,
                   "attempts": ATTEMPTS}, rec
    shown = json.loads(cli_ok(c, "--json", "logs", "show", direct))
    assert shown["path"] == odd_path and shown["attempts"] == ATTEMPTS, shown
    out = cli_ok(c, "logs", "show", direct)
    assert re.search(r"^retries:\s+2$", out, re.M), out
    assert re.search(r"^attempts:\s+%s$" % re.escape(ATTEMPTS), out, re.M), out
    line = cli_ok(c, "logs", "tail", "-n", "1", "--key", str(k["id"]))
    assert line.count("\n") == 1 and "id=" + direct in line, line      # one line per row


def test_export_jsonl_and_fields(c):
    k = new_key(c, "export-jsonl")
    made = [chat(c, k["key"]), get(c, "/echo/jsonl", k["key"])]
    wait_exported(c, made, "--key", str(k["id"]))
    recs = json_lines(cli_ok(c, "logs", "export", "--format", "jsonl", "--key", str(k["id"])))
    assert [r["request_id"] for r in recs] == made, recs
    assert list(recs[0].keys()) == CSV_COLUMNS, list(recs[0].keys())
    assert recs[1]["path"] == "/echo/jsonl" and recs[1]["route"] == "echo"
    recs = json_lines(cli_ok(c, "logs", "export", "--format", "jsonl", "--key", str(k["id"]),
                             "--fields", "request_id,status,retries"))
    assert recs == [{"request_id": i, "status": 200, "retries": 0} for i in made], recs
    header, rows = export_rows(c, "--key", str(k["id"]), "--fields", "path, status")
    assert header == ["path", "status"] and rows[1] == {"path": "/echo/jsonl", "status": "200"}
    # the CLI knows the columns itself: a usage error, nothing sent (issue 20)
    rc, _, err = cli(c, "logs", "export", "--format", "csv", "--fields", "path,nope")
    assert rc == 2 and "nope" in err, (rc, err)
    rc, _, err = cli(c, "logs", "export", "--format", "xml")
    assert rc == 2 and "csv" in err, (rc, err)
    rc, _, err = cli(c, "logs", "export")
    assert rc == 2 and "--format" in err, (rc, err)


def test_export_since_and_until(c):
    k = new_key(c, "export-window")
    before = [chat(c, k["key"]) for _ in range(2)]
    time.sleep(0.05)
    mid = time.time()
    time.sleep(0.05)
    after = [chat(c, k["key"]) for _ in range(2)]
    key = ("--key", str(k["id"]))
    wait_exported(c, before + after, *key)

    def ids(*args):
        return [r["request_id"] for r in export_rows(c, *key, *args)[1]]

    assert ids("--since", iso(mid)) == after
    assert ids("--until", iso(mid)) == before
    assert ids("--since", iso(mid - 3600), "--until", iso(mid)) == before
    assert ids("--since", "1h") == before + after
    assert ids("--since", "2020-01-01") == before + after
    assert ids("--until", "2020-01-01") == []
    assert ids("--since", str(int(mid) + 3600)) == []      # unix seconds
    assert ids("--since", "10m", "--until", "now") == before + after
    for bad in ("yesterday", "2026-13-01", "2026-11-23T25:00Z", "5x", "-1h"):
        rc, _, err = cli(c, "logs", "export", "--format", "csv", "--since", bad)
        assert rc == 2 and "cannot read the time" in err, (bad, rc, err)


def test_export_into_a_closed_pipe_stops_quietly(c):
    # Enough rows that the CLI is still writing when head has gone.
    conn = http.client.HTTPConnection("127.0.0.1", c.gw.port, timeout=10)
    pad = "p" * 1000
    for i in range(200):
        conn.request("GET", "/pipe/%s/%d" % (pad, i))
        conn.getresponse().read()
    conn.close()
    for fmt in ("csv", "jsonl"):
        p = subprocess.run(["bash", "-c", 'set -o pipefail; "$0" --socket "$1" logs export '
                            '--format "$2" | head -1', CLI, c.gw.sock, fmt],
                           capture_output=True, timeout=60)
        assert p.returncode == 0, (fmt, p.returncode, p.stderr)
        assert p.stderr == b"", p.stderr
        assert len(p.stdout.splitlines()) == 1, p.stdout[:200]
    # The daemon noticed the hang-up and still answers.
    rc, out, _ = cli(c, "logs", "tail", "-n", "1")
    assert rc == 0 and len(out.splitlines()) == 1


# --- logs show ---------------------------------------------------------------------------

def test_show_prints_one_record_in_full(c):
    k = new_key(c, "show-me")
    rid = chat(c, k["key"], stream=True)
    rec = json.loads(cli_ok(c, "--json", "logs", "show", rid))
    assert rec["request_id"] == rid and rec["key_name"] == "show-me" and rec["is_stream"]
    assert set(CSV_COLUMNS + ["billed", "unpriced", "request_body", "response_body"]) == \
        set(rec.keys()), rec.keys()
    out = cli_ok(c, "logs", "show", rid)
    assert re.search(r"^request id:\s+%s$" % rid, out, re.M), out
    assert re.search(r"^stream:\s+yes$", out, re.M) and re.search(r"^retries:\s+0$", out, re.M)
    assert re.search(r"^attempts:\s+\S+$", out, re.M), out
    # the spend columns: the demo model has no price, so the request is charged (its
    # tokens count against limits) with an empty cost, never $0
    assert (rec["user_id"], rec["cost_usd"], rec["price_version"], rec["estimated"],
            rec["billed"], rec["unpriced"]) == (None, None, None, False, True, True), rec
    for label, value in (("user", "none"), ("cost", "none (unpriced model)"),
                         ("price version", "-"), ("billed", "yes"), ("tokens estimated", "no")):
        assert re.search(r"^%s:\s+%s$" % (label, re.escape(value)), out, re.M), (label, out)
    # still found once the writer has committed it
    wait_exported(c, [rid], "--key", str(k["id"]))
    assert json.loads(cli_ok(c, "--json", "logs", "show", rid))["request_id"] == rid
    rc, _, err = cli(c, "logs", "show", "no-such-request")
    assert rc == 1 and "no request with id no-such-request" in err, (rc, err)
    rc, _, err = cli(c, "logs", "show")
    assert rc == 2, (rc, err)


# --- the normalised usage: cached and reasoning tokens ------------------------------------

def sse_usage(data):
    """The usage objects of an SSE answer's chunks, in order."""
    got = []
    for line in data.decode().split("\n"):
        if line.startswith("data: {"):
            u = json.loads(line[6:]).get("usage")
            if u is not None:
                got.append(u)
    return got


def test_cached_and_reasoning_tokens_reach_the_audit_export_and_show(c):
    """The mock reports OpenAI's prompt_tokens_details.cached_tokens (and a reasoning count
    of 0) when asked with X-Mock-Cached-Tokens: the row has them, for a plain answer, a
    stream whose client asked for usage and one whose usage chunk the gateway asked for and
    strips; an answer without the details objects leaves them unknown (empty, null). No
    OpenAI field carries cache writes: unknown throughout."""
    import sqlite3
    k = new_key(c, "cached-tokens")
    hdr = {"X-API-Key": k["key"], "X-Mock-Cached-Tokens": "1920"}
    body = {"model": "demo-model", "messages": [{"role": "user", "content": "cache me"}]}
    made = {}

    st, hdrs, data = c.gw.request("POST", "/v1/chat/completions", body, hdr)
    assert st == 200, (st, data)
    usage = json.loads(data)["usage"]           # the client sees the upstream's usage as is
    assert usage["prompt_tokens_details"]["cached_tokens"] == 1920, usage
    made["plain"] = hdrs["x-request-id"]

    st, hdrs, data = c.gw.request("POST", "/v1/chat/completions",
                                  dict(body, stream=True,
                                       stream_options={"include_usage": True}), hdr)
    assert st == 200, (st, data)
    got = sse_usage(data)
    assert len(got) == 1 and got[0]["prompt_tokens_details"] == \
        {"cached_tokens": 1920, "audio_tokens": 0}, got
    made["stream"] = hdrs["x-request-id"]

    st, hdrs, data = c.gw.request("POST", "/v1/chat/completions", dict(body, stream=True), hdr)
    assert st == 200, (st, data)
    assert sse_usage(data) == [] and b"data: [DONE]" in data, data    # stripped again
    made["injected"] = hdrs["x-request-id"]

    st, hdrs, data = c.gw.request("POST", "/v1/chat/completions", body, {"X-API-Key": k["key"]})
    assert st == 200 and "prompt_tokens_details" not in json.loads(data)["usage"], data
    made["no-details"] = hdrs["x-request-id"]

    order = [made[n] for n in ("plain", "stream", "injected", "no-details")]
    rows = wait_exported(c, order, "--key", str(k["id"]))
    by_id = {r["request_id"]: r for r in rows}
    prompt = by_id[made["plain"]]["prompt_tokens"]
    assert prompt and int(prompt) > 0, by_id[made["plain"]]
    for name in ("plain", "stream", "injected"):
        r = by_id[made[name]]
        assert (r["cached_tokens"], r["cache_write_tokens"], r["reasoning_tokens"]) == \
            ("1920", "", "0"), (name, r)
        assert r["prompt_tokens"] == prompt and r["is_stream"] == ("0" if name == "plain"
                                                                    else "1"), (name, r)
    r = by_id[made["no-details"]]
    assert (r["cached_tokens"], r["cache_write_tokens"], r["reasoning_tokens"]) == ("", "", ""), r
    assert r["prompt_tokens"] == prompt, r

    # the stored row: INTEGER columns, NULL when unknown
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(c.dir, "audit.db"), uri=True)
    try:
        for name, want in (("plain", (1920, None, 0)), ("stream", (1920, None, 0)),
                           ("injected", (1920, None, 0)), ("no-details", (None, None, None))):
            got = db.execute("SELECT cached_tokens, cache_write_tokens, reasoning_tokens FROM "
                             "audit WHERE request_id = ?", (made[name],)).fetchone()
            assert got == want, (name, got)
    finally:
        db.close()

    recs = json_lines(cli_ok(c, "logs", "export", "--format", "jsonl", "--key", str(k["id"])))
    assert [r["request_id"] for r in recs] == order, recs
    assert list(recs[0].keys()) == CSV_COLUMNS, list(recs[0].keys())
    for r in recs[:3]:
        assert (r["cached_tokens"], r["cache_write_tokens"], r["reasoning_tokens"]) == \
            (1920, None, 0), r
    assert (recs[3]["cached_tokens"], recs[3]["reasoning_tokens"]) == (None, None), recs[3]
    recs = json_lines(cli_ok(c, "logs", "export", "--format", "jsonl", "--key", str(k["id"]),
                             "--fields", "cached_tokens,reasoning_tokens,is_stream"))
    assert recs[1] == {"cached_tokens": 1920, "reasoning_tokens": 0, "is_stream": True}, recs
    header, rows = export_rows(c, "--key", str(k["id"]), "--fields",
                               "request_id,cache_write_tokens,cached_tokens")
    assert header == ["request_id", "cache_write_tokens", "cached_tokens"], header
    assert rows[2] == {"request_id": made["injected"], "cache_write_tokens": "",
                       "cached_tokens": "1920"}, rows

    for name in ("plain", "injected"):
        shown = json.loads(cli_ok(c, "--json", "logs", "show", made[name]))
        assert (shown["cached_tokens"], shown["cache_write_tokens"],
                shown["reasoning_tokens"]) == (1920, None, 0), shown
        out = cli_ok(c, "logs", "show", made[name])
        assert re.search(r"^cached tokens:\s+1920$", out, re.M), out
        assert re.search(r"^cache write tokens:\s+unknown$", out, re.M), out
        assert re.search(r"^reasoning tokens:\s+0$", out, re.M), out
    out = cli_ok(c, "logs", "show", made["no-details"])
    assert re.search(r"^cached tokens:\s+unknown$", out, re.M), out
    assert re.search(r"^reasoning tokens:\s+unknown$", out, re.M), out
    # the mock refuses a bad value, as its other headers
    st, _, data = c.gw.request("POST", "/v1/chat/completions", body,
                               {"X-API-Key": k["key"], "X-Mock-Cached-Tokens": "-1"})
    assert st == 400 and b"X-Mock-Cached-Tokens" in data, (st, data)


# --- metrics -----------------------------------------------------------------------------

def test_metrics_totals_match_the_requests_made(c):
    time.sleep(0.05)
    since = iso(time.time())
    time.sleep(0.05)
    k = new_key(c, "metrics")
    made = [chat(c, k["key"]) for _ in range(4)]
    made.append(chat(c, k["key"], stream=True))
    made.append(get(c, "/metrics-nokey", None, want=401))
    made.append(get(c, "/dead/x", k["key"], want=502))

    def settled():
        m = json.loads(cli_ok(c, "--json", "metrics", "--since", since))
        return m if m["requests"] == len(made) else None
    m = wait_for(settled, timeout=15, interval=0.1, what="metrics to count every request")
    assert m["errors"] == 1, m
    # the 401 was the gateway's own refusal: not in the success rate (issue 20)
    assert m["refused"] == 1, m
    assert abs(m["success_rate"] - 5 / 6) < 1e-5, m
    assert m["status"] == {"1xx": 0, "2xx": 5, "3xx": 0, "4xx": 1, "5xx": 1}, m
    assert m["streams"] == 1 and m["active_keys"] == 1 and m["active_routes"] == 2, m
    assert m["requests_last_hour"] >= len(made), m
    lat = m["latency_ms"]
    assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"], lat
    assert m["ttfb_ms"]["p50"] is not None, m
    assert m["database"] is True

    bd = json.loads(cli_ok(c, "--json", "metrics", "--since", since, "--by", "route"))["breakdown"]
    rows = {r["route"]: r for r in bd["rows"]}
    assert rows["chat"]["requests"] == 5 and rows["chat"]["errors"] == 0, bd
    assert rows["dead"]["requests"] == 1 and rows["dead"]["errors"] == 1, bd
    assert rows[None]["requests"] == 1 and rows[None]["refused"] == 1, bd
    assert rows[None]["success_rate"] is None and rows["chat"]["success_rate"] == 1, bd
    bd = json.loads(cli_ok(c, "--json", "metrics", "--since", since, "--by", "key"))["breakdown"]
    assert {(r["key_id"], r["requests"]) for r in bd["rows"]} == {(k["id"], 6), (None, 1)}, bd

    s = json.loads(cli_ok(c, "--json", "metrics", "--hourly", "--hours", "3"))["hourly"]
    assert len(s) == 3 and s[-1]["requests"] >= len(made), s
    assert s[-1]["start"] % 3600 == 0 and s[-1]["start"] <= time.time() < s[-1]["start"] + 3600
    d = json.loads(cli_ok(c, "--json", "metrics", "--daily"))["daily"]
    assert len(d) == 7 and d[-1]["requests"] >= len(made) and d[-1]["start"] % 86400 == 0, d

    out = cli_ok(c, "metrics", "--since", since)
    assert re.search(r"^requests:\s+7\b", out, re.M), out
    assert re.search(r"^errors:\s+1\b", out, re.M) and "success rate:" in out, out
    assert re.search(r"^latency:\s+p50 [\d.]+ ms, p95", out, re.M), out
    out = cli_ok(c, "metrics", "--since", since, "--by", "route", "--hourly")
    assert re.search(r"^ROUTE\s+REQUESTS\s+ERRORS", out, re.M), out
    assert re.search(r"^HOUR \(UTC\)\s+REQUESTS", out, re.M), out
    rc, _, err = cli(c, "metrics", "--by", "color")
    assert rc == 2 and "route" in err, (rc, err)
    rc, _, err = cli(c, "metrics", "--hourly", "--daily")
    assert rc == 2 and "--hourly (or --hours) or --daily" in err, (rc, err)


V4_SCHEMA = """
CREATE TABLE audit (request_id TEXT NOT NULL, started_at REAL NOT NULL, key_id INTEGER,
  key_name TEXT, client_ip TEXT, method TEXT, path TEXT, route TEXT, upstream TEXT,
  status INTEGER NOT NULL, latency_ms REAL, ttfb_ms REAL, is_stream INTEGER NOT NULL,
  chunks INTEGER, bytes_in INTEGER, bytes_out INTEGER, model TEXT, prompt_tokens INTEGER,
  completion_tokens INTEGER, error TEXT, retries INTEGER NOT NULL DEFAULT 0,
  request_body TEXT, response_body TEXT);
CREATE TABLE audit_untimed_ids (until REAL NOT NULL);
CREATE INDEX audit_started_at ON audit(started_at);
"""


def test_a_version_4_database_gains_attempts_at_start_and_keeps_its_rows(c):
    """The audit database of the release before attempts: the daemon adds the column at
    start, the old rows export as before with an empty attempts, and new rows follow."""
    import sqlite3
    d = tmpdir("fg-logs-v4-")
    old_id, old_t = "98a0cc62000000000001", time.time() - 60
    db = sqlite3.connect(os.path.join(d, "audit.db"))
    try:
        db.executescript(V4_SCHEMA)
        db.execute("INSERT INTO audit_untimed_ids VALUES (?)", (old_t,))
        db.execute("INSERT INTO audit (rowid, request_id, started_at, key_id, key_name, "
                   "client_ip, method, path, route, upstream, status, latency_ms, is_stream, "
                   "chunks, bytes_in, bytes_out, error, retries, request_body) VALUES (7, ?, ?, "
                   "NULL, NULL, '127.0.0.1', 'POST', '/v1/chat/completions', 'chat', "
                   "'http://10.0.0.5:8000', 502, 30000.5, 0, 0, 10, 0, 'timeout', 2, '{}')",
                   (old_id, old_t))
        db.execute("PRAGMA user_version = 4")
        db.commit()
    finally:
        db.close()
    os.chmod(os.path.join(d, "audit.db"), 0o600)
    gw = Gateway(d, ROUTES % {"m": c.mock.url, "dead": free_port()})
    try:
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(d, "audit.db"), uri=True)
        try:
            # schema 10: the old rows stay in the row table (renamed), with their rowids
            assert db.execute("PRAGMA user_version").fetchone()[0] == 10
            assert db.execute("SELECT rowid, retries, request_body, attempts, cached_tokens, "
                              "cache_write_tokens, reasoning_tokens FROM audit_rows WHERE "
                              "request_id = ?", (old_id,)).fetchone() == \
                (7, 2, "{}", None, None, None, None)
        finally:
            db.close()
        st, hdrs, _ = gw.request("GET", "/echo/after-upgrade", None, {})
        assert st == 401, st
        new_id = hdrs["x-request-id"]

        def both():
            rc, out, err = gw.cli("logs", "export", "--format", "csv")
            assert rc == 0, (rc, out, err)
            rows = list(csv.reader(io.StringIO(out, newline="")))
            return rows if len(rows) == 3 else None
        rows = wait_for(both, timeout=15, interval=0.1, what="the new row in the database")
        assert rows[0] == CSV_COLUMNS, rows[0]
        old, new = (dict(zip(rows[0], r)) for r in rows[1:])
        assert old["request_id"] == old_id and new["request_id"] == new_id, rows
        assert (old["status"], old["error"], old["retries"], old["attempts"]) == \
            ("502", "timeout", "2", ""), old
        assert new["status"] == "401" and new["retries"] == "0", new
        shown = json.loads(gw.cli("--json", "logs", "show", old_id)[1])
        assert shown["retries"] == 2 and shown["attempts"] is None, shown
        assert shown["cached_tokens"] is None and shown["reasoning_tokens"] is None, shown
        assert shown["request_body"] == "{}", shown
    finally:
        try:
            assert gw.stop() == 0
        finally:
            rmtree(d)


def test_without_an_audit_database_everything_is_empty_not_an_error(c):
    d = tmpdir("fg-logs-nodb-")
    gw = Gateway(d, ROUTES % {"m": c.mock.url, "dead": free_port()})
    try:
        for f in os.listdir(d):
            if f.startswith("audit.db"):
                os.unlink(os.path.join(d, f))
        m = json.loads(gw.cli("--json", "metrics")[1])
        assert m["requests"] == 0 and m["database"] is False, m
        assert m["latency_ms"]["p50"] is None and m["success_rate"] is None, m
        rc, out, err = gw.cli("metrics", "--hourly", "--by", "model")
        assert rc == 0 and "no audit database yet" in out, (rc, out, err)
        rc, out, err = gw.cli("logs", "tail")
        assert rc == 0 and out == "", (rc, out, err)
        rc, out, err = gw.cli("logs", "export", "--format", "csv")
        assert rc == 0 and out == ",".join(CSV_COLUMNS) + "\r\n", (rc, out, err)
        rc, _, err = gw.cli("logs", "show", "whatever")
        assert rc == 1 and "no request" in err, (rc, err)
    finally:
        try:
            assert gw.stop() == 0
        finally:
            rmtree(d)


# --- a follower that never reads -----------------------------------------------------------

def test_a_follower_that_never_reads_gets_a_dropped_count_and_memory_stays_bounded(c):
    # Its own daemon: ASan's quarantine of freed memory (256 MB by default) would hide
    # what this measures, so it is off here.
    d = tmpdir("fg-logs-slow-")
    env = os.environ.copy()
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=99:quarantine_size_mb=0"
    gw = Gateway(d, ROUTES % {"m": c.mock.url, "dead": free_port()}, env=env)
    n, pad = 2500, "s" * 15000       # each event is ~15 kB: 37 MB a round if none were dropped
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(gw.sock)
        f = SockLines(s)
        assert json.loads(f.readline(10)).get("protocol") == 1
        s.sendall((json.dumps({"id": 7, "cmd": "logs.tail", "args": {
            "follow": True, "lines": 0, "key_id": 0, "status": 401}}) + "\n").encode())
        # Registered once a request made now comes back as an event (lines 0: no backlog).
        for _ in range(30):
            assert gw.request("GET", "/sentinel")[0] == 401
            try:
                msg = json.loads(f.readline(1))
                break
            except socket.timeout:
                continue
        else:
            raise AssertionError("the follower never saw a request")
        assert msg["event"]["path"] == "/sentinel", msg
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)

        def burst(base):
            for i in range(n):
                conn.request("GET", "/slow/%s/%d" % (pad, base + i))
                r = conn.getresponse()
                r.read()
                assert r.status == 401
            return rss_kb(gw.proc.pid)

        rss0 = rss_kb(gw.proc.pid)
        rss1 = burst(0)
        rss2 = burst(n)
        conn.close()
        # About 1 MiB queued for this follower plus a 4 MiB ring of recent records (and
        # allocator slack), reached in the first round; the second adds nothing.
        assert rss1 - rss0 < 40 * 1024, "first round grew RSS by %d kB" % (rss1 - rss0)
        assert rss2 - rss1 < 8 * 1024, "second round grew RSS by %d kB" % (rss2 - rss1)
        assert gw.cli("status")[0] == 0          # still serving the control socket

        # Now read: the events that fit, then {"dropped":N}; together, every request.
        events = dropped = 0
        deadline = time.monotonic() + 60
        while events + dropped < 2 * n and time.monotonic() < deadline:
            line = f.readline(30)
            assert line, "connection closed after %d events, %d dropped" % (events, dropped)
            msg = json.loads(line)
            assert msg["id"] == 7, msg
            ev = msg["event"]
            if "dropped" in ev and "request_id" not in ev:
                dropped += ev["dropped"]
            elif ev["path"] != "/sentinel":          # a late one from the loop above
                assert ev["path"].startswith("/slow/"), ev["path"][:40]
                events += 1
        assert dropped > 0 and events > 0, (events, dropped)
        assert events + dropped == 2 * n, (events, dropped)
        # and it is live again: the next request arrives as an event
        st, _, _ = gw.request("GET", "/slow/after")
        assert st == 401
        msg = json.loads(f.readline(30))
        while msg["event"].get("path") == "/sentinel":
            msg = json.loads(f.readline(30))
        assert msg["event"]["path"] == "/slow/after", msg
    finally:
        s.close()
        try:
            assert gw.stop() == 0
        finally:
            rmtree(d)


if __name__ == "__main__":
    run_tests(globals(), setup, teardown)
