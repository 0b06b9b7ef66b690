"""End to end: reload re-reads fastgate.yaml (issue 20, item 6). SIGHUP and the control
channel's `reload` (fastgate-cli reload) read the file again with the rules of the start
(flags still override it), apply the settings that can change at run time, keep the
running value of those that need a restart with a warning, and apply nothing at all when
the file or a route file is bad (errors as FILE:LINE). Every test starts its own gateway
and mock."""

import json
import os
import re
import signal
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (FASTGATED, Gateway, Mock, Proc, free_port, rmtree, run_tests,  # noqa: E402
                     tmpdir, wait_for)

ROUTES = """routes:
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: %(m)s, api_key: upstream-key }
"""
CHAT = {"model": "reload-model", "messages": [{"role": "user", "content": "hi"}]}
ORIGIN = "https://app.example.com"


class FileListenGateway(Gateway):
    """A gateway whose listen address comes from the file (no --listen flag)."""

    def __init__(self, workdir, routes_yaml, cfg_path):
        self.cfg_path = cfg_path
        super().__init__(workdir, routes_yaml)

    def start(self):
        argv = [FASTGATED, "-c", self.cfg_path, "--routes", self.routes_dir, "--keys", self.keys,
                "--audit", os.path.join(self.workdir, "audit.db"), "--control", self.sock]
        self.proc = Proc(argv, self.workdir, self.name)
        m = wait_for(lambda: self.proc.alive() and re.search(
            r"listening on http://127\.0\.0\.1:(\d+)", self.proc.stderr()),
            what="fastgated to listen")
        self.port = int(m.group(1))
        self.base = "http://127.0.0.1:%d" % self.port


class Env:
    def __init__(self, config, listen_from_file=False):
        self.dir = tmpdir("fg-reload-")
        self.cfg = os.path.join(self.dir, "fastgate.yaml")
        self.write(config)
        self.mock = Mock(self.dir)
        try:
            routes = ROUTES % {"m": self.mock.url}
            if listen_from_file:
                self.gw = FileListenGateway(self.dir, routes, self.cfg)
            else:
                self.gw = Gateway(self.dir, routes, extra_args=["-c", self.cfg])
            self.key = self.gw.create_key("reload")["key"]
        except BaseException:
            self.mock.stop()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.gw.stop()
        finally:
            self.mock.stop()
        rmtree(self.dir)

    def write(self, text):
        with open(self.cfg, "w") as f:
            f.write(text)

    def chat(self, body=None, headers=None, port=None):
        h = {"X-API-Key": self.key}
        h.update(headers or {})
        if port is not None:
            saved, self.gw.port = self.gw.port, port
        try:
            return self.gw.request("POST", "/v1/chat/completions", body or CHAT, h)
        finally:
            if port is not None:
                self.gw.port = saved

    def status(self, **kw):
        return self.chat(**kw)[0]

    def sighup(self):
        """SIGHUP, then wait (bounded) for the reload's log line: done or failed."""
        marks = ("configuration re-read from", "reload failed")
        before = sum(self.gw.proc.stderr().count(m) for m in marks)
        os.kill(self.gw.proc.pid, signal.SIGHUP)
        wait_for(lambda: sum(self.gw.proc.stderr().count(m) for m in marks) > before,
                 what="the reload's log line")
        return self.gw.proc.stderr()


def big_body(n):
    return dict(CHAT, padding="x" * n)


def test_sighup_and_cli_reload_apply_run_time_settings():
    # allow_ips by SIGHUP, then max_body and cors_origins by `fastgate-cli reload`. Fails
    # if a reload does not read fastgate.yaml again (each change is seen only after it).
    with Env("allow_ips: [10.0.0.0/8]\n") as env:
        st, _, data = env.chat()
        assert st == 403 and json.loads(data)["error"]["code"] == "ip_not_allowed", (st, data)
        env.write("allow_ips: [10.0.0.0/8, 127.0.0.1]\n")
        env.sighup()
        assert env.status() == 200

        assert env.status(body=big_body(4000)) == 200
        st, h, _ = env.chat(headers={"Origin": ORIGIN})
        assert st == 200 and "access-control-allow-origin" not in h, (st, h)
        env.write("allow_ips: [127.0.0.1]\nmax_body: 2048\ncors_origins: [%s]\n" % ORIGIN)
        rc, out, err = env.gw.cli("reload")
        assert rc == 0 and "Routes reloaded: 1 routes, 1 enabled." in out, (rc, out, err)
        assert err == "", err   # nothing that needs a restart changed
        st, _, data = env.chat(body=big_body(4000))
        assert st == 413, (st, data)
        st, h, _ = env.chat(headers={"Origin": ORIGIN})
        assert st == 200 and h.get("access-control-allow-origin") == ORIGIN, (st, h)


