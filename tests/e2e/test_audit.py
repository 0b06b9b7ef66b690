"""The audit trail under load and faults: one row per request, unique ids that match
X-Request-Id, nothing lost across SIGTERM or while the database cannot be written."""

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
from harness import Gateway, Mock, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

ROUTES = """routes:
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: %(m)s/v1/chat/completions, api_key: up }
    timeout: 5
  - name: debug
    match: { path: /debug }
    upstream: { url: %(m)s/v1/chat/completions, api_key: upstream-canary-key }
    log_bodies: 80
"""
CHAT = {"model": "load-model", "messages": [{"role": "user", "content": "hello"}]}


class Ctx:
    pass


def setup():
    c = Ctx()
    c.dir = tmpdir("fg-audit-")
    c.mock = Mock(c.dir)
    try:
        c.gw = Gateway(c.dir, ROUTES % {"m": c.mock.url})
        c.key = c.gw.create_key("loader")["key"]
    except BaseException:
        c.mock.stop()
        raise
    c.db = os.path.join(c.dir, "audit.db")
    return c


def teardown(c):
    try:
        assert c.gw.stop() == 0
        c.mock.stop()
    finally:
        rmtree(c.dir)


def rows(c, where="1=1", args=()):
    db = sqlite3.connect(c.db, timeout=10)
    try:
        return db.execute("SELECT request_id, status, is_stream, error, model, prompt_tokens, "
                          "completion_tokens, key_name FROM audit WHERE " + where, args).fetchall()
    finally:
        db.close()


def queue_depth(c):
    st, _, data = c.gw.request("GET", "/metrics")
    for line in data.decode().splitlines():
        if line.startswith("fastgate_audit_queue_depth "):
            return int(line.split()[1])
    raise AssertionError("no fastgate_audit_queue_depth")


def one_request(c, kind, ids, lock):
    """Make one request of the given kind; record the X-Request-Id when one came back."""
    body = dict(CHAT)
    headers = {"X-API-Key": c.key, "Content-Type": "application/json"}
    if kind == "stream":
        body["stream"] = True
        headers["X-Mock-Chunks"] = "4"
    elif kind == "error":
        headers["X-Mock-Fail"] = "500"
    elif kind == "reset":
        headers["X-Mock-Fail"] = "reset"
    elif kind == "badkey":
        headers["X-API-Key"] = "fg_nope"
    if kind == "vanish":
        data = json.dumps(dict(body, stream=True)).encode()
        s = socket.create_connection(("127.0.0.1", c.gw.port), timeout=10)
        s.sendall(("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n"
                   "X-Mock-Chunks: 20\r\nX-Mock-Delay-Ms: 50\r\nContent-Length: %d\r\n\r\n"
                   % (c.key, len(data))).encode() + data)
        s.recv(64)
        s.close()
        return
    conn = http.client.HTTPConnection("127.0.0.1", c.gw.port, timeout=20)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=headers)
    r = conn.getresponse()
    r.read()
    conn.close()
    with lock:
        ids.append(r.getheader("X-Request-Id"))


def load(c, n_threads, per_thread, kinds, tolerate_refusals=False):
    ids, lock, errors = [], threading.Lock(), []

    def worker(t):
        for i in range(per_thread):
            try:
                one_request(c, kinds[(t + i) % len(kinds)], ids, lock)
            except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
                if not tolerate_refusals:
                    raise
            except Exception as e:  # surfaced below
                errors.append(repr(e))
                return
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    return ids


KINDS = ["json", "json", "stream", "error", "reset", "badkey", "vanish"]


def test_every_request_leaves_exactly_one_row_under_concurrent_load(c):
    before = len(rows(c))
    n_threads, per_thread = 50, 40
    ids = load(c, n_threads, per_thread, KINDS)
    total = n_threads * per_thread
    wait_for(lambda: queue_depth(c) == 0 and len(rows(c)) - before >= total, timeout=30,
             what="audit rows to be written")
    all_rows = rows(c)[before:]
    assert len(all_rows) == total, (len(all_rows), total)
    assert len({r[0] for r in all_rows}) == total, "request ids must be unique"
    assert set(ids) <= {r[0] for r in all_rows}, "every X-Request-Id has its row"
    by_status = {}
    for r in all_rows:
        by_status[r[1]] = by_status.get(r[1], 0) + 1
    assert by_status.get(499, 0) > 0 and by_status.get(401, 0) > 0 and by_status.get(502, 0) > 0, by_status


