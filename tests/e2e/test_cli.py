"""System test of fastgate-cli against the real daemon: every command, checked by its
effect on live traffic, plus bad input to the CLI and to the control socket."""

import json
import os
import re
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import CLI, Gateway, Mock, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

import subprocess  # noqa: E402

ROUTES = """routes:
  - name: primary
    priority: 10
    match: { path: /v1/models }
    upstream: { url: %(m)s/primary }
  - name: fallback
    priority: 20
    match: { path: /v1/models }
    upstream: { url: %(m)s/fallback }
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: %(m)s/v1/chat/completions }
"""

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Ctx:
    pass


def setup():
    c = Ctx()
    c.dir = tmpdir("fg-cli-")
    c.mock = Mock(c.dir)
    try:
        c.gw = Gateway(c.dir, ROUTES % {"m": c.mock.url})
    except BaseException:
        c.mock.stop()
        raise
    return c


def teardown(c):
    try:
        assert c.gw.stop() == 0
        c.mock.stop()
    finally:
        rmtree(c.dir)


def cli_json(c, *args):
    rc, out, err = c.gw.cli("--json", *args)
    assert rc == 0, (args, rc, out, err)
    return json.loads(out)


def served_by(c, key):
    """Which route answered GET /v1/models: the mock echoes the path it was sent."""
    st, _, data = c.gw.request("GET", "/v1/models", None, {"X-API-Key": key})
    assert st == 200, (st, data)
    return json.loads(data)["path"].strip("/")


def new_key(c, *extra):
    return cli_json(c, "key", "create", "--name", "cli-test", *extra)


# --- keys ------------------------------------------------------------------------------

def test_key_create_prints_the_secret_once_and_it_works(c):
    rc, out, err = c.gw.cli("key", "create", "--name", "alice")
    assert rc == 0, (out, err)
    secret = re.search(r"fg_[0-9A-Za-z]{46}", out).group(0)
    assert "shown only once" in out
    assert c.gw.request("GET", "/v1/models", None, {"X-API-Key": secret})[0] == 200
    rc, out, _ = c.gw.cli("key", "list")
    assert rc == 0 and "alice" in out and secret not in out, out
    rc, out, _ = c.gw.cli("--json", "key", "list")
    assert secret not in out and any(k["name"] == "alice" for k in json.loads(out))


def test_key_show_and_revoke_take_effect_at_once(c):
    k = new_key(c)
    shown = cli_json(c, "key", "show", str(k["id"]))
    assert shown["id"] == k["id"] and "key" not in shown, shown
    assert served_by(c, k["key"]) == "primary"
    rc, out, err = c.gw.cli("key", "revoke", str(k["id"]))
    assert rc == 0, err
    st, _, data = c.gw.request("GET", "/v1/models", None, {"X-API-Key": k["key"]})
    assert st == 401 and b"revoked" in data
    assert cli_json(c, "key", "show", str(k["id"]))["status"] == "revoked"


def test_key_route_policy_gives_403_elsewhere(c):
    k = new_key(c, "--routes", "primary,fallback")
    assert served_by(c, k["key"]) == "primary"
    st, _, data = c.gw.request("POST", "/v1/chat/completions", CHAT, {"X-API-Key": k["key"]})
    assert st == 403, (st, data)


def test_key_rpm_gives_429_with_retry_after(c):
    k = new_key(c, "--rpm", "3")
    codes = [c.gw.request("GET", "/v1/models", None, {"X-API-Key": k["key"]})[0] for _ in range(4)]
    assert codes == [200, 200, 200, 429], codes


def test_key_expiry_is_reported(c):
    k = new_key(c, "--expires-days", "2")
    shown = cli_json(c, "key", "show", str(k["id"]))
    assert shown["expires"] and shown["expires"] - time.time() > 86400, shown


def test_key_rotate_invalidates_the_old_secret_at_once(c):
    k = new_key(c, "--rpm", "100")
    assert served_by(c, k["key"]) == "primary"
    r = cli_json(c, "key", "rotate", str(k["id"]))
    assert r["id"] == k["id"] and r["key"] != k["key"] and r["rpm"] == 100, r
    st, _, _ = c.gw.request("GET", "/v1/models", None, {"X-API-Key": k["key"]})
    assert st == 401
    assert served_by(c, r["key"]) == "primary"
    rc, out, _ = c.gw.cli("key", "rotate", str(k["id"]))
    assert rc == 0 and "shown only once" in out and re.search(r"fg_[0-9A-Za-z]{46}", out)


