"""End to end: who may call (issue 20, item 9): a key's own allow_ips, and the per-address
limit on requests that fail authentication (auth_fail_limit). Other client addresses are
made from loopback as a trusted proxy would: trusted_proxies names 127.0.0.1 and each
request says whom it is from in X-Forwarded-For. Every test starts its own gateway and
mock."""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import CLI, FASTGATED, Gateway, Mock, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

ROUTES = """routes:
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: %(m)s, api_key: upstream-key }
"""
CHAT = {"model": "callers-model", "messages": [{"role": "user", "content": "who may call"}]}
PROXIED = "trusted_proxies: [127.0.0.1]\n"


class Env:
    def __init__(self, config=PROXIED):
        self.dir = tmpdir("fg-callers-")
        self.mock = Mock(self.dir)
        path = os.path.join(self.dir, "fastgate.yaml")
        with open(path, "w") as f:
            f.write(config)
        try:
            self.gw = Gateway(self.dir, ROUTES % {"m": self.mock.url}, extra_args=["-c", path])
        except BaseException:
            self.mock.stop()
            rmtree(self.dir)
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.gw.stop()
            self.mock.stop()
        finally:
            rmtree(self.dir)

    def cli(self, *args):
        return self.gw.cli(*args)

    def cli_json(self, *args):
        rc, out, err = self.gw.cli("--json", *args)
        assert rc == 0, (args, rc, out, err)
        return json.loads(out)

    def chat(self, key, client=None, extra=None):
        """POST a chat as the client at address `client` (None: the loopback peer itself).
        Returns (status, headers, error code or None)."""
        h = {}
        if key is not None:
            h["X-API-Key"] = key
        if client:
            h["X-Forwarded-For"] = client
        h.update(extra or {})
        st, rh, data = self.gw.request("POST", "/v1/chat/completions", CHAT, h)
        code = None
        if st >= 400:
            code = json.loads(data)["error"]["code"]
        return st, rh, code

    def row(self, rid):
        def get():
            p = subprocess.run([CLI, "--socket", self.gw.sock, "--json", "logs", "show", rid],
                               capture_output=True, text=True, timeout=10)
            return json.loads(p.stdout) if p.returncode == 0 else None
        return wait_for(get, what="the audit row of " + rid)


# --- a key's own allow_ips ---------------------------------------------------------------

def test_a_keys_allow_ips_refuse_other_addresses_audited_with_the_key():
    # A key limited to 10.0.0.0/8 and 192.168.1.7 is served from there and refused (403
    # ip_not_allowed, nothing forwarded, audited with the key's id and the client's
    # address, counted as a refusal) from anywhere else, the proxy's own address included.
    # A key without a list is not affected. Fails if the list is ignored, if the refusal
    # is not audited with the key, or if the address is the proxy's rather than the client's.
    with Env() as env:
        k = env.cli_json("key", "create", "--name", "office",
                         "--allow-ips", "10.0.0.0/8,192.168.1.7")
        assert k["allow_ips"] == ["10.0.0.0/8", "192.168.1.7"], k
        free = env.cli_json("key", "create", "--name", "anywhere")
        assert free["allow_ips"] == [], free
        since = str(int(time.time()) - 1)
        for client in ("10.20.30.40", "192.168.1.7"):
            st, _, code = env.chat(k["key"], client)
            assert st == 200, (client, st, code)
        refused = []
        for client in ("203.0.113.5", "192.168.1.8", None, "11.0.0.1"):
            st, h, code = env.chat(k["key"], client)
            assert st == 403 and code == "ip_not_allowed", (client, st, code)
            refused.append((h["x-request-id"], client or "127.0.0.1"))
        assert env.mock.stats()["chat"] == 2
        for rid, client in refused:
            r = env.row(rid)
            assert r["key_id"] == k["id"] and r["status"] == 403, r
            assert r["client_ip"] == client, r
        st, _, code = env.chat(free["key"], "203.0.113.5")
        assert st == 200, (st, code)

        def counted():
            m = env.cli_json("metrics", "--since", since)
            return m if m["requests"] == 7 else None
        m = wait_for(counted, what="metrics to count every request")
        assert m["refused"] == 4, m


