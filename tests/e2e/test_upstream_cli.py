"""System test of the upstreams of a route's pool from the operator's side: fastgate-cli
upstream list|show|drain|undrain, route show's pool, metrics --by upstream and the
per-upstream Prometheus series, checked against live traffic to three mock upstreams
(each mock counts what reaches it), across reloads and a restart of the daemon."""

import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import CLI, Gateway, Mock, rmtree, run_tests, tmpdir  # noqa: E402

# pool: three upstreams taken in turn; flaky: one upstream whose breaker opens after two
# failures; twin: two upstreams with one URL and two keys; quoted: a URL that needs escaping
# in a Prometheus label (never called).
ROUTES = """routes:
  - name: pool
    match: { path: /v1/chat/completions, methods: [POST] }
    balance: round_robin
    upstreams:
      - url: %(a)s/v1/chat/completions
      - url: %(b)s/v1/chat/completions
        weight: 2
      - url: %(c)s/v1/chat/completions
        api_key: %(c_key)s
        model: other-model
    retry: { attempts: 1 }
  - name: solo
    match: { path: /solo/** }
    strip_prefix: /solo
    upstream: { url: %(a)s }
  - name: flaky
    match: { path: /flaky/** }
    strip_prefix: /flaky
    upstream: { url: %(b)s }
    breaker: { failures: 2, cooldown: 60 }
    retry: { attempts: 1 }
  - name: twin
    match: { path: /twin/** }
    strip_prefix: /twin
    upstreams:
      - url: %(a)s
        api_key: twin-one
      - url: %(a)s
        api_key: twin-two
  - name: quoted
    match: { path: /never-called }
    upstream: { url: 'http://127.0.0.1:9/a"b\\c' }
"""

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Ctx:
    pass


def routes_text(c, c_key="key-one", c_first=False):
    """The route file; c_first lists the third upstream first (its index changes)."""
    text = ROUTES % {"a": c.mocks[0].url, "b": c.mocks[1].url, "c": c.mocks[2].url,
                     "c_key": c_key}
    if c_first:
        lines = text.split("\n")
        i = next(n for n, l in enumerate(lines) if "%s/v1/chat" % c.mocks[2].url in l)
        block = lines[i:i + 3]
        del lines[i:i + 3]
        j = next(n for n, l in enumerate(lines) if l.strip() == "upstreams:")
        lines[j + 1:j + 1] = block
        text = "\n".join(lines)
    return text


def write_routes(c, **kw):
    with open(os.path.join(c.gw.routes_dir, "10-test.yaml"), "w") as f:
        f.write(routes_text(c, **kw))


def setup():
    c = Ctx()
    c.dir = tmpdir("fg-upstream-")
    c.mocks = []
    try:
        c.mocks = [Mock(c.dir) for _ in range(3)]
        c.gw = Gateway(c.dir, routes_text(c))
        c.key = c.gw.create_key("upstream-test")["key"]
        c.urls = ["%s/v1/chat/completions" % m.url for m in c.mocks]
    except BaseException:
        for m in c.mocks:
            m.stop()
        if hasattr(c, "gw"):
            c.gw.stop()
        rmtree(c.dir)
        raise
    return c


def teardown(c):
    try:
        assert c.gw.stop() == 0
        for m in c.mocks:
            m.stop()
    finally:
        rmtree(c.dir)


def cli_json(c, *args):
    rc, out, err = c.gw.cli("--json", *args)
    assert rc == 0, (args, rc, out, err)
    return json.loads(out)


def arrivals(c):
    """Chat requests that reached each of the three mocks so far."""
    return [m.stats()["chat"] for m in c.mocks]


def send(c, n):
    """n chat requests through the pool; returns what reached each mock meanwhile."""
    before = arrivals(c)
    for _ in range(n):
        st, _, data = c.gw.request("POST", "/v1/chat/completions", CHAT, {"X-API-Key": c.key})
        assert st == 200, (st, data)
    return [a - b for a, b in zip(arrivals(c), before)]


