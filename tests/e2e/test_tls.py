"""End to end: TLS on the listener (issue 20, item 1). A CA and server certificates are made
with the openssl command for each run; clients are curl (--cacert), Python's ssl module and
`openssl s_client`. A certificate swap under load (SIGHUP) fails no request and drops no open
connection; a bad certificate is reported at --check and at start, and a bad one on reload
keeps the old one serving. Every test starts its own gateway and mock."""

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import FASTGATED, Gateway, Mock, Proc, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

ROUTES = """routes:
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: %(m)s, api_key: upstream-key }
"""
CHAT = {"model": "tls-model", "messages": [{"role": "user", "content": "over tls"}]}


def openssl(*args, cwd):
    p = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


class Certs:
    """A CA and server certificates it signed, for 127.0.0.1 and localhost."""

    def __init__(self, d):
        self.dir = d
        self.ca = os.path.join(d, "ca.pem")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=fastgate test CA", cwd=d)

    def server(self, name):
        """(cert, key) paths for a certificate with CN=name."""
        with open(os.path.join(self.dir, name + ".ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name,
                cwd=self.dir)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", name + ".pem", "-days", "2",
                "-extfile", name + ".ext", cwd=self.dir)
        os.chmod(os.path.join(self.dir, name + ".key"), 0o600)
        return os.path.join(self.dir, name + ".pem"), os.path.join(self.dir, name + ".key")


def read_until(s, seconds, done=lambda got: False):
    """What s gives until it closes, done(bytes so far) holds, or seconds pass. A reset
    ends it too: a server closing with the client's bytes unread resets."""
    got = b""
    deadline = time.monotonic() + seconds
    try:
        while not done(got) and time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            d = s.recv(65536)
            if not d:
                break
            got += d
    except (socket.timeout, ConnectionResetError):
        pass
    return got