def test_allow_ips_are_shown_updated_cleared_and_kept_by_rotation_from_the_cli():
    # key show, key list and --json name the list; key update replaces it (live, at the
    # next request), --allow-ips '' and --any-ip lift it; a rotated key keeps it. Fails if
    # any of these does not show or does not act on traffic.
    with Env() as env:
        rc, out, err = env.cli("key", "create", "--name", "ci", "--allow-ips",
                               " 10.0.0.0/8 , 2001:db8::/32")
        assert rc == 0, (out, err)
        assert "allow ips:  10.0.0.0/8, 2001:db8::/32" in out, out
        kid = env.cli_json("key", "list")[0]["id"]
        secret = [ln.split()[1] for ln in out.splitlines() if ln.startswith("key:")][0]
        rc, out, err = env.cli("key", "show", str(kid))
        assert rc == 0 and "allow ips:" in out and "10.0.0.0/8, 2001:db8::/32" in out, out
        rc, out, err = env.cli("key", "list")
        head, row = out.splitlines()[0].split(), out.splitlines()[1]
        assert "ALLOW" in head and "10.0.0.0/8,2001:db8::/32" in row, out
        assert env.cli_json("key", "show", str(kid))["allow_ips"] == ["10.0.0.0/8",
                                                                     "2001:db8::/32"]
        assert env.chat(secret, "2001:db8::7")[0] == 200
        assert env.chat(secret, "172.16.0.1")[2] == "ip_not_allowed"

        # replaced: the next request sees it
        k = env.cli_json("key", "update", str(kid), "--allow-ips", "172.16.0.0/12")
        assert k["allow_ips"] == ["172.16.0.0/12"], k
        assert env.chat(secret, "172.16.0.1")[0] == 200
        assert env.chat(secret, "10.0.0.1")[2] == "ip_not_allowed"

        # rotation keeps the list: the new secret is as limited as the old one was
        rot = env.cli_json("key", "rotate", str(kid))
        assert rot["allow_ips"] == ["172.16.0.0/12"], rot
        assert env.chat(rot["key"], "10.0.0.1")[2] == "ip_not_allowed"
        assert env.chat(rot["key"], "172.16.0.1")[0] == 200

        # lifted, both ways
        assert env.cli_json("key", "update", str(kid), "--allow-ips", "")["allow_ips"] == []
        assert env.chat(rot["key"], "10.0.0.1")[0] == 200
        env.cli_json("key", "update", str(kid), "--allow-ips", "192.0.2.1")
        assert env.chat(rot["key"], "10.0.0.1")[2] == "ip_not_allowed"
        rc, out, err = env.cli("key", "update", str(kid), "--any-ip")
        assert rc == 0 and "allow ips:    any" in out, (out, err)
        assert env.chat(rot["key"], "10.0.0.1")[0] == 200

        # kept across a restart (the store has it)
        env.cli_json("key", "update", str(kid), "--allow-ips", "192.0.2.0/24")
        env.gw.stop()
        env.gw.start()
        assert env.cli_json("key", "show", str(kid))["allow_ips"] == ["192.0.2.0/24"]
        assert env.chat(rot["key"], "10.0.0.1")[2] == "ip_not_allowed"


def test_the_daemon_refuses_a_bad_list_and_changes_nothing():
    # The control command checks the list itself (a client other than fastgate-cli): a
    # range with bits past its prefix, something that is no address, a list too long, a
    # list that is no list. Fails if any is taken, or if the message does not name it.
    with Env() as env:
        k = env.gw.create_key("x", allow_ips=["10.0.0.0/8"])
        cases = [
            ("key.create", {"name": "y", "allow_ips": ["10.0.0.0/8", "10.0.0.1/8"]},
             "10.0.0.1/8"),
            ("key.create", {"name": "y", "allow_ips": ["example.com"]}, "example.com"),
            ("key.create", {"name": "y", "allow_ips": "10.0.0.0/8"}, "array"),
            ("key.update", {"id": k["id"], "allow_ips": ["10.%d.0.0/16" % i for i in range(65)]},
             "at most 64"),
            ("key.update", {"id": k["id"], "allow_ips": [7]}, "not an address"),
        ]
        for cmd, args, text in cases:
            r = env.gw.ctl(cmd, args)
            assert not r["ok"] and r["error"]["code"] == "bad_args", (cmd, args, r)
            assert text in r["error"]["message"], (cmd, args, r)
        keys = env.gw.ctl("key.list")["result"]
        assert [x["name"] for x in keys] == ["x"] and keys[0]["allow_ips"] == ["10.0.0.0/8"], keys
        # 64 is fine
        r = env.gw.ctl("key.update", {"id": k["id"],
                                      "allow_ips": ["10.%d.0.0/16" % i for i in range(64)]})
        assert r["ok"] and len(r["result"]["allow_ips"]) == 64, r


