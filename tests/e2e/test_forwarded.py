"""End to end: who the client is behind proxies (issue 20, item 3). The upstream gets
X-Forwarded-For and X-Forwarded-Proto; a client's own X-Forwarded-For is believed (kept,
with the peer appended, and its client taken for the audit's client_ip) only when the
connecting peer is in trusted_proxies, and dropped otherwise. A bad range in fastgate.yaml
is a FILE:LINE error. Also who may call at all (allow_ips) and browsers (cors_origins).
Every test starts its own gateway and mock."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import FASTGATED, Gateway, Mock, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

ROUTES = """routes:
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: %(m)s, api_key: upstream-key }
"""
CHAT = {"model": "fwd-model", "messages": [{"role": "user", "content": "who am i"}]}


class Env:
    def __init__(self, config=None):
        self.dir = tmpdir("fg-fwd-")
        self.mock = Mock(self.dir)
        args = []
        if config is not None:
            path = os.path.join(self.dir, "fastgate.yaml")
            with open(path, "w") as f:
                f.write(config)
            args = ["-c", path]
        self.gw = Gateway(self.dir, ROUTES % {"m": self.mock.url}, extra_args=args)
        self.key = self.gw.create_key("fwd")["key"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.gw.stop()
        self.mock.stop()
        rmtree(self.dir)

    def chat(self, headers=None):
        h = {"X-API-Key": self.key}
        h.update(headers or {})
        st, rh, data = self.gw.request("POST", "/v1/chat/completions", CHAT, h)
        assert st == 200, (st, data)
        last = self.mock.stats()["last"]
        return rh["x-request-id"], {k.lower(): v for k, v in last["headers"].items()}

    def client_ip_of(self, rid):
        def row():
            out = subprocess.run([os.path.join(os.path.dirname(FASTGATED), "fastgate-cli"),
                                  "--socket", self.gw.sock, "--json", "logs", "show", rid],
                                 capture_output=True, text=True, timeout=10)
            return json.loads(out.stdout) if out.returncode == 0 else None
        return wait_for(row, what="the audit row")["client_ip"]


def test_without_trusted_proxies_the_client_header_is_dropped():
    # Fails if a client's X-Forwarded-For reaches the upstream or the audit (anyone can
    # write one), or if the gateway's own headers are missing.
    with Env() as env:
        rid, up = env.chat({"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"})
        assert up["x-forwarded-for"] == "127.0.0.1", up
        assert up["x-forwarded-proto"] == "http", up
        assert env.client_ip_of(rid) == "127.0.0.1"


def test_a_trusted_proxy_chain_is_kept_and_names_the_client():
    # The peer (127.0.0.1) is a trusted proxy, and so is 10.1.1.1 in the chain: the client
    # is the last untrusted hop, 203.0.113.7. Fails if the chain is dropped, the peer not
    # appended, the proxy's X-Forwarded-Proto not kept, or the audit keeps the peer.
    with Env("trusted_proxies: [127.0.0.1, 10.0.0.0/8]\n") as env:
        rid, up = env.chat({"X-Forwarded-For": "198.51.100.9, 203.0.113.7, 10.1.1.1",
                            "X-Forwarded-Proto": "https"})
        assert up["x-forwarded-for"] == "198.51.100.9, 203.0.113.7, 10.1.1.1, 127.0.0.1", up
        assert up["x-forwarded-proto"] == "https", up
        assert env.client_ip_of(rid) == "203.0.113.7"
        # without a header from the proxy: the peer itself
        rid, up = env.chat()
        assert up["x-forwarded-for"] == "127.0.0.1" and up["x-forwarded-proto"] == "http", up
        assert env.client_ip_of(rid) == "127.0.0.1"
        # garbage in the chain ends the belief: the hop after it is the client
        rid, up = env.chat({"X-Forwarded-For": "not-an-ip, 10.2.2.2"})
        assert env.client_ip_of(rid) == "10.2.2.2"


def test_an_untrusted_peer_is_not_believed_even_with_ranges_set():
    # trusted_proxies names other networks: the loopback peer's header is dropped.
    with Env("trusted_proxies: 10.0.0.0/8, fd00::/8\n") as env:
        rid, up = env.chat({"X-Forwarded-For": "203.0.113.7"})
        assert up["x-forwarded-for"] == "127.0.0.1", up
        assert env.client_ip_of(rid) == "127.0.0.1"


def test_a_bad_range_is_named_by_file_and_line():
    d = tmpdir("fg-fwd-bad-")
    try:
        path = os.path.join(d, "fastgate.yaml")
        with open(path, "w") as f:
            f.write("listen: 127.0.0.1:0\ntrusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.1/8\n")
        p = subprocess.run([FASTGATED, "-c", path, "--check", "--routes", d],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode != 0, p
        assert '%s:4: trusted_proxies: "10.0.0.1/8" is not an address or a range' % path \
            in p.stderr, p.stderr
    finally:
        rmtree(d)



def test_allow_ips_refuses_other_addresses_before_any_key_is_tried():
    # Issue 20, item 9 (the global part): a client outside allow_ips gets 403
    # ip_not_allowed, audited, nothing forwarded, even with a valid key; the address is the
    # one trusted_proxies decides. Fails if such a request is served or not audited.
    with Env("allow_ips: [10.0.0.0/8]\ntrusted_proxies: [127.0.0.1]\n") as env:
        st, h, data = env.gw.request("POST", "/v1/chat/completions", CHAT,
                                     {"X-API-Key": env.key})
        assert st == 403 and json.loads(data)["error"]["code"] == "ip_not_allowed", (st, data)
        assert env.mock.stats()["chat"] == 0
        assert env.client_ip_of(h["x-request-id"]) == "127.0.0.1"
        # through the trusted proxy, from inside the range: served
        rid, up = env.chat({"X-Forwarded-For": "10.9.8.7"})
        assert env.client_ip_of(rid) == "10.9.8.7"
        # no key at all from outside: still the address first
        st, _, data = env.gw.request("POST", "/v1/chat/completions", CHAT, {})
        assert st == 403, (st, data)
        # the gateway's own endpoints stay open (a load balancer's health probe)
        st, _, _ = env.gw.request("GET", "/health")
        assert st == 200


def test_cors_preflight_without_a_key_and_headers_on_answers_for_listed_origins_only():
    # Issue 20, item 9: off by default; with cors_origins, a preflight from a listed origin
    # is answered 204 without a key (and audited), and answers (errors too) carry
    # Access-Control-Allow-Origin and expose X-Request-Id; another origin gets nothing.
    # Fails if a preflight needs a key, if an unlisted origin is named, or if CORS is on
    # by default.
    with Env() as env:
        st, h, _ = env.gw.request("OPTIONS", "/v1/chat/completions", None,
                                  {"Origin": "https://app.example.com",
                                   "Access-Control-Request-Method": "POST"})
        assert st == 401 and "access-control-allow-origin" not in h, (st, h)
    with Env("cors_origins: [https://app.example.com]\n") as env:
        pre = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
        st, h, data = env.gw.request("OPTIONS", "/v1/chat/completions", None, pre)
        assert st == 204 and data == b"", (st, h, data)
        assert h["access-control-allow-origin"] == "https://app.example.com", h
        assert "POST" in h["access-control-allow-methods"], h
        assert h["access-control-allow-headers"] == "authorization, content-type", h
        assert h["vary"] == "Origin", h
        assert env.mock.stats()["requests"] == 0
        wait_for(lambda: env.client_ip_of(h["x-request-id"]), what="the preflight's row")
        # an answer, and an error, from that origin carry the headers
        st, h, _ = env.gw.request("POST", "/v1/chat/completions", CHAT,
                                  {"X-API-Key": env.key, "Origin": "https://app.example.com"})
        assert st == 200 and h["access-control-allow-origin"] == "https://app.example.com", h
        assert "X-Request-Id" in h["access-control-expose-headers"], h
        st, h, _ = env.gw.request("POST", "/v1/chat/completions", CHAT,
                                  {"Origin": "https://app.example.com"})
        assert st == 401 and h["access-control-allow-origin"] == "https://app.example.com", h
        # another origin: nothing, and its preflight is no preflight (401 without a key)
        st, h, _ = env.gw.request("OPTIONS", "/v1/chat/completions", None,
                                  dict(pre, Origin="https://evil.example"))
        assert st == 401 and "access-control-allow-origin" not in h, (st, h)


def test_a_bad_origin_is_named_by_file_and_line():
    d = tmpdir("fg-cors-bad-")
    try:
        path = os.path.join(d, "fastgate.yaml")
        with open(path, "w") as f:
            f.write("cors_origins:\n  - https://ok.example\n  - https://app.example.com/path\n")
        p = subprocess.run([FASTGATED, "-c", path, "--check", "--routes", d],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 1, p
        assert '%s:3: cors_origins: "https://app.example.com/path" is not an origin' % path \
            in p.stderr, p.stderr
    finally:
        rmtree(d)

if __name__ == "__main__":
    run_tests(globals())