def metrics(c):
    """The Prometheus text as {(name, frozenset of labels): value}, and the text."""
    st, _, data = c.gw.request("GET", "/metrics")
    assert st == 200
    text = data.decode()
    series = {}
    for line in text.splitlines():
        m = re.match(r'^(\w+)\{(.*)\} (\S+)$', line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
        series[(m.group(1), labels)] = float(m.group(3))
    return series, data


def series_of(s, name, **labels):
    return s.get((name, frozenset(labels.items())))


# --- list and show ---------------------------------------------------------------------

def test_upstream_list_shows_every_upstream_with_its_columns(c):
    rc, out, err = c.gw.cli("upstream", "list")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "BREAKER", "INFLIGHT", "LATENCY", "WEIGHT",
                                "PRIO", "URL"], lines[0]
    rows = {l.split()[0]: l.split() for l in lines[1:]}
    assert set(rows) == {"pool/0", "pool/1", "pool/2", "solo/0", "flaky/0", "twin/0", "twin/1",
                         "quoted/0"}, out
    assert rows["pool/1"][1:4] == ["up", "closed", "0"] and rows["pool/1"][-3:-1] == ["2", "0"], rows
    assert rows["pool/2"][-1] == c.urls[2], rows
    listed = cli_json(c, "upstream", "list")
    assert [u["id"] for u in listed][:3] == ["pool/0", "pool/1", "pool/2"], listed
    u = listed[2]
    assert u["route"] == "pool" and u["url"] == c.urls[2] and u["model"] == "other-model", u
    assert u["api_key_set"] is True and "key-one" not in json.dumps(listed), u
    for field in ("state", "breaker", "drained", "inflight", "latency_ewma_ms", "retry_in_ms",
                  "weight", "priority", "attempts"):
        assert field in u, (field, u)


def test_upstream_list_of_one_route_and_of_an_unknown_route(c):
    only = cli_json(c, "upstream", "list", "--route", "solo")
    assert [u["id"] for u in only] == ["solo/0"], only
    rc, out, err = c.gw.cli("upstream", "list", "--route", "solo")
    assert rc == 0 and "solo/0" in out and "pool/0" not in out, out
    rc, out, err = c.gw.cli("upstream", "list", "--route", "nope")
    assert rc == 1 and "fastgate-cli: no route named 'nope'" in err, (rc, err)


def test_upstream_show_human_and_json(c):
    sent = send(c, 3)
    assert sent == [1, 1, 1], sent
    u = cli_json(c, "upstream", "show", "pool/2")
    assert u["id"] == "pool/2" and u["url"] == c.urls[2] and u["state"] == "up", u
    assert u["breaker"] == "closed" and u["inflight"] == 0 and u["drained"] is False, u
    assert set(u["attempts"]) == {"ok", "connect", "timeout", "reset", "protocol", "429",
                                  "5xx", "abandoned"}, u
    assert u["attempts"]["ok"] >= 1 and u["latency_ewma_ms"] >= 0, u
    rc, out, err = c.gw.cli("upstream", "show", "pool/2")
    assert rc == 0, err
    assert re.search(r"^id:\s+pool/2$", out, re.M) and re.search(r"^state:\s+up$", out, re.M), out
    assert re.search(r"^model:\s+other-model$", out, re.M), out
    assert re.search(r"^attempts:\s+ok \d+ \(\d+ in all\)$", out, re.M), out
    assert re.search(r"^latency:\s+\d+\.\d ms$", out, re.M), out
    assert "key-one" not in out


