"""System test of the spend side of the audit trail (issue 19) through fastgate-cli:
report (table, --json, --csv; by user, key and model; its window), logs export / tail /
show with --user and the spend columns, metrics --by user and its cost, the spend
counters a start counts from rows written behind the daemon, and the Prometheus token,
cost and unpriced families.

The daemon does not price requests yet, so the spend rows are written into its audit
database with sqlite3 while it is stopped, as an older build or an operator could; every
expected total below is worked out by hand from those rows."""

import csv
import io
import json
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import CLI, Gateway, Mock, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

ROUTES = """routes:
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: %(m)s/v1/chat/completions }
  - name: echo
    match: { path: /echo/** }
    upstream: { url: %(m)s }
    strip_prefix: /echo
"""

DAY = 86400
# a window of its own, two days in November 2026, far from the requests the tests make
T0 = 1795046400          # 2026-11-19T00:00:00Z
T1 = T0 + DAY            # 2026-11-20
NOV_1 = 1793491200
SINCE, UNTIL = "2026-11-19", "2026-11-21"

# (id, started_at, key_id, key_name, user_id, model, prompt, completion, cached, cost_nano,
#  price_version, billed, estimated, unpriced, status)
ROWS = [
    ("rep-01", T0 + 10, 11, "alice-1", 5, "gpt-4o", 1000, 200, 300, 123450, "p2026-11", 1, 0, 0, 200),
    ("rep-02", T0 + 20, 11, "alice-1", 5, "gpt-4o", 2000, 100, None, 1000000001, "p2026-11", 1, 1, 0, 200),
    ("rep-03", T0 + 30, 12, "alice-2", 5, "claude, \"q\"", 500, 50, 0, 999999999, "p2026-11", 1, 0, 0, 200),
    ("rep-04", T1 + 40, 13, "bob", 6, "gpt-4o", 10, 5, None, 7, "p2026-11", 1, 0, 0, 200),
    ("rep-05", T1 + 50, 13, "bob", 6, "mystery", 40, 2, None, None, None, 0, 0, 1, 200),
    ("rep-06", T1 + 60, 14, "service", None, "gpt-4o", 100, 10, None, 30, "p2026-11", 1, 0, 0, 200),
    ("rep-07", T1 + 70, None, None, None, None, None, None, None, None, None, 0, 0, 0, 401),
    ("rep-08", T1 + 80, 13, "bob", 6, "gpt-4o", None, None, None, None, None, 0, 0, 0, 502),
]
COLS = ("request_id, started_at, key_id, key_name, user_id, model, prompt_tokens, "
        "completion_tokens, cached_tokens, cost_nano, price_version, billed, estimated, "
        "unpriced, status")


class Ctx:
    pass


def setup():
    c = Ctx()
    c.dir = tmpdir("fg-report-")
    c.mock = Mock(c.dir)
    try:
        c.gw = Gateway(c.dir, ROUTES % {"m": c.mock.url})
        # the schema as the daemon made it, then the rows written behind its back
        assert c.gw.stop() == 0
        db = sqlite3.connect(os.path.join(c.dir, "audit.db"))
        try:
            db.executemany("INSERT INTO audit (%s, client_ip, method, path, route, latency_ms,"
                           " is_stream) VALUES (%s, '127.0.0.1', 'POST', '/v1/chat/completions',"
                           " 'chat', 12.5, 0)" % (COLS, ", ".join("?" * 15)), ROWS)
            db.commit()
        finally:
            db.close()
        c.gw.start()
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


def cli_ok(c, *args):
    rc, out, err = c.gw.cli(*args, timeout=60)
    assert rc == 0, (args, rc, out, err)
    return out


def report_json(c, *args):
    return json.loads(cli_ok(c, "--json", "report", "--since", SINCE, "--until", UNTIL, *args))


def tally(requests, prompt, completion, cached, cost, unpriced, estimated, billed):
    usd = "%d.%09d" % divmod(cost, 10 ** 9)
    return {"requests": requests, "prompt_tokens": prompt, "completion_tokens": completion,
            "cached_tokens": cached, "cost_usd": usd, "cost_nano": cost,
            "unpriced": unpriced, "estimated": estimated, "billed": billed}


# by hand from ROWS: cost 123450 + 1000000001 + 999999999 = 2000123450 for user 5
USER5 = tally(3, 3500, 350, 300, 2000123450, 0, 1, 3)
USER6 = tally(3, 50, 7, 0, 7, 1, 0, 1)
NO_USER = tally(2, 100, 10, 0, 30, 0, 0, 1)
TOTAL = tally(8, 3650, 367, 300, 2000123487, 1, 1, 5)


