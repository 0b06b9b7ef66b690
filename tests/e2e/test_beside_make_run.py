"""`make test` beside `make run` (issue 20, item 7): with the demo up on its default ports
and paths (127.0.0.1:8514 and 8515, ./fastgate.sock, keys/*.db, run/), representative
tests pass — test_demo.py (which starts a demo of its own), test_cli.py (the control
socket and the CLI) and the stress smoke (ports, fds) — and the demo still serves after
them. The demo is started here, as `make run` starts it, and stopped by its PID.

When the default ports are taken (a real `make run`, or anything else), the test says so
and passes without starting a demo: the other tests then run beside whatever holds them.
Like `make run`, the demo writes keys/fastgate.db, keys/audit.db and run/ in the source
tree (all git-ignored)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ROOT, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

DEMO_PORTS = (8514, 8515)
RELEASE = os.path.join(ROOT, "build")


def port_taken(port):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def group_alive(pgid):
    return bool(subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).stdout)


def demo_answers(key):
    req = urllib.request.Request("http://127.0.0.1:%d/v1/models" % DEMO_PORTS[0],
                                 headers={"Authorization": "Bearer " + key})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def run_suite(argv, timeout):
    p = subprocess.run([sys.executable] + argv, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    out = p.stdout + p.stderr
    assert p.returncode == 0, "%s failed beside the demo:\n%s" % (" ".join(argv), out[-4000:])
    return out.strip().splitlines()[-1]


def test_tests_pass_while_the_demo_runs_on_its_default_ports_and_paths():
    # Fails if a test collides with the demo (a fixed port or path of its own), or breaks it.
    taken = [p for p in DEMO_PORTS if port_taken(p)]
    if taken:
        print("skip: 127.0.0.1:%s already in use (a `make run`?); not starting a demo"
              % ",".join(map(str, taken)), flush=True)
        return
    missing = [b for b in ("fastgated", "fastgate-cli", "mock-upstream")
               if not os.access(os.path.join(RELEASE, b), os.X_OK)]
    assert not missing, "build/%s missing: `make` builds what `make run` starts" % missing[0]

    work = tmpdir("fg-beside-")
    log = open(os.path.join(work, "demo.out"), "w+b")
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTGATE_PORT", "FASTGATE_MOCK_PORT", "FASTGATE_RUN_DIR")}
    demo = subprocess.Popen(["bash", os.path.join(ROOT, "tests", "run-demo.sh")], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        def printed():
            log.seek(0)
            text = log.read().decode("utf-8", "replace")
            assert demo.poll() is None, "the demo exited early:\n" + text
            return "Ctrl-C stops" in text and text
        text = wait_for(printed, timeout=60, what="the demo to start")
        key = text.split("Demo key (also in ", 1)[1].split("): ", 1)[1].split()[0]
        assert demo_answers(key) == 200

        results = [run_suite(["tests/e2e/test_demo.py"], 120),
                   run_suite(["tests/e2e/test_cli.py"], 300),
                   run_suite(["tests/stress/run.py", "--smoke"], 300)]
        print("beside the demo: " + "; ".join(results), flush=True)

        assert demo.poll() is None and demo_answers(key) == 200, "the demo broke meanwhile"
    finally:
        # by PID: run-demo.sh stops its mock and fastgated (SIGTERM, they drain) and exits
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
        try:
            rc = demo.wait(45)
        except subprocess.TimeoutExpired:
            rc = None
        end = time.monotonic() + 15
        while time.monotonic() < end and group_alive(demo.pid):
            time.sleep(0.1)
        left = group_alive(demo.pid)
        if rc is None or left:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
        log.close()
        rmtree(work)
    assert rc == 0, "the demo exited %s on SIGTERM" % rc
    assert not left, "a process of the demo outlived it"
    for p in DEMO_PORTS:
        assert not port_taken(p), "port %d still answers after the demo stopped" % p


if __name__ == "__main__":
    run_tests(globals())