def test_bad_upstream_ids_exit_1_with_a_clear_message(c):
    cases = {
        "pool": "'pool' is not an upstream id: give ROUTE/INDEX",
        "pool/": "is not an upstream id",
        "pool/x": "'pool/x' is not an upstream id",
        "pool/-1": "is not an upstream id",
        "/0": "is not an upstream id",
        "pool/3": "no upstream pool/3: route pool has 3 upstreams, pool/0 to pool/2",
        "solo/1": "no upstream solo/1: route solo has one upstream, solo/0",
        "nope/0": "no upstream nope/0: no route named 'nope'",
    }
    for verb in ("show", "drain", "undrain"):
        for bad, msg in cases.items():
            rc, out, err = c.gw.cli("upstream", verb, "--", bad)
            assert rc == 1 and msg in err and err.startswith("fastgate-cli: "), (verb, bad, rc, err)
    for args in (["upstream", "show"], ["upstream", "drain"], ["upstream", "list", "x"],
                 ["upstream", "frob"], ["upstream", "list", "--route"]):
        rc, out, err = c.gw.cli(*args)
        assert rc == 2 and "usage" in err, (args, rc, err)
    r = c.gw.ctl("upstream.show", {"id": 7})
    assert r["error"]["code"] == "bad_args", r
    r = c.gw.ctl("upstream.drain", {"id": "pool/0", "extra": 1})
    assert r["error"]["code"] == "bad_args", r
    assert cli_json(c, "upstream", "show", "pool/0")["drained"] is False


# --- drain -----------------------------------------------------------------------------

def test_drain_sends_no_new_requests_and_undrain_brings_them_back(c):
    assert send(c, 6) == [2, 2, 2]
    r = cli_json(c, "upstream", "drain", "pool/1")
    assert r["id"] == "pool/1" and r["drained"] is True and r["changed"] is True, r
    assert r["state"] == "drained", r
    try:
        sent = send(c, 8)
        assert sent[1] == 0 and sent[0] + sent[2] == 8 and sent[0] > 0 and sent[2] > 0, sent
        rc, out, err = c.gw.cli("upstream", "drain", "pool/1")
        assert rc == 0 and "was already drained" in out, out
        assert cli_json(c, "upstream", "drain", "pool/1")["changed"] is False
        rc, out, _ = c.gw.cli("upstream", "list", "--route", "pool")
        assert re.search(r"^pool/1\s+drained\s", out, re.M), out
        assert cli_json(c, "upstream", "show", "pool/0")["drained"] is False
    finally:
        rc, out, err = c.gw.cli("upstream", "undrain", "pool/1")
    assert rc == 0 and "takes requests again" in out, (rc, out, err)
    assert cli_json(c, "upstream", "show", "pool/1")["state"] == "up"
    assert send(c, 6) == [2, 2, 2]
    assert cli_json(c, "upstream", "undrain", "pool/1")["changed"] is False


def test_a_pool_with_every_upstream_drained_answers_503(c):
    for i in range(3):
        assert c.gw.cli("upstream", "drain", "pool/%d" % i)[0] == 0
    try:
        before = arrivals(c)
        st, h, data = c.gw.request("POST", "/v1/chat/completions", CHAT, {"X-API-Key": c.key})
        assert st == 503, (st, data)
        assert arrivals(c) == before
    finally:
        for i in range(3):
            assert c.gw.cli("upstream", "undrain", "pool/%d" % i)[0] == 0
    assert send(c, 3) == [1, 1, 1]


