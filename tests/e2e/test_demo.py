"""`make run`'s script: starts the mock and the gateway, prints a curl line that works when
pasted, and stops both on Ctrl-C (SIGINT)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ROOT, rmtree, run_tests, tmpdir, wait_for  # noqa: E402


def free_ports(n):
    """n different ports free now (held together while picked, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_make_run_prints_a_curl_line_that_streams_and_ctrl_c_stops_everything():
    run_dir = tmpdir("fg-demo-")
    log = open(os.path.join(run_dir, "demo.out"), "w+b")
    # Its own ports and directory: a `make run` on the default ones may be up (issue 20).
    gw_port, mock_port = free_ports(2)
    env = dict(os.environ, FASTGATE_PORT=str(gw_port), FASTGATE_MOCK_PORT=str(mock_port),
               FASTGATE_RUN_DIR=run_dir)
    p = subprocess.Popen(["bash", os.path.join(ROOT, "tests", "run-demo.sh")], cwd=ROOT, env=env,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def printed():
            log.seek(0)
            text = log.read().decode("utf-8", "replace")
            assert p.poll() is None, "make run exited early:\n" + text
            return "Ctrl-C stops" in text and text
        text = wait_for(printed, timeout=60, what="make run to print its curl line")
        m = re.search(r"(curl -N .*?)\n\n", text, re.S)
        assert m, text
        cmd = m.group(1).replace("\\\n", " ")
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=30)
        body = out.stdout.decode()
        assert out.returncode == 0 and body.rstrip().endswith("data: [DONE]"), body
        text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                       for line in body.splitlines()
                       if line.startswith("data: {") and json.loads(line[6:])["choices"])
        assert text == "Hello from mock. You said: Hello", text
        children = subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True).stdout.split()
        assert len(children) >= 2, children
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(30) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and subprocess.run(["pgrep", "-g", str(p.pid)],
                                                             capture_output=True).stdout:
            time.sleep(0.1)
        assert not subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True).stdout, \
            "a process of make run outlived Ctrl-C"
        # the log keeps fastgated's last words (issue 20: tee died with Ctrl-C first)
        with open(os.path.join(run_dir, "fastgated.log"), "rb") as f:
            last = f.read().decode("utf-8", "replace")
        assert "signal 2: no new connections" in last, last[-800:]
        assert "all requests finished; exiting" in last and "second signal" not in last, \
            last[-800:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        log.close()
        rmtree(run_dir)


def test_a_taken_port_fails_clearly_and_names_the_variable_to_change():
    # Fails if the demo starts anyway (its route would point at someone else's server) or
    # exits without saying which port and which variable moves it.
    run_dir = tmpdir("fg-demo-")
    gw_port, = free_ports(1)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    try:
        env = dict(os.environ, FASTGATE_PORT=str(gw_port), FASTGATE_MOCK_PORT=str(taken),
                   FASTGATE_RUN_DIR=run_dir)
        p = subprocess.run(["bash", os.path.join(ROOT, "tests", "run-demo.sh")], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
        assert "port %d on 127.0.0.1 is already in use" % taken in p.stderr, p.stderr
        assert "FASTGATE_MOCK_PORT" in p.stderr, p.stderr
    finally:
        holder.close()
        rmtree(run_dir)


if __name__ == "__main__":
    run_tests(globals())
