"""End-to-end test harness: starts the real fastgated and the C mock upstream on free
loopback ports, talks to the control socket, and runs test functions.

Every process started here is tracked by PID and stopped here; nothing else is touched.
Every wait is bounded in time. Sanitizer reports in a daemon's stderr fail the run."""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.abspath(os.environ.get("FG_BUILD", os.path.join(ROOT, "build-test")))
FASTGATED = os.path.join(BUILD, "fastgated")
CLI = os.path.join(BUILD, "fastgate-cli")
MOCK = os.path.join(BUILD, "mock-upstream")

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "SUMMARY: UndefinedBehaviorSanitizer", "WARNING: ThreadSanitizer")

os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:exitcode=99")
os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")


def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))


class Proc:
    """A child process whose stdout/stderr go to files we can read while it runs."""

    def __init__(self, argv, workdir, name, env=None):
        self.name = name
        self.out_path = os.path.join(workdir, name + ".out")
        self.err_path = os.path.join(workdir, name + ".err")
        self.out = open(self.out_path, "wb")
        self.err = open(self.err_path, "wb")
        self.p = subprocess.Popen(argv, stdout=self.out, stderr=self.err, stdin=subprocess.DEVNULL,
                                  env=env or os.environ.copy(), cwd=workdir)
        self.pid = self.p.pid

    def stdout(self):
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Signal and wait; returns the exit code. Escalates to SIGKILL after timeout."""
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
                raise AssertionError("%s did not exit within %.0fs of signal %d" % (self.name, timeout, sig))
        self.out.close()
        self.err.close()
        return self.p.returncode

    def sanitizer_report(self):
        err = self.stderr()
        for mark in SANITIZER_MARKS:
            if mark in err:
                i = err.index(mark)
                return err[max(0, i - 200): i + 3000]
        return None


class Mock:
    def __init__(self, workdir, extra=()):
        self.proc = Proc([MOCK, "--listen", "127.0.0.1:0"] + list(extra), workdir, "mock")
        line = wait_for(lambda: re.search(r"listening 127\.0\.0\.1:(\d+)", self.proc.stdout()),
                        what="mock upstream to listen")
        self.port = int(line.group(1))
        self.url = "http://127.0.0.1:%d" % self.port

    def stats(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        c.request("GET", "/__mock/stats")
        r = c.getresponse()
        d = json.loads(r.read())
        c.close()
        return d

    def reset(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        c.request("POST", "/__mock/reset", body=b"")
        c.getresponse().read()
        c.close()

    def stop(self):
        rc = self.proc.stop()
        rep = self.proc.sanitizer_report()
        if rep:
            raise AssertionError("mock upstream sanitizer report:\n" + rep)
        return rc


def demo_routes(mock_url, extra=""):
    return """routes:
  - name: chat
    priority: 50
    match:
      path: /v1/chat/completions
      methods: [POST]
    upstream:
      url: %(m)s/v1/chat/completions
      api_key: upstream-secret-key
    timeout: 5
    idle_timeout: 3
    strip_headers: [x-debug]
    add_headers: { X-Proxy-Source: fastgate }
  - name: models
    match:
      path: /v1/models
      methods: [GET]
    upstream:
      url: %(m)s
      api_key: upstream-secret-key
  - name: echo
    match:
      path: /echo/**
    upstream:
      url: %(m)s
    strip_prefix: /echo
    timeout: 5
%(extra)s""" % {"m": mock_url, "extra": extra}


class Gateway:
    """A running fastgated with its own routes dir, key store and control socket."""

    def __init__(self, workdir, routes_yaml, extra_args=(), env=None, name="fastgated"):
        self.workdir = workdir
        self.routes_dir = os.path.join(workdir, "routes.d")
        os.makedirs(self.routes_dir, exist_ok=True)
        if routes_yaml is not None:
            with open(os.path.join(self.routes_dir, "10-test.yaml"), "w") as f:
                f.write(routes_yaml)
        self.sock = os.path.join(workdir, "ctl.sock")
        self.keys = os.path.join(workdir, "keys.db")
        self.extra_args = list(extra_args)
        self.env = env
        self.name = name
        self.start()

    def start(self):
        argv = [FASTGATED, "--listen", "127.0.0.1:0", "--routes", self.routes_dir,
                "--keys", self.keys, "--audit", os.path.join(self.workdir, "audit.db"),
                "--control", self.sock] + self.extra_args
        # FG_WORKERS=N runs every gateway with N event loops, unless the test chose itself
        workers = os.environ.get("FG_WORKERS")
        if workers and "--workers" not in self.extra_args:
            argv += ["--workers", workers]
        self.proc = Proc(argv, self.workdir, self.name, env=self.env)

        def listening():
            if not self.proc.alive():
                raise AssertionError("fastgated exited at start:\n" + self.proc.stderr())
            return re.search(r"listening on (https?)://127\.0\.0\.1:(\d+)", self.proc.stderr())
        m = wait_for(listening, what="fastgated to listen")
        self.port = int(m.group(2))
        self.base = "%s://127.0.0.1:%d" % (m.group(1), self.port)

    def stop(self, sig=signal.SIGTERM, timeout=40.0):
        rc = self.proc.stop(sig, timeout)
        rep = self.proc.sanitizer_report()
        if rep:
            raise AssertionError("fastgated sanitizer report:\n" + rep)
        return rc

    # --- control socket, spoken directly (independent of the CLI under test) ---
    def ctl(self, cmd, args=None, timeout=10):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.sock)
        f = s.makefile("rwb")
        greeting = json.loads(f.readline())
        assert greeting.get("protocol") == 1, greeting
        f.write((json.dumps({"id": 1, "cmd": cmd, "args": args or {}}) + "\n").encode())
        f.flush()
        reply = json.loads(f.readline())
        f.close()
        s.close()
        return reply

    def create_key(self, name="test", **kw):
        args = {"name": name}
        args.update(kw)
        r = self.ctl("key.create", args)
        assert r.get("ok"), r
        return r["result"]

    def cli(self, *args, env=None, timeout=20):
        e = os.environ.copy()
        e.update(env or {})
        p = subprocess.run([CLI, "--socket", self.sock] + list(args), capture_output=True,
                           timeout=timeout, env=e)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    # --- HTTP ---
    def request(self, method, path, body=None, headers=None, timeout=10):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = dict(headers or {})
            headers.setdefault("Content-Type", "application/json")
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        c.close()
        return r.status, hdrs, data


class Closing:
    """A test environment used as `with Env(...) as env:`: its close() runs on leaving,
    whatever the block raised (which still propagates)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def free_port():
    """A loopback port nothing listens on (bound, then closed): connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_exchange(port, payload, timeout=5.0, read_until_close=True):
    """Send raw bytes, read until the server closes (or timeout). Returns (bytes, closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(payload)
    chunks = []
    closed = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                d = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not d:
                closed = True
                break
            chunks.append(d)
            if not read_until_close:
                break
    finally:
        s.close()
    return b"".join(chunks), closed


def run_tests(module_globals, setup=None, teardown=None):
    """Run every test_* function in definition order; print one line per test and a
    closing 'N passed, N failed' line. setup() returns a context passed to each test."""
    tests = [(n, f) for n, f in module_globals.items() if n.startswith("test_") and callable(f)]
    only = os.environ.get("FG_ONLY")
    if only:
        tests = [(n, f) for n, f in tests if only in n]
    passed = failed = 0
    ctx = setup() if setup else None
    try:
        for name, fn in tests:
            t0 = time.monotonic()
            try:
                fn(ctx) if setup else fn()
                passed += 1
                print("ok   %s (%.2fs)" % (name, time.monotonic() - t0), flush=True)
            except Exception:
                failed += 1
                print("FAIL %s\n%s" % (name, traceback.format_exc()), flush=True)
    finally:
        if teardown:
            try:
                teardown(ctx)
            except Exception:
                failed += 1
                print("FAIL teardown\n%s" % traceback.format_exc(), flush=True)
    print("%d passed, %d failed" % (passed, failed), flush=True)
    sys.exit(1 if failed else 0)


def tmpdir(prefix="fg-e2e-"):
    return tempfile.mkdtemp(prefix=prefix)


def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)