def test_drain_persists_across_a_reload_that_moves_the_upstream_and_changes_its_key(c):
    assert cli_json(c, "upstream", "drain", "pool/2")["drained"] is True
    try:
        assert c.gw.cli("reload")[0] == 0
        assert cli_json(c, "upstream", "show", "pool/2")["drained"] is True
        assert send(c, 4)[2] == 0
        # a new key makes it a new upstream to the pool (fresh state), and it moves to the
        # front: the stored state follows its route and URL
        write_routes(c, c_key="key-two", c_first=True)
        rc, out, err = c.gw.cli("reload")
        assert rc == 0, err
        u = cli_json(c, "upstream", "show", "pool/0")
        assert u["url"] == c.urls[2] and u["drained"] is True and u["state"] == "drained", u
        assert u["attempts"]["ok"] == 0, "a new key must give a new state: %r" % u
        assert cli_json(c, "upstream", "show", "pool/2")["drained"] is False
        sent = send(c, 4)
        assert sent[2] == 0 and sent[0] + sent[1] == 4, sent
        assert cli_json(c, "upstream", "undrain", "pool/0")["changed"] is True
        assert send(c, 3)[2] == 1
    finally:
        write_routes(c)
        assert c.gw.cli("reload")[0] == 0
        assert c.gw.cli("upstream", "undrain", "pool/2")[0] == 0
    assert cli_json(c, "upstream", "show", "pool/2")["drained"] is False


def test_drain_persists_across_a_restart_and_undrain_too(c):
    assert c.gw.cli("upstream", "drain", "pool/0")[0] == 0
    assert c.gw.stop() == 0
    c.gw.start()
    u = cli_json(c, "upstream", "show", "pool/0")
    assert u["drained"] is True and u["attempts"]["ok"] == 0, u
    sent = send(c, 4)
    assert sent[0] == 0 and sent[1] + sent[2] == 4, sent
    assert c.gw.cli("upstream", "undrain", "pool/0")[0] == 0
    assert c.gw.stop() == 0
    c.gw.start()
    assert cli_json(c, "upstream", "show", "pool/0")["drained"] is False
    assert send(c, 3) == [1, 1, 1]


def test_drain_and_undrain_are_logged_with_the_caller(c):
    assert c.gw.cli("upstream", "drain", "solo/0")[0] == 0
    assert c.gw.cli("upstream", "undrain", "solo/0")[0] == 0
    log = c.gw.proc.stderr()
    assert re.search(r"upstream\.drain solo/0 %s \(not drained -> drained\)" % re.escape(c.mocks[0].url), log), log[-2000:]
    assert re.search(r"upstream\.undrain solo/0 .*\(drained -> not drained\)", log), log[-2000:]


def test_upstreams_of_a_route_with_one_url_are_drained_together_and_counted_once(c):
    """The state is stored by route and URL, so it cannot tell them apart after a restart:
    drain says so by draining both at once."""
    url = c.mocks[0].url
    r = cli_json(c, "upstream", "drain", "twin/1")
    try:
        assert r["id"] == "twin/1" and r["drained"] is True and r["changed"] is True, r
        assert cli_json(c, "upstream", "show", "twin/0")["drained"] is True
        st, _, _ = c.gw.request("GET", "/twin/x", None, {"X-API-Key": c.key})
        assert st == 503, st
        s, data = metrics(c)
        text = data.decode()
        assert text.count('fastgate_upstream_up{route="twin",') == 1, text
        assert series_of(s, "fastgate_upstream_up", route="twin", upstream=url) == 0
    finally:
        r = cli_json(c, "upstream", "undrain", "twin/0")
    assert r["changed"] is True and cli_json(c, "upstream", "show", "twin/1")["drained"] is False
    for _ in range(4):
        st, _, _ = c.gw.request("GET", "/twin/x", None, {"X-API-Key": c.key})
        assert st == 200, st
    s, _ = metrics(c)
    assert series_of(s, "fastgate_upstream_attempts_total", route="twin", upstream=url,
                     outcome="ok") == 4
    both = [cli_json(c, "upstream", "show", "twin/%d" % i)["attempts"]["ok"] for i in range(2)]
    assert sum(both) == 4 and min(both) > 0, both


# --- route show, metrics ---------------------------------------------------------------