def test_the_cli_checks_the_list_itself_with_the_daemon_down():
    # Issue 20 (item 5's rule for item 9): a bad entry or too many is a usage error (exit 2,
    # nothing sent) naming the entry, daemon up or down. Fails if the CLI sends it (exit 3
    # here) or does not name what is wrong.
    down = ["--socket", "/nonexistent/fastgate.sock"]
    many = ",".join("10.%d.0.0/16" % i for i in range(65))
    cases = [
        (["key", "create", "--name", "x", "--allow-ips", "10.0.0.0/8,10.0.0.1/8"], 2,
         '"10.0.0.1/8" is not an address or a range'),
        (["key", "create", "--name", "x", "--allow-ips", "office"], 2, '"office"'),
        (["key", "update", "3", "--allow-ips", "::1/129"], 2, '"::1/129"'),
        (["key", "update", "3", "--allow-ips", many], 2, "at most 64"),
        (["key", "update", "3", "--allow-ips", "10.0.0.0/8", "--any-ip"], 2, "cannot be used together"),
        (["key", "create", "--name", "x", "--allow-ips", "10.0.0.0/8,::1"], 3, "fastgated running"),
        (["key", "update", "3", "--allow-ips", ""], 3, "fastgated running"),
    ]
    for args, want, text in cases:
        p = subprocess.run([CLI] + down + args, capture_output=True, text=True, timeout=10)
        assert p.returncode == want and text in p.stderr, (args, p.returncode, p.stderr)


# --- auth_fail_limit ------------------------------------------------------------------

BAD = "fg_" + "A" * 46          # the right shape, a wrong checksum: refused without a lookup
UNKNOWN_BODY = "not-a-fastgate-key"


def metric_line(env, needle):
    st, _, data = env.gw.request("GET", "/metrics")
    assert st == 200
    return [ln for ln in data.decode().splitlines() if ln.startswith(needle)]


def test_an_address_with_too_many_failed_keys_gets_429_before_its_key_is_looked_at():
    # auth_fail_limit 3/min: an address's 4th request after 3 failed keys gets 429
    # too_many_auth_failures with Retry-After, audited and counted as a refusal, whatever
    # key it sends (a valid one too); another address is not affected; a missing key is no
    # failure; a revoked key is one; loopback clients are not counted. Fails if the limit
    # does not act, acts on the wrong address, or lets a good key through a block.
    with Env(PROXIED + "auth_fail_limit: 3/min\n") as env:
        good = env.gw.create_key("good")
        revoked = env.gw.create_key("gone")
        assert env.gw.ctl("key.revoke", {"id": revoked["id"]})["ok"]
        since = str(int(time.time()) - 1)
        guesser = "203.0.113.9"
        for key in (BAD, UNKNOWN_BODY, "fg_" + "x" * 10):
            st, _, code = env.chat(key, guesser)
            assert st == 401 and code == "invalid_api_key", (key, st, code)
        st, h, code = env.chat(BAD, guesser)
        assert st == 429 and code == "too_many_auth_failures", (st, code)
        assert 1 <= int(h["retry-after"]) <= 60, h
        blocked_rid = h["x-request-id"]
        # a good key from the blocked address: refused all the same, and nothing forwarded
        st, h, code = env.chat(good["key"], guesser)
        assert st == 429 and code == "too_many_auth_failures", (st, code)
        assert env.mock.stats()["chat"] == 0
        r = env.row(blocked_rid)
        assert r["status"] == 429 and r["client_ip"] == guesser and r["key_id"] is None, r

        # another address: its own count
        assert env.chat(good["key"], "198.51.100.4")[0] == 200
        assert env.chat(BAD, "198.51.100.4")[2] == "invalid_api_key"
        assert env.chat(good["key"], "198.51.100.4")[0] == 200
        # no key is a mistake, not a guess: never counted
        for _ in range(5):
            assert env.chat(None, "192.0.2.50")[2] == "missing_api_key"
        assert env.chat(good["key"], "192.0.2.50")[0] == 200
        # a revoked key is a failure like any other
        for _ in range(3):
            assert env.chat(revoked["key"], "192.0.2.60")[2] == "revoked_api_key"
        assert env.chat(revoked["key"], "192.0.2.60")[2] == "too_many_auth_failures"
        # loopback (no proxy header): never counted
        for _ in range(5):
            assert env.chat(BAD)[2] == "invalid_api_key"
        assert env.chat(good["key"])[0] == 200

        def counted():
            m = env.cli_json("metrics", "--since", since)
            return m if m["requests"] == 24 else None
        m = wait_for(counted, what="metrics to count every request")
        # refused: 3 + 2 from the guesser, 1, 5, 3 + 1, 5 from loopback; 4 served
        assert m["refused"] == 20 and m["status"]["4xx"] == 20, m
        assert metric_line(env, 'fastgate_requests_total{route="",status="429"} 3'), \
            metric_line(env, "fastgate_requests_total")