def test_rows_are_written_as_blocks_and_read_back_by_the_cli_the_view_and_sql(c):
    """Schema 10 (fastgated(8), Storage): the daemon writes a batch as blocks of
    audit_block, none into audit_rows; logs export, logs show, metrics and the audit view
    read them all back, and the man page's bounded query over audit_block counts them."""
    t0 = time.time()
    ids = load(c, 8, 25, ["json", "json", "stream", "error"])
    wait_for(lambda: queue_depth(c) == 0 and len(rows(c, "started_at >= ?", (t0 - 1,))) >= 200,
             timeout=30, what="the rows")
    db = sqlite3.connect("file:%s?mode=ro" % c.db, uri=True, timeout=10)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10
        assert db.execute("SELECT type FROM sqlite_master WHERE name = 'audit'").fetchone() == \
            ("view",)
        assert db.execute("SELECT count(*) FROM audit_rows").fetchone()[0] == 0
        # every row of the file (this test's and the earlier tests') is in a block, and no
        # block spans more than a second
        nblocks, nrows, spread = db.execute(
            "SELECT count(*), sum(n), max(last_started - first_started) FROM audit_block"
        ).fetchone()
        assert nblocks >= 1 and spread <= 1.0, (nblocks, spread)
        assert nrows == db.execute("SELECT count(*) FROM audit").fetchone()[0], nrows
        # the man page's query: bounded by the blocks' first start, one second before
        bounded = db.execute(
            "SELECT count(*) FROM audit_block b, json_each(b.rows) j "
            "WHERE b.first_started >= ? - 1 AND json_extract(j.value, '$[1]') >= ?",
            (t0, t0)).fetchone()[0]
        assert bounded == 200, bounded
        viewed = {r[0]: r[1:] for r in db.execute(
            "SELECT request_id, status, typeof(started_at), typeof(latency_ms) FROM audit "
            "WHERE started_at >= ?", (t0,))}
    finally:
        db.close()
    assert set(ids) == set(viewed), (len(ids), len(viewed))
    assert {v[1:] for v in viewed.values()} == {("real", "real")}, set(viewed.values())
    rc, out, err = c.gw.cli("logs", "export", "--format", "jsonl", "--since", "%d" % int(t0))
    assert rc == 0, (rc, err)
    # --since takes whole seconds: an earlier test's last rows may come before this one's
    every = [json.loads(line) for line in out.splitlines()]
    starts = [e["started_at"] for e in every]
    assert starts == sorted(starts), "export in started_at order"
    exported = [e for e in every if e["request_id"] in viewed]
    assert len(exported) == len(ids) and {e["request_id"] for e in exported} == set(ids)
    assert {e["request_id"]: e["status"] for e in exported} == \
        {k: v[0] for k, v in viewed.items()}
    rc, out, err = c.gw.cli("--json", "logs", "show", ids[0])
    assert rc == 0 and json.loads(out)["request_id"] == ids[0], (rc, out, err)
    rc, out, err = c.gw.cli("--json", "metrics", "--since", "%d" % int(t0))
    assert rc == 0, (rc, err)
    assert json.loads(out)["requests"] == len(every), (out, len(every))


def test_request_ids_start_with_their_second_and_threads_are_named(c):
    # the audit table has no index on request_id: a row is found by the second its id
    # carries (fastgated(8), Request ids)
    before = time.time()
    ids = load(c, 1, 3, ["json"])
    after = time.time()
    for rid in ids:
        assert len(rid) == 20 and int(rid[:8], 16) in range(int(before) - 1, int(after) + 1), \
            (rid, before, after)
    pid = c.gw.proc.pid
    names = {open("/proc/%d/task/%s/comm" % (pid, t)).read().strip()
             for t in os.listdir("/proc/%d/task" % pid)}
    assert {"fg-audit", "fg-query", "fg-keys"} <= names, names


def test_stream_rows_carry_tokens_even_when_the_client_did_not_ask(c):
    st, h, _ = c.gw.request("POST", "/v1/chat/completions", dict(CHAT, stream=True), {"X-API-Key": c.key})
    assert st == 200
    rid = h["x-request-id"]
    wait_for(lambda: rows(c, "request_id = ?", (rid,)), timeout=10, what="the row")
    r = rows(c, "request_id = ?", (rid,))[0]
    assert r[2] == 1 and r[4] == "load-model" and r[5] > 0 and r[6] > 0 and r[7] == "loader", r