def test_route_show_prints_the_pool(c):
    assert c.gw.cli("upstream", "drain", "pool/1")[0] == 0
    try:
        rc, out, err = c.gw.cli("route", "show", "pool")
    finally:
        assert c.gw.cli("upstream", "undrain", "pool/1")[0] == 0
    assert rc == 0, err
    assert re.search(r"^upstream:\s+%s$" % re.escape(c.urls[0]), out, re.M), out   # kept
    assert re.search(r"^balance:\s+round_robin$", out, re.M), out
    assert re.search(r"^retry:\s+1 attempt \(no retries\); no deadline$", out, re.M), out
    assert re.search(r"^breaker:\s+5 failures in a row or 50% of at least 20 requests", out, re.M), out
    assert re.search(r"^health:\s+off$", out, re.M) and re.search(r"^fallback:\s+-$", out, re.M), out
    assert re.search(r"^ID\s+STATE\s+WEIGHT\s+PRIO\s+MODEL\s+URL$", out, re.M), out
    assert re.search(r"^pool/0\s+up\s+1\s+0\s+-\s+%s$" % re.escape(c.urls[0]), out, re.M), out
    assert re.search(r"^pool/1\s+drained\s+2\s+0\s+-\s+%s$" % re.escape(c.urls[1]), out, re.M), out
    assert re.search(r"^pool/2\s+up\s+1\s+0\s+other-model\s+%s$" % re.escape(c.urls[2]), out, re.M), out
    rc, out, err = c.gw.cli("route", "show", "flaky")
    assert re.search(r"^breaker:\s+2 failures in a row", out, re.M), out
    rc, out, err = c.gw.cli("route", "show", "solo")
    assert re.search(r"^breaker:\s+off$", out, re.M), out