def test_key_update_changes_policy_on_live_traffic(c):
    k = new_key(c)
    assert served_by(c, k["key"]) == "primary"
    assert c.gw.cli("key", "update", str(k["id"]), "--routes", "chat")[0] == 0
    assert c.gw.request("GET", "/v1/models", None, {"X-API-Key": k["key"]})[0] == 403
    assert c.gw.cli("key", "update", str(k["id"]), "--all-routes", "--rpm", "1")[0] == 0
    codes = [c.gw.request("GET", "/v1/models", None, {"X-API-Key": k["key"]})[0] for _ in range(2)]
    assert codes == [200, 429], codes
    rc, out, err = c.gw.cli("key", "update", str(k["id"]))
    assert rc == 2, (rc, err)


# --- routes ----------------------------------------------------------------------------

def test_route_disable_falls_back_and_enable_restores(c):
    k = new_key(c)
    assert served_by(c, k["key"]) == "primary"
    rc, out, err = c.gw.cli("route", "disable", "primary")
    assert rc == 0, err
    assert served_by(c, k["key"]) == "fallback"
    routes = {r["name"]: r for r in cli_json(c, "route", "list")}
    assert routes["primary"]["enabled"] is False and routes["primary"]["enabled_in_file"] is True
    rc, out, _ = c.gw.cli("route", "list")
    assert re.search(r"primary\s+10\s+disabled\*", out), out
    assert c.gw.cli("route", "toggle", "primary")[0] == 0
    assert served_by(c, k["key"]) == "primary"


def test_route_state_survives_a_restart(c):
    k = new_key(c)
    assert c.gw.cli("route", "disable", "primary")[0] == 0
    assert c.gw.stop() == 0
    c.gw.start()
    assert served_by(c, k["key"]) == "fallback", "disable must persist"
    assert c.gw.cli("route", "enable", "primary")[0] == 0
    assert served_by(c, k["key"]) == "primary"


def test_route_show_never_prints_the_upstream_key(c):
    path = os.path.join(c.gw.routes_dir, "20-secret.yaml")
    with open(path, "w") as f:
        f.write("routes:\n  - name: secretive\n    match: { path: /s }\n"
                "    upstream: { url: %s, api_key: sk-very-secret-123 }\n" % c.mock.url)
    try:
        assert c.gw.cli("reload")[0] == 0
        for args in (("route", "show", "secretive"), ("--json", "route", "show", "secretive"),
                     ("route", "list"), ("--json", "route", "list")):
            rc, out, err = c.gw.cli(*args)
            assert rc == 0 and "sk-very-secret" not in out + err, (args, out)
        assert json.loads(c.gw.cli("--json", "route", "show", "secretive")[1])["api_key_set"] is True
    finally:
        os.unlink(path)
        assert c.gw.cli("reload")[0] == 0
    assert "sk-very-secret" not in c.gw.proc.stderr()


def test_reload_adds_routes_and_a_bad_file_keeps_the_old_set(c):
    k = new_key(c)
    good = os.path.join(c.gw.routes_dir, "30-new.yaml")
    with open(good, "w") as f:
        f.write("routes:\n  - name: added\n    match: { path: /added }\n    upstream: { url: %s }\n" % c.mock.url)
    assert c.gw.request("GET", "/added", None, {"X-API-Key": k["key"]})[0] == 404
    rc, out, err = c.gw.cli("reload")
    assert rc == 0, err
    assert c.gw.request("GET", "/added", None, {"X-API-Key": k["key"]})[0] == 200
    bad = os.path.join(c.gw.routes_dir, "40-bad.yaml")
    with open(bad, "w") as f:
        f.write("routes:\n  - name: broken\n    upstream: { url: gopher://x }\n    nonsense: true\n")
    try:
        rc, out, err = c.gw.cli("reload")
        assert rc == 1, (rc, out, err)
        assert re.search(r"40-bad\.yaml:3: ", err) and re.search(r"40-bad\.yaml:4: .*nonsense", err), err
        assert c.gw.request("GET", "/added", None, {"X-API-Key": k["key"]})[0] == 200
        assert served_by(c, k["key"]) == "primary"
    finally:
        os.unlink(bad)
        os.unlink(good)
        assert c.gw.cli("reload")[0] == 0