def test_bodies_are_kept_only_where_a_route_asks_truncated_and_without_secrets(c):
    body = {"note": "key " + c.key}
    body.update(CHAT)
    # and a key that straddles the 80-byte cut must leave no prefix behind either
    st, h3, _ = c.gw.request("POST", "/debug", b'{"pad":"' + b"x" * 50 + b'","k":"' + c.key.encode() + b'"}',
                             {"X-API-Key": c.key})
    assert st == 200
    st, h, _ = c.gw.request("POST", "/debug", body, {"X-API-Key": c.key})
    assert st == 200
    st, h2, _ = c.gw.request("POST", "/v1/chat/completions", CHAT, {"X-API-Key": c.key})
    assert st == 200
    for rid in (h["x-request-id"], h2["x-request-id"]):
        wait_for(lambda: rows(c, "request_id = ?", (rid,)), timeout=10, what="the row")
    db = sqlite3.connect(c.db, timeout=10)
    try:
        req_body, resp_body = db.execute("SELECT request_body, response_body FROM audit WHERE request_id = ?",
                                         (h["x-request-id"],)).fetchone()
        plain = db.execute("SELECT request_body, response_body FROM audit WHERE request_id = ?",
                           (h2["x-request-id"],)).fetchone()
    finally:
        db.close()
    assert plain == (None, None), plain
    db = sqlite3.connect(c.db, timeout=10)
    try:
        wait_for(lambda: rows(c, "request_id = ?", (h3["x-request-id"],)), timeout=10, what="the row")
        cut = db.execute("SELECT request_body FROM audit WHERE request_id = ?", (h3["x-request-id"],)).fetchone()[0]
    finally:
        db.close()
    assert len(cut) == 80 and cut.endswith("*" * (80 - cut.index('"k":"') - 5)) and c.key[:12] not in cut, cut
    assert req_body.startswith('{"note": "key ' + "*" * len(c.key)) and len(req_body) == 80, req_body
    assert resp_body.startswith('{"id":"chatcmpl-') and len(resp_body) <= 80, resp_body
    with open(c.db, "rb") as f:
        assert c.key.encode() not in f.read()
    rc, out, err = c.gw.cli("--json", "logs", "show", h["x-request-id"])
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["request_body"] == req_body and shown["response_body"] == resp_body, shown


def test_a_key_in_the_query_string_never_reaches_the_audit_trail(c):
    st, h, _ = c.gw.request("POST", "/v1/chat/completions?api_key=" + c.key, CHAT)
    assert st == 401
    rid = h["x-request-id"]
    wait_for(lambda: rows(c, "request_id = ?", (rid,)), timeout=10, what="the row")
    db = sqlite3.connect(c.db, timeout=10)
    try:
        path = db.execute("SELECT path FROM audit WHERE request_id = ?", (rid,)).fetchone()[0]
    finally:
        db.close()
    assert path == "/v1/chat/completions", path


def test_locked_database_holds_rows_until_it_is_writable_again(c):
    before = len(rows(c))
    lock = sqlite3.connect(c.db, timeout=10, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        ids = load(c, 10, 20, ["json", "stream"])
        assert len(ids) == 200, "serving must go on while the audit store is locked"
        wait_for(lambda: queue_depth(c) >= 200, timeout=10, what="the backlog to show")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_for(lambda: queue_depth(c) == 0, timeout=30, what="the backlog to drain")
    got = rows(c)[before:]
    assert len(got) == 200 and set(ids) == {r[0] for r in got}, (len(got),)


def test_sigterm_mid_load_loses_nothing(c):
    before = len(rows(c))
    done = []

    def run():
        done.append(load(c, 20, 15, ["json", "stream"], tolerate_refusals=True))
    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)
    c.gw.proc.p.send_signal(signal.SIGTERM)
    t.join(60)
    # requests refused because the listener closed never reached the gateway; the rest count
    assert c.gw.stop() == 0
    answered = [i for i in (done[0] if done else []) if i]
    got = rows(c)[before:]
    ids = {r[0] for r in got}
    assert set(answered) <= ids, "an answered request has no row"
    c.gw.start()
    c.key = c.gw.create_key("loader")["key"]


if __name__ == "__main__":
    run_tests(globals(), setup, teardown)