def test_a_start_counts_billed_rows_written_behind_the_daemon(c):
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(c.dir, "audit.db"), uri=True)
    try:
        spend = {(s, p, st): (n, tok, cost) for s, p, st, n, tok, cost in
                 db.execute("SELECT scope, period, start, requests, tokens, cost_nano FROM spend")}
        mark = db.execute("SELECT last_rowid FROM spend_mark").fetchone()[0]
        # rows inserted by hand (into the view) land in the row table, which the mark counts in
        top = db.execute("SELECT max(rowid) FROM audit_rows").fetchone()[0]
    finally:
        db.close()
    assert mark == top, (mark, top)
    # billed rows with a key: 01, 02 (key 11), 03 (key 12), 04 (key 13), 06 (key 14)
    assert spend[("k:11", "all", 0)] == (2, 3300, 1000123451), spend
    assert spend[("k:11", "day", T0)] == (2, 3300, 1000123451), spend
    assert spend[("k:11", "month", NOV_1)] == (2, 3300, 1000123451), spend
    assert spend[("u:5", "all", 0)] == (3, 3850, 2000123450), spend
    assert spend[("u:6", "day", T1)] == (1, 15, 7), spend
    assert spend[("k:14", "all", 0)] == (1, 110, 30), spend
    assert not any(s == "u:0" for s, _, _ in spend), spend          # 06 has no user
    assert not any(s.startswith("k:") and s not in ("k:11", "k:12", "k:13", "k:14")
                   for s, _, _ in spend), spend
    assert len(spend) == 4 * 3 + 2 * 3, sorted(spend)    # all, one day, one month each
    assert re.search(r"5 billed rows were not in the spend counters", c.gw.proc.stderr()), \
        c.gw.proc.stderr()[-2000:]


def test_report_by_user_json_is_exact(c):
    r = report_json(c)
    assert r["by"] == "user" and r["groups"] == 3 and r["truncated"] is False, r
    assert r["since"] == T0 and r["until"] == T0 + 2 * DAY, r
    rows = {row["user_id"]: {k: v for k, v in row.items() if k not in ("user_id", "user_name")}
            for row in r["rows"]}
    assert rows == {5: USER5, 6: USER6, None: NO_USER}, rows
    # names come from the key store: users 5 and 6 are not in it (yet)
    assert all(row["user_name"] is None for row in r["rows"]), r["rows"]
    assert [row["user_id"] for row in r["rows"]] == [5, None, 6], r["rows"]   # by cost
    assert r["total"] == TOTAL, r["total"]
    # once users 1..6 exist, 5 and 6 are named, in JSON and in the table
    for i in range(1, 7):
        cli_ok(c, "user", "create", "--name", "person-%d" % i)
    r = report_json(c)
    names = {row["user_id"]: row["user_name"] for row in r["rows"]}
    assert names == {5: "person-5", 6: "person-6", None: None}, names
    out = cli_ok(c, "report", "--since", SINCE, "--until", UNTIL)
    assert re.search(r"^5 \(person-5\)\s+3\s", out, re.M), out
    # the window: only the first day
    r = json.loads(cli_ok(c, "--json", "report", "--since", SINCE, "--until", "2026-11-20"))
    assert r["total"] == tally(3, 3500, 350, 300, 2000123450, 0, 1, 3), r["total"]


def test_report_by_key_and_model(c):
    r = report_json(c, "--by", "key")
    keys = {row["key_id"]: (row["key_name"], row["requests"], row["cost_usd"]) for row in r["rows"]}
    assert keys == {11: ("alice-1", 2, "1.000123451"), 12: ("alice-2", 1, "0.999999999"),
                    13: ("bob", 3, "0.000000007"), 14: ("service", 1, "0.000000030"),
                    None: (None, 1, "0.000000000")}, keys
    assert r["total"] == TOTAL
    r = report_json(c, "--by", "model")
    models = {row["model"]: (row["requests"], row["prompt_tokens"], row["cost_usd"],
                             row["unpriced"]) for row in r["rows"]}
    assert models == {"gpt-4o": (5, 3110, "1.000123488", 0),
                      "claude, \"q\"": (1, 500, "0.999999999", 0),
                      "mystery": (1, 40, "0.000000000", 1), None: (1, 0, "0.000000000", 0)}, \
        models