def test_a_request_in_flight_keeps_its_route_across_a_reload(c):
    k = new_key(c)
    path = os.path.join(c.gw.routes_dir, "60-going.yaml")
    with open(path, "w") as f:
        f.write("routes:\n  - name: going\n    match: { path: /going }\n"
                "    upstream: { url: %s/v1/chat/completions }\n" % c.mock.url)
    assert c.gw.cli("reload")[0] == 0
    body = json.dumps(dict(CHAT, stream=True)).encode()
    s = socket.create_connection(("127.0.0.1", c.gw.port), timeout=10)
    s.sendall(("POST /going HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nX-Mock-Chunks: 6\r\n"
               "X-Mock-Delay-Ms: 150\r\nContent-Length: %d\r\n\r\n" % (k["key"], len(body))).encode() + body)
    first = s.recv(4096)
    assert first.startswith(b"HTTP/1.1 200"), first[:80]
    os.unlink(path)
    assert c.gw.cli("reload")[0] == 0          # the route is gone for new requests...
    assert c.gw.request("POST", "/going", CHAT, {"X-API-Key": k["key"]})[0] == 404
    data = first
    while b"[DONE]" not in data:               # ...but the stream that started on it ends normally
        d = s.recv(65536)
        assert d, "stream cut by the reload"
        data += d
    s.close()


def test_sighup_reloads_routes(c):
    k = new_key(c)
    path = os.path.join(c.gw.routes_dir, "50-hup.yaml")
    with open(path, "w") as f:
        f.write("routes:\n  - name: hup\n    match: { path: /hup }\n    upstream: { url: %s }\n" % c.mock.url)
    try:
        c.gw.proc.p.send_signal(signal.SIGHUP)
        wait_for(lambda: c.gw.request("GET", "/hup", None, {"X-API-Key": k["key"]})[0] == 200,
                 timeout=5, what="SIGHUP reload")
    finally:
        os.unlink(path)
        c.gw.proc.p.send_signal(signal.SIGHUP)
        wait_for(lambda: c.gw.request("GET", "/hup", None, {"X-API-Key": k["key"]})[0] == 404,
                 timeout=5, what="SIGHUP reload")


def test_status_reports_counts(c):
    st = cli_json(c, "status")
    assert st["listen"] == "127.0.0.1:%d" % c.gw.port, st
    assert st["routes"] >= 3 and st["keys"] >= 1 and st["uptime_s"] >= 0, st
    rc, out, _ = c.gw.cli("status")
    assert rc == 0 and "uptime" in out


def test_fastgate_socket_environment_variable(c):
    p = subprocess.run([CLI, "status"], capture_output=True, timeout=10,
                       env=dict(os.environ, FASTGATE_SOCKET=c.gw.sock))
    assert p.returncode == 0, p.stderr


# --- bad input -------------------------------------------------------------------------

def test_usage_errors_exit_2(c):
    for args in (["frobnicate"], ["key"], ["key", "create"], ["key", "show"], ["key", "list", "--bogus"],
                 ["route", "disable"], ["key", "create", "--name", "x", "--rpm", "lots"]):
        rc, out, err = c.gw.cli(*args)
        assert rc == 2, (args, rc, out, err)
        assert err.strip(), args


def test_unknown_ids_and_names_exit_1_with_a_message(c):
    for args in (["key", "show", "999999"], ["key", "revoke", "999999"], ["route", "disable", "nope"],
                 ["route", "show", "nope"]):
        rc, out, err = c.gw.cli(*args)
        assert rc == 1 and "fastgate-cli:" in err, (args, rc, err)


def test_help_at_every_level(c):
    for args in (["--help"], ["key", "--help"], ["key", "create", "--help"], ["route", "--help"]):
        rc, out, err = c.gw.cli(*args)
        assert rc == 0 and "usage" in (out + err).lower(), (args, out, err)


def test_unreachable_daemon_exits_3_and_names_the_socket(c):
    missing = os.path.join(c.dir, "missing.sock")
    p = subprocess.run([CLI, "--socket", missing, "status"], capture_output=True, timeout=10)
    assert p.returncode == 3 and missing in p.stderr.decode() and "running" in p.stderr.decode()


def raw_ctl(c, payload, timeout=5):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(c.gw.sock)
    f = s.makefile("rwb")
    json.loads(f.readline())
    f.write(payload)
    f.flush()
    return s, f


def test_malformed_protocol_lines_get_errors_and_the_connection_goes_on(c):
    s, f = raw_ctl(c, b"this is not json\n{\"id\":5}\n{\"id\":6,\"cmd\":\"nope\"}\n"
                      b"{\"id\":7,\"cmd\":\"status\",\"args\":{}}\n")
    replies = [json.loads(f.readline()) for _ in range(4)]
    s.close()
    codes = [r.get("error", {}).get("code") for r in replies]
    assert codes[:3] == ["bad_request", "bad_request", "unknown_command"], replies
    assert replies[3]["ok"] is True and replies[3]["id"] == 7