def test_restart_only_settings_warn_and_keep_their_running_value():
    # listen (from the file, no flag) and audit_memory_cap changed: the reload succeeds,
    # says for each "changed in FILE; restart fastgated to apply", and the gateway stays on
    # its port; a run-time setting in the same file is applied. Fails if a restart-only
    # change is silent, or applied (the old port stops answering), or blocks the rest.
    port, other = free_port(), free_port()
    with Env("listen: 127.0.0.1:%d\naudit_memory_cap: 1000\n" % port,
             listen_from_file=True) as env:
        assert env.gw.port == port
        env.write("listen: 127.0.0.1:%d\naudit_memory_cap: 2000\nmax_body: 2048\n" % other)
        r = env.gw.ctl("reload")
        assert r["ok"], r
        warns = r["result"].get("warnings", [])
        assert ("listen: changed in %s; restart fastgated to apply (still 127.0.0.1:%d)"
                % (env.cfg, port)) in warns, warns
        assert ("audit_memory_cap: changed in %s; restart fastgated to apply (still 1000)"
                % env.cfg) in warns, warns
        assert len(warns) == 2, warns
        assert env.status() == 200
        assert env.status(body=big_body(4000)) == 413   # the run-time one applies
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", other)) != 0, "listening on the new port"
        # SIGHUP logs the same; fastgate-cli prints it on stderr and exits 0
        log = env.sighup()
        assert "reload: listen: changed in %s; restart fastgated to apply" % env.cfg in log, log
        rc, out, err = env.gw.cli("reload")
        assert rc == 0 and "listen: changed in %s" % env.cfg in err, (rc, out, err)
        # back to the running value: nothing to warn about
        env.write("listen: 127.0.0.1:%d\naudit_memory_cap: 1000\n" % port)
        r = env.gw.ctl("reload")
        assert r["ok"] and "warnings" not in r["result"], r
        assert env.status(body=big_body(4000)) == 200


def test_a_bad_file_keeps_the_settings_and_routes_and_says_file_line():
    # A file with a valid change (allow_ips that would shut us out, a new routes dir) and
    # a bad value on line 3: the reload fails with FILE:3 by every way in, and nothing of
    # it applies. Fails if the good half is applied, the routes change, or the error lacks
    # FILE:LINE.
    with Env("max_body: 1M\n") as env:
        other = os.path.join(env.dir, "other.d")
        os.makedirs(other)
        with open(os.path.join(other, "10.yaml"), "w") as f:
            f.write("routes:\n  - name: elsewhere\n    match: { path: /x }\n"
                    "    upstream: { url: %s }\n" % env.mock.url)
        env.write("allow_ips: [10.0.0.0/8]\nroutes: %s\nmax_body: lots\n" % other)
        want = "%s:3: max_body: expected a size like 1048576, 512K or 10M" % env.cfg
        r = env.gw.ctl("reload")
        assert not r["ok"] and r["error"]["code"] == "reload_failed", r
        assert want in r["error"]["errors"], r
        rc, out, err = env.gw.cli("reload")
        assert rc == 1 and want in err and "previous configuration" in err, (rc, out, err)
        log = env.sighup()
        assert "reload failed" in log and want in log, log
        assert env.status() == 200
        r = env.gw.ctl("route.list")
        assert [x["name"] for x in r["result"]] == ["chat"], r