def test_report_table_and_csv(c):
    out = cli_ok(c, "report", "--since", SINCE, "--until", UNTIL)
    lines = out.splitlines()
    assert lines[0] == "window: 2026-11-19T00:00:00Z .. 2026-11-21T00:00:00Z (by user)", out
    assert re.match(r"^USER\s+REQUESTS\s+PROMPT\s+COMPLETION\s+CACHED\s+COST USD\s+UNPRICED"
                    r"\s+ESTIMATED\s+BILLED$", lines[1]), out
    # (named once a test before has created the users: the daemon is shared)
    assert re.match(r"^5( \(person-5\))?\s+3\s+3500\s+350\s+300\s+2\.000123450\s+0\s+1\s+3$",
                    lines[2]), out
    assert re.match(r"^\(no user\)\s+2\s+100\s+10\s+0\s+0\.000000030\s+0\s+0\s+1$", lines[3]), out
    assert re.match(r"^TOTAL\s+8\s+3650\s+367\s+300\s+2\.000123487\s+1\s+1\s+5$", lines[5]), out

    out = cli_ok(c, "report", "--since", SINCE, "--until", UNTIL, "--by", "model", "--csv")
    assert out.endswith("\r\n") and "\r\n" in out[:-2], repr(out)
    rows = list(csv.reader(io.StringIO(out, newline="")))
    assert rows[0] == ["model", "requests", "prompt_tokens", "completion_tokens",
                       "cached_tokens", "cost_usd", "unpriced", "estimated", "billed"], rows
    assert ["claude, \"q\"", "1", "500", "50", "0", "0.999999999", "0", "0", "1"] in rows, rows
    assert ["", "1", "0", "0", "0", "0.000000000", "0", "0", "0"] in rows, rows   # no model
    assert rows[-1] == ["total", "8", "3650", "367", "300", "2.000123487", "1", "1", "5"], rows
    assert '"claude, ""q"""' in out, out          # RFC 4180 quoting by the daemon
    out = cli_ok(c, "report", "--since", SINCE, "--until", UNTIL, "--by", "key", "--csv")
    rows = list(csv.reader(io.StringIO(out, newline="")))
    assert rows[0][:3] == ["key_id", "key_name", "requests"], rows
    assert ["11", "alice-1", "2", "3000", "300", "300", "1.000123451", "0", "1", "2"] in rows
    assert rows[-1][:3] == ["total", "", "8"], rows
    # --json with --csv: the daemon's result, the CSV inside it
    r = json.loads(cli_ok(c, "--json", "report", "--since", SINCE, "--until", UNTIL, "--csv"))
    assert r["format"] == "csv" and r["csv"].startswith("user_id,requests,"), r


def test_report_defaults_and_refusals(c):
    # default: this month so far, by user (the rows above are older)
    r = json.loads(cli_ok(c, "--json", "report"))
    now = time.time()
    t = time.gmtime(now)
    assert r["since"] == __import__("calendar").timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)), r
    assert r["until"] <= now + 1 and r["by"] == "user", r
    rc, _, err = c.gw.cli("report", "--by", "color")
    assert rc == 2 and "user,key,model" in err, (rc, err)
    rc, _, err = c.gw.cli("report", "--since", UNTIL, "--until", SINCE)
    assert rc == 1 and "before" in err, (rc, err)
    r = c.gw.ctl("report", {"format": "xml"})
    assert not r["ok"] and r["error"]["code"] == "bad_args", r
    r = c.gw.ctl("report", {"by": "route"})
    assert not r["ok"] and "'by'" in r["error"]["message"], r
    rc, out, _ = c.gw.cli("report", "--help")
    assert rc == 0 and "--csv" in out and "--by user|key|model" in out, out
    rc, out, _ = c.gw.cli("--help")
    assert rc == 0 and re.search(r"^  report \[--since T\]", out, re.M), out
    # completion: the command, its choices, and user ids asked of the daemon for --user
    for words, want in ((["report", "--by"], ["user", "key", "model"]),
                        (["logs", "export", "--user"], ["@user"]),
                        (["metrics", "--by"], ["route", "key", "user", "model", "upstream"])):
        p = subprocess.run([CLI, "--complete"] + words, capture_output=True, timeout=10)
        assert p.stdout.decode().split() == want, (words, p.stdout)
    p = subprocess.run([CLI, "--complete"], capture_output=True, timeout=10)
    assert "report" in p.stdout.decode().split(), p.stdout
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), "share", "fastgate-cli.bash")) as f:
        assert "@route | @key | @user | @upstream)" in f.read()