def test_oversized_line_is_refused_and_the_daemon_keeps_serving(c):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(c.gw.sock)
    f = s.makefile("rb")
    json.loads(f.readline())
    try:
        s.sendall(b"{\"id\":1,\"cmd\":\"" + b"x" * (1 << 20) + b"\"}\n")
    except (ConnectionResetError, BrokenPipeError):
        pass   # the daemon closes after its error line; we may still be writing
    try:
        r = json.loads(f.readline())
        assert r["error"]["code"] == "line_too_long", r
    except ConnectionResetError:
        pass   # the error line can be lost to the reset of our unread megabyte
    s.close()
    assert cli_json(c, "status")["version"]


def test_client_hanging_up_mid_reply_does_not_hurt(c):
    for _ in range(20):
        s, f = raw_ctl(c, b"{\"id\":1,\"cmd\":\"key.list\",\"args\":{\"all\":true}}\n")
        s.close()
    assert cli_json(c, "status")["version"] and c.gw.proc.alive()



def test_mistakes_the_cli_can_see_exit_2_with_the_daemon_down(c):
    # Issue 20: arguments the CLI can check itself are usage errors (exit 2) with nothing
    # sent, whether or not the daemon runs; valid ones reach for the socket (exit 3 here).
    # Fails if any of these is sent to the daemon (exit 3) or answered by it (exit 1).
    down = ["--socket", "/nonexistent/fastgate.sock"]
    cases = [
        (["key", "create", "--name", "x", "--expires-days", "36501"], 2, "at most 36500"),
        (["key", "create", "--name", "x", "--rpm", "1000001"], 2, "at most 1000000"),
        (["key", "update", "1", "--expires-days", "99999"], 2, "at most 36500"),
        (["logs", "tail", "-n", "10001"], 2, "at most 10000"),
        (["metrics", "--hourly", "--daily"], 2, "not both"),
        (["metrics", "--hours", "3", "--days", "2"], 2, "not both"),
        (["metrics", "--hours", "2161"], 2, "at most 2160"),
        (["logs", "export", "--format", "csv", "--fields", "status,foo"], 2, "foo"),
        (["key", "create", "--name", "x", "--expires-days", "36500"], 3, "fastgated running"),
        (["metrics", "--hourly"], 3, "fastgated running"),
    ]
    for args, want, text in cases:
        p = subprocess.run([CLI] + down + args, capture_output=True, text=True, timeout=10)
        assert p.returncode == want and text in p.stderr, (args, p.returncode, p.stderr)


def test_json_refusals_are_json_on_stdout_too(c):
    # Issue 20: with --json a script gets the daemon's error object on stdout (reload's
    # errors list included), and people still get the message on stderr. Fails if stdout
    # is empty or not that object.
    p = subprocess.run([CLI, "--socket", c.gw.sock, "--json", "key", "show", "999999"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 1, p
    err = json.loads(p.stdout)["error"]
    assert err["code"] == "not_found" and "999999" in err["message"], p.stdout
    assert "999999" in p.stderr, p.stderr
    bad = os.path.join(c.gw.routes_dir, "99-broken.yaml")
    with open(bad, "w") as f:
        f.write("routes:\n  - name: broken\n    upstream: { url: nope }\n")
    try:
        p = subprocess.run([CLI, "--socket", c.gw.sock, "--json", "reload"],
                           capture_output=True, text=True, timeout=10)
        assert p.returncode == 1, p
        err = json.loads(p.stdout)["error"]
        assert err["code"] == "reload_failed", err
        assert any("99-broken.yaml:3" in e for e in err["errors"]), err
    finally:
        os.unlink(bad)


def test_enabling_a_route_whose_variable_is_unset_tells_the_truth(c):
    # Issue 20: the environment is read at start; the refusal must not send the operator
    # to `reload` (which cannot see a new value). Fails if it does, or names no way out.
    d = tmpdir("fg-cli-env-")
    m = Mock(d)
    env = dict(os.environ)
    env.pop("FG_TEST_NEVER_SET", None)
    gw = Gateway(d, """routes:
  - name: optional
    if_env: FG_TEST_NEVER_SET
    match: { path: /v1/chat/completions }
    upstream: { url: %s, api_key: "${FG_TEST_NEVER_SET}" }
""" % m.url, env=env)
    try:
        p = subprocess.run([CLI, "--socket", gw.sock, "route", "enable", "optional"],
                           capture_output=True, text=True, timeout=10)
        assert p.returncode == 1, p
        assert "FG_TEST_NEVER_SET is not set" in p.stderr, p.stderr
        assert "restart" in p.stderr and "api_key_file" in p.stderr, p.stderr
        assert "run fastgate-cli reload" not in p.stderr, p.stderr
    finally:
        gw.stop()
        m.stop()
        rmtree(d)

if __name__ == "__main__":
    run_tests(globals(), setup, teardown)