def test_a_blocked_address_is_served_again_once_its_window_has_passed():
    # A short window (2/s) so the test need not wait a minute: blocked, then served again
    # within a bounded time, without sleeping a fixed guess. Fails if the block never
    # lifts or there was none.
    with Env(PROXIED + "auth_fail_limit: 2/s\n") as env:
        good = env.gw.create_key("good")
        who = "203.0.113.77"
        deadline = time.monotonic() + 15
        h = None
        while time.monotonic() < deadline:
            st, h, code = env.chat(BAD, who)
            if st == 429:
                break
            assert code == "invalid_api_key", (st, code)
        assert h is not None and h.get("retry-after") == "1", h
        assert env.chat(good["key"], who)[2] == "too_many_auth_failures"
        wait_for(lambda: env.chat(good["key"], who)[0] == 200, timeout=10, interval=0.1,
                 what="the address to be served once its window passed")


def test_auth_fail_limit_is_on_at_20_a_minute_by_default_and_off_turns_it_off():
    # Fails if the default is not 20 failures a minute, or `off` leaves a limit.
    with Env(PROXIED) as env:
        for i in range(20):
            st, _, code = env.chat(BAD, "203.0.113.20")
            assert st == 401, (i, st, code)
        st, _, code = env.chat(BAD, "203.0.113.20")
        assert st == 429 and code == "too_many_auth_failures", (st, code)
    for off in ("off", "0"):
        with Env(PROXIED + "auth_fail_limit: %s\n" % off) as env:
            for i in range(30):
                st, _, code = env.chat(BAD, "203.0.113.21")
                assert st == 401, (off, i, st, code)


def test_a_bad_auth_fail_limit_is_named_by_file_and_line():
    # Fails if a rate the gateway cannot read is taken (or taken as something else).
    d = tmpdir("fg-authfail-bad-")
    routes = os.path.join(d, "routes.d")
    os.mkdir(routes)
    try:
        for value, says in (("20/day", 'unknown unit "day"'), ("20", "expected AMOUNT/UNIT"),
                            ("0/min", "more than 0"), ("2000000/min", "out of range"),
                            ("[20/min]", "expected a single value")):
            path = os.path.join(d, "fastgate.yaml")
            with open(path, "w") as f:
                f.write("listen: 127.0.0.1:0\n\nauth_fail_limit: %s\n" % value)
            p = subprocess.run([FASTGATED, "-c", path, "--check", "--routes", routes],
                               capture_output=True, text=True, timeout=20)
            assert p.returncode == 1, (value, p)
            assert "%s:3: auth_fail_limit: " % path in p.stderr and says in p.stderr, \
                (value, p.stderr)
        with open(path, "w") as f:
            f.write("auth_fail_limit: 1k/hour\n")
        p = subprocess.run([FASTGATED, "-c", path, "--check", "--routes", routes],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, p
    finally:
        rmtree(d)


if __name__ == "__main__":
    run_tests(globals())