def export(c, *args):
    out = cli_ok(c, "logs", "export", "--format", "csv", "--since", SINCE, "--until", UNTIL,
                 *args)
    rows = list(csv.reader(io.StringIO(out, newline="")))
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def test_logs_export_tail_and_show_by_user_with_the_spend_columns(c):
    rows = export(c, "--user", "5")
    assert [r["request_id"] for r in rows] == ["rep-01", "rep-02", "rep-03"], rows
    assert [(r["user_id"], r["cost_usd"], r["price_version"], r["estimated"]) for r in rows] == [
        ("5", "0.000123450", "p2026-11", "0"), ("5", "1.000000001", "p2026-11", "1"),
        ("5", "0.999999999", "p2026-11", "0")], rows
    assert [r["request_id"] for r in export(c, "--user", "0")] == ["rep-06", "rep-07"]
    rows = export(c, "--user", "6", "--fields", "request_id,cost_usd,billed,unpriced")
    assert rows == [{"request_id": "rep-04", "cost_usd": "0.000000007", "billed": "1",
                     "unpriced": "0"},
                    {"request_id": "rep-05", "cost_usd": "", "billed": "0", "unpriced": "1"},
                    {"request_id": "rep-08", "cost_usd": "", "billed": "0", "unpriced": "0"}], rows
    assert [r["request_id"] for r in export(c, "--user", "6", "--key", "13", "--status",
                                            "2xx")] == ["rep-04", "rep-05"]
    recs = [json.loads(line) for line in cli_ok(
        c, "logs", "export", "--format", "jsonl", "--since", SINCE, "--user", "5").splitlines()]
    assert [(r["user_id"], r["cost_usd"], r["estimated"]) for r in recs] == [
        (5, "0.000123450", False), (5, "1.000000001", True), (5, "0.999999999", False)], recs

    recs = [json.loads(line) for line in
            cli_ok(c, "--json", "logs", "tail", "-n", "50", "--user", "6").splitlines()]
    assert [r["request_id"] for r in recs] == ["rep-04", "rep-05", "rep-08"], recs
    assert recs[1]["unpriced"] is True and recs[1]["cost_usd"] is None, recs[1]
    out = cli_ok(c, "logs", "tail", "-n", "50", "--user", "5")
    assert [re.search(r"id=(\S+)$", ln).group(1) for ln in out.splitlines()] == \
        ["rep-01", "rep-02", "rep-03"], out

    out = cli_ok(c, "logs", "show", "rep-02")
    for label, value in (("user", "5"), ("cost", "1.000000001 USD"),
                         ("price version", "p2026-11"), ("billed", "yes"),
                         ("tokens estimated", "yes (by the gateway, not the upstream)")):
        assert re.search(r"^%s:\s+%s$" % (label, re.escape(value)), out, re.M), (label, out)
    out = cli_ok(c, "logs", "show", "rep-05")
    assert re.search(r"^cost:\s+none \(unpriced model\)$", out, re.M), out
    rec = json.loads(cli_ok(c, "--json", "logs", "show", "rep-01"))
    assert (rec["user_id"], rec["cost_usd"], rec["billed"], rec["unpriced"]) == \
        (5, "0.000123450", True, False), rec
    rc, _, err = c.gw.cli("logs", "export", "--format", "csv", "--user", "x")
    assert rc == 2 and "--user" in err, (rc, err)


def test_a_live_follower_filters_by_user(c):
    """Requests made now have no user: a follower of "no user" (0) gets them, a follower
    of user 5 does not."""
    k = c.gw.create_key("follow-user")
    followers = {}
    try:
        for user in ("0", "5"):
            followers[user] = subprocess.Popen(
                [CLI, "--socket", c.gw.sock, "--json", "logs", "tail", "-f", "-n", "0",
                 "--user", user], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL)
        path = "/echo/follow-user-%d" % os.getpid()

        def seen():
            st, hdrs, _ = c.gw.request("GET", path, None, {"X-API-Key": k["key"]})
            assert st == 200, st
            r, _, _ = select.select([followers["0"].stdout], [], [], 0.3)
            return r and hdrs["x-request-id"]
        wait_for(seen, timeout=15, interval=0, what="the follower of user 0 to be live")
        line = json.loads(followers["0"].stdout.readline())
        assert line["path"] == path and line["user_id"] is None, line
        r, _, _ = select.select([followers["5"].stdout], [], [], 0.5)
        assert not r, "the follower of user 5 got a request without a user"
    finally:
        for p in followers.values():
            p.send_signal(signal.SIGINT)
            p.wait(10)
            p.stdout.close()
            p.stderr.close()
    r = c.gw.ctl("logs.tail", {"lines": 1, "user_id": -1})
    assert not r["ok"] and r["error"]["code"] == "bad_args", r