def test_metrics_report_each_upstream(c):
    s0, _ = metrics(c)
    sent = send(c, 6)
    assert c.gw.cli("upstream", "drain", "pool/2")[0] == 0
    try:
        s1, data = metrics(c)
    finally:
        assert c.gw.cli("upstream", "undrain", "pool/2")[0] == 0
    for i, url in enumerate(c.urls):
        def ok(s):
            return series_of(s, "fastgate_upstream_attempts_total", route="pool", upstream=url,
                             outcome="ok")
        assert ok(s1) - ok(s0) == sent[i], (i, ok(s0), ok(s1), sent)
        for outcome in ("connect", "timeout", "reset", "protocol", "429", "5xx", "abandoned"):
            assert series_of(s1, "fastgate_upstream_attempts_total", route="pool", upstream=url,
                             outcome=outcome) == 0, outcome
        assert series_of(s1, "fastgate_upstream_inflight", route="pool", upstream=url) == 0
        assert series_of(s1, "fastgate_upstream_up", route="pool", upstream=url) == (0 if i == 2 else 1)
        for to in ("closed", "open", "half_open"):
            assert series_of(s1, "fastgate_breaker_transitions_total", route="pool", upstream=url,
                             to=to) == 0, to
    text = data.decode()
    assert ('fastgate_upstream_up{route="quoted",upstream="http://127.0.0.1:9/a\\"b\\\\c"} 1'
            in text), [l for l in text.splitlines() if "quoted" in l]
    for name, kind in (("fastgate_upstream_up", "gauge"), ("fastgate_upstream_inflight", "gauge"),
                       ("fastgate_upstream_attempts_total", "counter"),
                       ("fastgate_breaker_transitions_total", "counter")):
        assert "# TYPE %s %s\n" % (name, kind) in text, name
    p = subprocess.run(["promtool", "check", "metrics"], input=data, capture_output=True, timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr


def test_an_open_breaker_shows_in_show_list_and_metrics(c):
    flaky = c.mocks[1].url
    for _ in range(2):
        st, _, data = c.gw.request("POST", "/flaky/x", CHAT, {"X-API-Key": c.key, "X-Mock-Fail": "500"})
        assert st == 500, (st, data)
    u = cli_json(c, "upstream", "show", "flaky/0")
    assert u["breaker"] == "open" and u["state"] == "open" and u["retry_in_ms"] > 0, u
    assert u["attempts"]["5xx"] == 2 and u["consecutive_failures"] >= 0, u
    rc, out, _ = c.gw.cli("upstream", "show", "flaky/0")
    assert re.search(r"^breaker:\s+open \(takes requests again in \d+ ms\)$", out, re.M), out
    assert re.search(r"^attempts:\s+5xx 2 \(2 in all\)$", out, re.M), out
    st, h, _ = c.gw.request("POST", "/flaky/x", CHAT, {"X-API-Key": c.key})
    assert st == 503 and int(h["retry-after"]) > 0, (st, h)
    s, data = metrics(c)
    assert series_of(s, "fastgate_upstream_up", route="flaky", upstream=flaky) == 0
    assert series_of(s, "fastgate_breaker_transitions_total", route="flaky", upstream=flaky, to="open") == 1
    assert series_of(s, "fastgate_breaker_transitions_total", route="flaky", upstream=flaky, to="closed") == 0
    assert series_of(s, "fastgate_upstream_attempts_total", route="flaky", upstream=flaky, outcome="5xx") == 2
    # the same mock in another route has a state of its own
    assert series_of(s, "fastgate_upstream_up", route="pool", upstream=c.urls[1]) == 1
    p = subprocess.run(["promtool", "check", "metrics"], input=data, capture_output=True, timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr


def test_metrics_by_upstream_human_and_json(c):
    send(c, 3)
    r = cli_json(c, "metrics", "--by", "upstream")
    bd = r["breakdown"]
    assert bd["by"] == "upstream" and bd["live"] is True and bd["truncated"] is False, bd
    rows = {row["id"]: row for row in bd["rows"]}
    assert bd["groups"] == len(bd["rows"]) == 8, bd
    p1 = rows["pool/1"]
    assert p1["url"] == c.urls[1] and p1["state"] == "up" and p1["inflight"] == 0, p1
    assert p1["attempts_total"] == sum(p1["attempts"].values()) and p1["attempts"]["ok"] > 0, p1
    assert "latency_ewma_ms" in p1 and rows["flaky/0"]["state"] == "open", rows["flaky/0"]
    rc, out, err = c.gw.cli("metrics", "--by", "upstream")
    assert rc == 0, err
    assert re.search(r"^UPSTREAM\s+STATE\s+INFLIGHT\s+EWMA MS\s+ATTEMPTS\s+OUTCOMES\s+URL$", out, re.M), out
    assert re.search(r"^flaky/0\s+open\s+0\s+\S+\s+2\s+5xx 2\s+%s$" % re.escape(c.mocks[1].url), out, re.M), out
    assert re.search(r"^pool/1\s+up\s+0\s+\d+\.\d\s+%d\s+ok %d\s" % (p1["attempts_total"], p1["attempts"]["ok"]),
                     out, re.M), out
    assert "not limited to the window" in out
    r = c.gw.ctl("metrics", {"by": "nope"})
    assert r["error"]["code"] == "bad_args" and "upstream" in r["error"]["message"], r


def test_help_and_completion_know_the_upstream_commands(c):
    rc, out, err = c.gw.cli("upstream", "--help")
    assert rc == 0 and "upstream drain ID" in out and "upstream list [--route NAME]" in out, out
    p = subprocess.run([CLI, "--complete", "upstream", "drain"], capture_output=True, timeout=10)
    assert "@upstream" in p.stdout.decode().split(), p.stdout
    p = subprocess.run([CLI, "--complete", "upstream", "list", "--route"], capture_output=True, timeout=10)
    assert p.stdout.decode().split() == ["@route"], p.stdout
    help_ = c.gw.ctl("help")["result"]
    assert {"upstream.list", "upstream.show", "upstream.drain", "upstream.undrain"} <= \
        {h["cmd"] for h in help_}


if __name__ == "__main__":
    run_tests(globals(), setup, teardown)