class Env:
    def __init__(self, extra_args=()):
        self.dir = tmpdir("fg-tls-")
        self.certs = Certs(self.dir)
        self.cert, self.key_file = self.certs.server("fastgate-a")
        # the gateway reads these paths; a swap replaces what they hold
        self.live_cert = os.path.join(self.dir, "live.pem")
        self.live_key = os.path.join(self.dir, "live.key")
        self.install(self.cert, self.key_file)
        self.mock = Mock(self.dir)
        try:
            self.gw = Gateway(self.dir, ROUTES % {"m": self.mock.url},
                              extra_args=["--tls-cert", self.live_cert, "--tls-key", self.live_key]
                              + list(extra_args))
            self.api_key = self.gw.create_key("tls")["key"]
        except BaseException:
            self.mock.stop()   # __exit__ does not run when __init__ fails
            rmtree(self.dir)
            raise

    def install(self, cert, key):
        """Replace the live files the way an operator's renewal does: write, then rename."""
        for src, dst in ((cert, self.live_cert), (key, self.live_key)):
            with open(src, "rb") as f:
                data = f.read()
            tmp = dst + ".new"
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o600)
            os.rename(tmp, dst)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.gw.stop()
        self.mock.stop()
        rmtree(self.dir)

    def context(self, alpn=("http/1.1",)):
        ctx = ssl.create_default_context(cafile=self.certs.ca)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx

    def conn(self, timeout=10):
        return http.client.HTTPSConnection("127.0.0.1", self.gw.port, timeout=timeout,
                                           context=self.context())

    def chat_on(self, c):
        c.request("POST", "/v1/chat/completions", body=json.dumps(CHAT),
                  headers={"Authorization": "Bearer " + self.api_key,
                           "Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()

    def peer_cn(self):
        """The CN of the certificate a new connection is given."""
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=5) as s:
            with self.context().wrap_socket(s, server_hostname="127.0.0.1") as t:
                subject = dict(x[0] for x in t.getpeercert()["subject"])
                return subject["commonName"]


def test_curl_with_cacert_gets_answers_over_tls_with_alpn_http11():
    with Env() as e:
        p = subprocess.run(["curl", "-sS", "-v", "--cacert", e.certs.ca, "-o", "-",
                            "-H", "Authorization: Bearer " + e.api_key,
                            "-H", "Content-Type: application/json",
                            "-d", json.dumps(CHAT), e.gw.base + "/v1/chat/completions"],
                           capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr.decode()
        assert e.gw.base.startswith("https://"), e.gw.base
        out = json.loads(p.stdout)
        assert "Hello from mock" in out["choices"][0]["message"]["content"], out
        err = p.stderr.decode()
        assert "ALPN: server accepted http/1.1" in err or "ALPN, server accepted to use http/1.1" in err, err
        # built-in endpoints answer over TLS too
        p = subprocess.run(["curl", "-sS", "--cacert", e.certs.ca, e.gw.base + "/health"],
                           capture_output=True, timeout=30)
        assert p.returncode == 0 and b'"status"' in p.stdout, p
        # a client that does not trust the CA is refused by curl: the listener really is TLS
        p = subprocess.run(["curl", "-sS", e.gw.base + "/health"], capture_output=True,
                           timeout=30)
        assert p.returncode == 60, p   # peer certificate cannot be authenticated


def test_upstream_is_told_the_client_came_over_https():
    with Env() as e:
        with contextlib.closing(e.conn()) as c:
            st, body = e.chat_on(c)
        assert st == 200, body
        last = e.mock.stats()["last"]
        hdrs = {k.lower(): v for k, v in last["headers"].items()}
        assert hdrs.get("x-forwarded-proto") == "https", hdrs
        assert hdrs.get("x-forwarded-for") == "127.0.0.1", hdrs


def test_alpn_without_http11_is_refused_and_without_alpn_is_served():
    with Env() as e:
        s = socket.create_connection(("127.0.0.1", e.gw.port), timeout=5)
        try:
            e.context(alpn=("h2",)).wrap_socket(s, server_hostname="127.0.0.1")
            raise AssertionError("a client offering only h2 completed the handshake")
        except ssl.SSLError as x:
            assert "NO APPLICATION PROTOCOL" in str(x).upper().replace("_", " "), x
        finally:
            s.close()
        with socket.create_connection(("127.0.0.1", e.gw.port), timeout=5) as s2:
            with e.context(alpn=("h2", "http/1.1")).wrap_socket(s2, server_hostname="127.0.0.1") as t:
                assert t.selected_alpn_protocol() == "http/1.1"
        with socket.create_connection(("127.0.0.1", e.gw.port), timeout=5) as s3:
            with e.context(alpn=None).wrap_socket(s3, server_hostname="127.0.0.1") as t:
                assert t.selected_alpn_protocol() is None
                t.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert t.recv(100).startswith(b"HTTP/1.1 200"), "no answer without ALPN"


def test_tls_below_1_2_is_refused():
    """The listener sets TLS 1.2 as its floor itself; OpenSSL 3's default security level
    refuses older versions as well, so this guards against that floor being lowered (a
    security level or cipher string set for old clients), not against a missing call."""
    with Env() as e:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(e.certs.ca)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():   # the client must be able to offer what is refused
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", e.gw.port), timeout=5) as s:
            try:
                ctx.wrap_socket(s, server_hostname="127.0.0.1")
                raise AssertionError("a TLS 1.1 handshake succeeded")
            except ssl.SSLError:
                pass
        ctx12 = e.context()
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", e.gw.port), timeout=5) as s:
            with ctx12.wrap_socket(s, server_hostname="127.0.0.1") as t:
                assert t.version() == "TLSv1.2"


def test_plain_http_on_the_tls_port_is_closed_and_the_gateway_serves_on():
    with Env() as e:
        s = socket.create_connection(("127.0.0.1", e.gw.port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        got = read_until(s, 5)
        s.close()
        assert not got.startswith(b"HTTP/"), got   # no plaintext answer on a TLS port
        with contextlib.closing(e.conn()) as c:
            st, body = e.chat_on(c)
        assert st == 200, body


def test_large_bodies_and_pipelined_requests_cross_tls_intact():
    """Requests bigger than a TLS record, and several in one write, so that what OpenSSL
    holds beyond the read buffer is still taken in."""
    with Env() as e:
        big = {"model": "tls-model", "messages": [{"role": "user", "content": "x" * 200000}]}
        body = json.dumps(big).encode()
        with contextlib.closing(e.conn(timeout=20)) as c:
            c.request("POST", "/v1/chat/completions", body=body,
                      headers={"Authorization": "Bearer " + e.api_key,
                               "Content-Type": "application/json"})
            r = c.getresponse()
            assert r.status == 200, r.read()
            r.read()
        assert e.mock.stats()["last"]["body"] == body.decode(), "the body changed on the way"
        one = (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        with socket.create_connection(("127.0.0.1", e.gw.port), timeout=5) as s:
            with e.context().wrap_socket(s, server_hostname="127.0.0.1") as t:
                t.sendall(one * 5 + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                got = read_until(t, 10)
        assert got.count(b"HTTP/1.1 200") == 6, got
        # a request pipelined behind one the upstream is slow to answer piles up in the read
        # buffer toward its cap; sizes around the cap make the last record sometimes not
        # fit, and OpenSSL keeps the rest of it: the socket will not announce those bytes
        def post(extra_headers, content):
            chat = json.dumps({"model": "tls-model",
                               "messages": [{"role": "user", "content": content}]}).encode()
            return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                    + e.api_key.encode() + b"\r\nContent-Type: application/json\r\n"
                    + extra_headers + b"Content-Length: " + str(len(chat)).encode()
                    + b"\r\n\r\n" + chat)
        slow = post(b"X-Mock-First-Byte-Delay-Ms: 200\r\n", "slow")
        for size in range(112000, 134000, 1500):
            with socket.create_connection(("127.0.0.1", e.gw.port), timeout=5) as s:
                with e.context().wrap_socket(s, server_hostname="127.0.0.1") as t:
                    t.sendall(slow + post(b"Connection: close\r\n", "y" * size))
                    got = read_until(t, 8)
            assert got.count(b"HTTP/1.1 200") == 2, (size, got[:300])


def test_certificate_swap_under_load_fails_no_request_and_keeps_open_connections():
    with Env() as e:
        cert_b, key_b = e.certs.server("fastgate-b")
        assert e.peer_cn() == "fastgate-a"
        held = e.conn()                     # a keep-alive connection opened before the swap
        st, _ = e.chat_on(held)
        assert st == 200
        stop = threading.Event()
        results = {"ok": 0, "fail": []}
        lock = threading.Lock()

        def client(keepalive):
            c = e.conn() if keepalive else None
            n = 0
            while not stop.is_set() and n < 5000:
                n += 1
                try:
                    cc = c or e.conn()
                    st2, b2 = e.chat_on(cc)
                    if not keepalive:
                        cc.close()
                    with lock:
                        if st2 == 200:
                            results["ok"] += 1
                        else:
                            results["fail"].append((st2, b2[:200]))
                except Exception as x:   # noqa: BLE001 - every failure is a finding
                    with lock:
                        results["fail"].append(repr(x))
            if c:
                c.close()

        threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: results["ok"] >= 100, timeout=60, what="load before the swap")
            before = results["ok"]
            e.install(cert_b, key_b)
            e.gw.proc.p.send_signal(signal.SIGHUP)
            wait_for(lambda: e.peer_cn() == "fastgate-b", timeout=15,
                     what="new connections to get the new certificate")
            wait_for(lambda: results["ok"] >= before + 200, timeout=60, what="load after the swap")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert results["fail"] == [], results["fail"][:5]
        # the connection opened before the swap still serves
        st, _ = e.chat_on(held)
        assert st == 200
        assert held.sock.getpeercert()["subject"][0][0][1] == "fastgate-a"
        held.close()
        assert "TLS certificate: CN=fastgate-b" in e.gw.proc.stderr()


def test_bad_certificate_on_reload_keeps_the_old_one_serving():
    with Env() as e:
        with open(e.live_cert, "w") as f:
            f.write("not a certificate\n")
        e.gw.proc.p.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in e.gw.proc.stderr(), timeout=15,
                 what="the reload error")
        assert "  tls_cert %s: not a PEM certificate chain" % e.live_cert in e.gw.proc.stderr()
        # the control channel's reload says the same, in its errors, and exits 1
        rc, out, err = e.gw.cli("reload")
        assert rc == 1 and "tls_cert %s: not a PEM certificate chain" % e.live_cert in err, (rc, out, err)
        assert e.peer_cn() == "fastgate-a"
        with contextlib.closing(e.conn()) as c:
            st, body = e.chat_on(c)
        assert st == 200, body


def test_cli_reload_swaps_the_certificate_and_tls_cannot_be_turned_off_by_reload():
    cfg_dir = tmpdir("fg-tls-cfg-")
    try:
        cfg = os.path.join(cfg_dir, "fastgate.yaml")
        with open(cfg, "w") as f:
            f.write("# the flags name the certificate\n")
        with Env(extra_args=["-c", cfg]) as e:
            cert_b, key_b = e.certs.server("fastgate-b")
            # the flags name the live files; the file names nothing yet
            e.install(cert_b, key_b)
            rc, out, err = e.gw.cli("reload")
            assert rc == 0, (rc, out, err)
            assert e.peer_cn() == "fastgate-b"
            assert "TLS certificate: CN=fastgate-b" in e.gw.proc.stderr()
        # a gateway whose TLS comes from the file: a reload that drops it keeps TLS on
        with open(cfg, "w") as f:
            f.write("tls_cert: %s\ntls_key: %s\n" % (os.path.join(cfg_dir, "c.pem"),
                                                     os.path.join(cfg_dir, "k.pem")))
        certs = Certs(cfg_dir)
        c_pem, k_pem = certs.server("from-file")
        os.rename(c_pem, os.path.join(cfg_dir, "c.pem"))
        os.rename(k_pem, os.path.join(cfg_dir, "k.pem"))
        mock = Mock(cfg_dir)
        gw = None
        try:
            gw = Gateway(cfg_dir, ROUTES % {"m": mock.url}, extra_args=["-c", cfg])
            assert gw.base.startswith("https://")
            with open(cfg, "w") as f:
                f.write("# TLS off?\n")
            rc, out, err = gw.cli("reload")
            assert rc == 0 and "tls_cert: unset in %s; restart fastgated to turn TLS off" % cfg in err, (rc, out, err)
            p = subprocess.run(["curl", "-sS", "--cacert", certs.ca, gw.base + "/health"],
                               capture_output=True, timeout=30)
            assert p.returncode == 0 and b'"status"' in p.stdout, p
        finally:
            if gw:
                gw.stop()
            mock.stop()
    finally:
        rmtree(cfg_dir)


def health_answer(t):
    """One whole answer to GET /health read from t."""
    return read_until(t, 30, lambda got: got.endswith(b"}\n"))


def test_release_build_under_valgrind_serves_tls_reloads_and_stops_cleanly():
    """OpenSSL is not instrumented for ASan: the TLS connection life (handshakes, a client
    that is not TLS, a client gone mid-handshake, keep-alive, a certificate swap with a
    connection open, shutdown) runs under valgrind in the optimised build users run."""
    release = os.path.join(os.path.dirname(os.path.dirname(FASTGATED)), "build", "fastgated")
    d = tmpdir("fg-tls-vg-")
    mock = Mock(d)
    proc = None
    try:
        certs = Certs(d)
        cert_a, key_a = certs.server("vg-a")
        cert_b, key_b = certs.server("vg-b")
        live_cert, live_key = os.path.join(d, "live.pem"), os.path.join(d, "live.key")
        for src, dst in ((cert_a, live_cert), (key_a, live_key)):
            with open(src, "rb") as f, open(dst, "wb") as g:
                g.write(f.read())
        routes = os.path.join(d, "routes.d")
        os.makedirs(routes)
        with open(os.path.join(routes, "r.yaml"), "w") as f:
            f.write(ROUTES % {"m": mock.url})
        sock = os.path.join(d, "ctl.sock")
        proc = Proc(["valgrind", "--error-exitcode=42", "--leak-check=full",
                             "--errors-for-leak-kinds=definite", "--num-callers=30", release,
                             "--listen", "127.0.0.1:0", "--routes", routes,
                             "--keys", os.path.join(d, "k.db"), "--audit", os.path.join(d, "a.db"),
                             "--control", sock, "--tls-cert", live_cert, "--tls-key", live_key], d,
                    "fastgated-vg")
        m = wait_for(lambda: re.search(r"listening on https://127\.0\.0\.1:(\d+)", proc.stderr()),
                     timeout=60, what="fastgated under valgrind to listen")
        port = int(m.group(1))
        ctx = ssl.create_default_context(cafile=certs.ca)
        health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        held = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                               server_hostname="127.0.0.1")
        held.sendall(health)
        assert health_answer(held).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET /health HTTP/1.1\r\n\r\n")   # not TLS
            try:
                s.recv(100)
            except ConnectionResetError:
                pass
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"\x16\x03\x01\x00\xff\x01")          # gone mid-handshake
        for src, dst in ((cert_b, live_cert), (key_b, live_key)):
            with open(src, "rb") as f, open(dst + ".new", "wb") as g:
                g.write(f.read())
            os.rename(dst + ".new", dst)
        proc.p.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS certificate: CN=vg-b" in proc.stderr(), timeout=60,
                 what="the reload under valgrind")
        held.sendall(health)                               # the old connection serves on
        assert health_answer(held).startswith(b"HTTP/1.1 200")
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                             server_hostname="127.0.0.1") as t:
            assert dict(x[0] for x in t.getpeercert()["subject"])["commonName"] == "vg-b"
            t.sendall(health)
            assert health_answer(t).startswith(b"HTTP/1.1 200")
        rc = proc.stop(signal.SIGTERM, timeout=60)
        held.close()
        err = proc.stderr()
        assert rc == 0 and "ERROR SUMMARY: 0 errors" in err, err[-6000:]
    finally:
        if proc and proc.alive():
            proc.stop(signal.SIGKILL, timeout=10)
        mock.stop()
        rmtree(d)