def test_metrics_by_user_with_tokens_and_cost(c):
    m = json.loads(cli_ok(c, "--json", "metrics", "--since", SINCE, "--until", UNTIL, "--by",
                          "user"))
    assert m["requests"] == 8 and m["cost_usd"] == "2.000123487", m
    assert m["tokens"] == {"prompt": 3650, "completion": 367}, m
    rows = {r["user_id"]: (r["requests"], r["tokens"], r["cost_usd"]) for r in m["breakdown"]["rows"]}
    assert rows == {5: (3, {"prompt": 3500, "completion": 350}, "2.000123450"),
                    6: (3, {"prompt": 50, "completion": 7}, "0.000000007"),
                    None: (2, {"prompt": 100, "completion": 10}, "0.000000030")}, rows
    assert m["breakdown"]["by"] == "user", m
    m = json.loads(cli_ok(c, "--json", "metrics", "--since", SINCE, "--until", UNTIL, "--by",
                          "model"))
    assert {r["model"]: r["cost_usd"] for r in m["breakdown"]["rows"]}["gpt-4o"] == "1.000123488"
    out = cli_ok(c, "metrics", "--since", SINCE, "--until", UNTIL, "--by", "user")
    assert re.search(r"^cost:\s+2\.000123487 USD$", out, re.M), out
    assert re.search(r"^USER\s+REQUESTS\s+ERRORS.*COST USD$", out, re.M), out
    assert re.search(r"^5\s+3\s+0\s+.*\s3500/350\s+2\.000123450$", out, re.M), out
    assert re.search(r"^\(no user\)\s+2\s+", out, re.M), out
    rc, _, err = c.gw.cli("metrics", "--by", "users")
    assert rc == 2 and "route,key,user,model,upstream" in err, (rc, err)


def metrics_text(c):
    st, _, data = c.gw.request("GET", "/metrics")
    assert st == 200
    p = subprocess.run(["promtool", "check", "metrics"], input=data, capture_output=True,
                       timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr
    return data.decode()


def test_prometheus_tokens_by_route_model_and_kind_with_a_bounded_model_set(c):
    k = c.gw.create_key("prom")
    odd = 'we"ird\\mo\ndel'

    def chat(model):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        st, _, data = c.gw.request("POST", "/v1/chat/completions", body, {"X-API-Key": k["key"]})
        assert st == 200, (st, data)
        return json.loads(data)["usage"]

    u = chat("prom-a")
    chat("prom-a")
    chat(odd)
    text = metrics_text(c)
    assert "# TYPE fastgate_tokens_total counter" in text, text
    assert "# TYPE fastgate_cost_usd_total counter" in text, text
    assert "# TYPE fastgate_unpriced_requests_total counter" in text, text
    line = 'fastgate_tokens_total{route="chat",model="prom-a",kind="prompt"} %d' % (
        2 * u["prompt_tokens"])
    assert line in text.splitlines(), text
    assert ('fastgate_tokens_total{route="chat",model="prom-a",kind="completion"} %d' %
            (2 * u["completion_tokens"])) in text.splitlines(), text
    assert 'fastgate_tokens_total{route="chat",model="prom-a",kind="cached"} 0' in text
    # quote and backslash escaped as the format wants; a control character is not kept
    assert 'model="we\\"ird\\\\mo?del"' in text, text
    # the test daemon has no price table: no cost series, and every request is unpriced
    assert "fastgate_cost_usd_total{" not in text, text
    assert 'fastgate_unpriced_requests_total{route="chat"} 3' in text.splitlines(), text
    # a client that makes up a model per request: 256 models a route, then "other"
    for i in range(300):
        chat("made-up-%03d" % i)
    text = metrics_text(c)
    models = re.findall(r'^fastgate_tokens_total\{route="chat",model="((?:[^"\\]|\\.)*)",'
                        r'kind="prompt"\}', text, re.M)
    assert len(models) == len(set(models)) == 257 and "other" in models, len(models)
    made_up = sorted(m for m in models if m.startswith("made-up-"))
    # which 254 keep a series depends, with several event loops, on the loop each request
    # met; that 254 do and the other 46 add up under "other" does not
    assert len(made_up) == 256 - 2 and set(made_up) <= {"made-up-%03d" % i for i in range(300)}, \
        made_up[-3:]
    other = re.search(r'^fastgate_tokens_total\{route="chat",model="other",kind="prompt"\} (\d+)$',
                      text, re.M)
    assert other and int(other.group(1)) == 46 * u["prompt_tokens"], other


if __name__ == "__main__":
    run_tests(globals(), setup, teardown)
