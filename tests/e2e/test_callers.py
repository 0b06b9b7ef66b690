"""End to end: who may call (issue 20, item 9): a key's own allow_ips, and the per-address
limit on requests that fail authentication (auth_fail_limit). Other client addresses are
made from loopback as a trusted proxy would: trusted_proxies names 127.0.0.1 and each
request says whom it is from in X-Forwarded-For. Every test starts its own gateway and
mock."""

import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import CLI, Gateway, Mock, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

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


if __name__ == "__main__":
    run_tests(globals())