def test_a_bad_route_file_keeps_a_good_config_from_applying():
    # All or nothing: the file is good (allow_ips shuts 127.0.0.1 out) but a route file is
    # not; nothing applies. Fails if the settings are swapped in before the routes are read.
    with Env("") as env:
        with open(os.path.join(env.gw.routes_dir, "20-bad.yaml"), "w") as f:
            f.write("routes:\n  - name: broken\n    upstream: { url: nope }\n")
        env.write("allow_ips: [10.0.0.0/8]\n")
        r = env.gw.ctl("reload")
        assert not r["ok"] and any("20-bad.yaml:" in e for e in r["error"]["errors"]), r
        assert env.status() == 200
        os.unlink(os.path.join(env.gw.routes_dir, "20-bad.yaml"))
        assert env.gw.ctl("reload")["ok"]
        assert env.status() == 403


def test_a_failed_reload_leaves_the_restart_only_settings_as_they_ran():
    # listen changed, and a route file broken: the reload fails. With the route file fixed,
    # the same file must still warn that listen changed. Fails if the failed reload took
    # the new address as the running one (or anything else of it).
    port, other = free_port(), free_port()
    with Env("listen: 127.0.0.1:%d\n" % port, listen_from_file=True) as env:
        bad = os.path.join(env.gw.routes_dir, "20-bad.yaml")
        with open(bad, "w") as f:
            f.write("routes:\n  - name: broken\n    upstream: { url: nope }\n")
        env.write("listen: 127.0.0.1:%d\n" % other)
        r = env.gw.ctl("reload")
        assert not r["ok"], r
        os.unlink(bad)
        r = env.gw.ctl("reload")
        assert r["ok"] and r["result"].get("warnings") == [
            "listen: changed in %s; restart fastgated to apply (still 127.0.0.1:%d)"
            % (env.cfg, port)], r
        assert env.status() == 200


def test_a_flag_still_overrides_the_file_after_reload():
    # The harness gives --routes DIR; the file names another routes dir and changes
    # max_body. After the reload max_body applies (fails without a re-read of the file)
    # and the routes still come from the flag's dir (fails if the flags are not applied
    # again over the file).
    with Env("") as env:
        other = os.path.join(env.dir, "other.d")
        os.makedirs(other)
        with open(os.path.join(other, "10.yaml"), "w") as f:
            f.write("routes:\n  - name: elsewhere\n    match: { path: /x }\n"
                    "    upstream: { url: %s }\n" % env.mock.url)
        env.write("routes: %s\nmax_body: 2048\n" % other)
        r = env.gw.ctl("reload")
        assert r["ok"] and "warnings" not in r["result"], r
        assert env.status(body=big_body(4000)) == 413
        r = env.gw.ctl("route.list")
        assert [x["name"] for x in r["result"]] == ["chat"], r
        assert env.status() == 200


def test_reloads_under_load_swap_the_lists_cleanly():
    # The CIDR and origin lists are freed on every reload while requests read them: 40
    # reloads under load, each request must see one whole set or the other (200 while the
    # trusted peer's client 203.0.113.9 is allowed, with its origin named back; 403 while
    # the peer is not trusted and 127.0.0.1 not allowed), and the sanitizer build must
    # report nothing at stop.
    a = ("allow_ips: [203.0.113.0/24]\ntrusted_proxies: [127.0.0.1]\n"
         "cors_origins: [%s, https://b.example]\n" % ORIGIN)
    b = "allow_ips: [10.0.0.0/8]\ntrusted_proxies: [10.0.0.0/8]\ncors_origins: [\"*\"]\n"
    with Env(a) as env:
        stop = threading.Event()
        seen, bad = {}, []

        def load():
            while not stop.is_set():
                try:
                    st, h, data = env.chat(headers={"Origin": ORIGIN,
                                                    "X-Forwarded-For": "203.0.113.9"})
                except Exception as e:  # noqa: BLE001 - a dropped request is the failure
                    bad.append(repr(e))
                    continue
                seen[st] = seen.get(st, 0) + 1
                if st not in (200, 403) or (st == 200 and h.get("access-control-allow-origin")
                                            != ORIGIN):
                    bad.append((st, h, data[:200]))
        ths = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for t in ths:
            t.start()
        try:
            for i in range(40):
                env.write(b if i % 2 == 0 else a)
                r = env.gw.ctl("reload")
                assert r["ok"], r
        finally:
            stop.set()
            for t in ths:
                t.join(20)
        assert not bad, bad[:5]
        assert seen.get(200) and seen.get(403), seen
    # Env.__exit__ stopped the gateway and checked its stderr for sanitizer reports


if __name__ == "__main__":
    run_tests(globals())