def check(args, cwd):
    p = subprocess.run([FASTGATED, "--check"] + args, capture_output=True, timeout=30, cwd=cwd)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_bad_or_mismatched_certificates_are_named_at_check_and_at_start():
    d = tmpdir("fg-tls-check-")
    try:
        certs = Certs(d)
        cert_a, key_a = certs.server("a")
        _, key_b = certs.server("b")
        routes = os.path.join(d, "routes.d")
        os.makedirs(routes)
        with open(os.path.join(routes, "r.yaml"), "w") as f:
            f.write(ROUTES % {"m": "http://127.0.0.1:9/"})
        junk = os.path.join(d, "junk.pem")
        with open(junk, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
        locked = os.path.join(d, "locked.key")
        openssl("pkey", "-in", key_a, "-out", locked, "-aes256", "-passout", "pass:secret", cwd=d)
        base = ["--routes", routes]
        rc, out, err = check(base + ["--tls-cert", cert_a, "--tls-key", key_a], d)
        assert rc == 0, err
        assert "%s: TLS certificate OK (CN=a, valid until " % cert_a in out, out
        cases = [
            (["--tls-cert", os.path.join(d, "missing.pem"), "--tls-key", key_a],
             "tls_cert %s: No such file or directory" % os.path.join(d, "missing.pem")),
            (["--tls-cert", junk, "--tls-key", key_a], "tls_cert %s: not a PEM certificate chain" % junk),
            (["--tls-cert", cert_a, "--tls-key", cert_a], "tls_key %s: not a PEM private key" % cert_a),
            (["--tls-cert", cert_a, "--tls-key", locked], "tls_key %s: not a PEM private key without a pass phrase" % locked),
            (["--tls-cert", cert_a, "--tls-key", key_b],
             "tls_key %s does not belong to the certificate in tls_cert %s" % (key_b, cert_a)),
            (["--tls-cert", cert_a], "TLS needs both tls_cert and tls_key"),
        ]
        for args, msg in cases:
            rc, out, err = check(base + args, d)
            assert rc == 1 and msg in err, (args, rc, out, err)
            # and the daemon does not start with it either
            p = subprocess.run([FASTGATED, "--listen", "127.0.0.1:0", "--keys", os.path.join(d, "k.db"),
                                "--audit", os.path.join(d, "a.db"), "--control", os.path.join(d, "c.sock")]
                               + base + args, capture_output=True, timeout=30, cwd=d,
                               stdin=subprocess.DEVNULL)
            assert p.returncode == 1 and msg in p.stderr.decode(), (args, p)
        # the same from fastgate.yaml
        cfg = os.path.join(d, "fastgate.yaml")
        with open(cfg, "w") as f:
            f.write("tls_cert: %s\ntls_key: %s\n" % (cert_a, key_b))
        rc, out, err = check(["-c", cfg] + base, d)
        assert rc == 1 and "does not belong to the certificate" in err, err
    finally:
        rmtree(d)


if __name__ == "__main__":
    run_tests(globals())
