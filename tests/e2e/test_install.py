"""`make install` lays out the tree DESIGN.md describes (programs, man pages, /etc/fastgate,
/var/lib/fastgate, the systemd unit and the sysusers and tmpfiles snippets), never clobbers
an operator's configuration, and the installed programs find each other and their files
from the compiled-in paths alone; the man pages format without a single groff warning."""

import http.client
import os
import re
import shutil
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import FASTGATED, ROOT, Proc, rmtree, run_tests, tmpdir, wait_for  # noqa: E402

EXPECTED = ["usr/sbin/fastgated", "usr/bin/fastgate-cli", "usr/share/man/man1/fastgate-cli.1",
            "usr/share/man/man5/fastgate-routes.5", "usr/share/man/man8/fastgated.8",
            "usr/share/fastgate/fastgate.yaml.example", "usr/share/fastgate/models.yaml",
            "usr/share/fastgate/pricing.yaml",
            "usr/share/bash-completion/completions/fastgate-cli",
            "usr/lib/systemd/system/fastgated.service", "usr/lib/sysusers.d/fastgate.conf",
            "usr/lib/tmpfiles.d/fastgate.conf",
            "etc/fastgate/fastgate.yaml", "etc/fastgate/routes.d/50-openai.yaml"]
EXECUTABLE = EXPECTED[:2]
UNIT = "usr/lib/systemd/system/fastgated.service"


def make_install(*assignments, timeout=600):
    p = subprocess.run(["make", "-C", ROOT, "install"] + list(assignments),
                       capture_output=True, timeout=timeout)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    return p.stdout.decode()


def read(path):
    with open(path) as f:
        return f.read()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def unit_settings(text):
    """The unit's Key=value lines, each key with the list of its values."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def clean_env():
    env = os.environ.copy()
    for name in ("FASTGATE_SOCKET", "OPENAI_API_KEY"):
        env.pop(name, None)
    return env


def test_make_install_into_destdir():
    dest = tmpdir("fg-install-")
    try:
        make_install("PREFIX=/usr", "DESTDIR=" + dest)
        for rel in EXPECTED:
            path = os.path.join(dest, rel)
            assert os.path.isfile(path), rel
            assert mode(path) == (0o755 if rel in EXECUTABLE else 0o644), (rel, oct(mode(path)))
        state = os.path.join(dest, "var/lib/fastgate")
        assert os.path.isdir(state) and mode(state) == 0o750, oct(mode(state))
        assert os.path.isdir(os.path.join(dest, "etc/fastgate/routes.d"))
        out = subprocess.run([os.path.join(dest, "usr/sbin/fastgated"), "--version"],
                             capture_output=True, timeout=10)
        assert out.returncode == 0 and out.stdout.startswith(b"fastgated "), out
    finally:
        rmtree(dest)


def test_installed_defaults_are_the_installed_paths():
    """The DESTDIR binary names /etc, /usr/share, /var/lib and /run paths, not ./ ones; so
    do the installed fastgate.yaml and the CLI's help."""
    dest = tmpdir("fg-install-")
    try:
        make_install("PREFIX=/usr", "DESTDIR=" + dest)
        out = subprocess.run([os.path.join(dest, "usr/sbin/fastgated"), "--version"],
                             capture_output=True, timeout=10).stdout.decode()
        want = {"config": "/etc/fastgate/fastgate.yaml", "routes": "/etc/fastgate/routes.d",
                "models": "/usr/share/fastgate/models.yaml",
                "pricing": "/usr/share/fastgate/pricing.yaml",
                "keys": "/var/lib/fastgate/fastgate.db", "audit": "/var/lib/fastgate/audit.db",
                "control": "/run/fastgate/fastgate.sock"}
        for name, path in want.items():
            assert re.search(r"^\s+%s\s+%s$" % (name, re.escape(path)), out, re.M), (name, out)
        conf = read(os.path.join(dest, "etc/fastgate/fastgate.yaml"))
        for key in ("routes", "keys", "audit", "control"):
            assert re.search(r"^%s: %s\s" % (key, re.escape(want[key])), conf, re.M), (key, conf)
        assert "./" not in conf, conf
        assert conf == read(os.path.join(dest, "usr/share/fastgate/fastgate.yaml.example"))
        cli = subprocess.run([os.path.join(dest, "usr/bin/fastgate-cli"), "--help"],
                             capture_output=True, timeout=10, env=clean_env()).stdout.decode()
        assert "else /run/fastgate/fastgate.sock)" in cli, cli
        # while the source-tree build keeps its ./ defaults
        if os.path.exists(FASTGATED):
            src = subprocess.run([FASTGATED, "--version"], capture_output=True, timeout=10)
            assert b"\n  routes   ./routes.d\n" in src.stdout, src.stdout
    finally:
        rmtree(dest)


def test_unit_sysusers_and_tmpfiles_name_the_installed_paths():
    dest = tmpdir("fg-install-")
    try:
        make_install("PREFIX=/usr", "DESTDIR=" + dest)
        text = read(os.path.join(dest, UNIT))
        assert not re.search(r"@[A-Z]+@", text), text
        u = unit_settings(text)
        expect = {"Type": "simple", "User": "fastgate", "Group": "fastgate",
                  "ExecStart": "/usr/sbin/fastgated -c /etc/fastgate/fastgate.yaml",
                  "ExecReload": "/bin/kill -HUP $MAINPID", "Restart": "on-failure",
                  "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                  "ReadWritePaths": "/var/lib/fastgate", "RuntimeDirectory": "fastgate",
                  "EnvironmentFile": "-/etc/fastgate/env", "WantedBy": "multi-user.target"}
        for key, value in expect.items():
            assert u.get(key) == [value], (key, u.get(key))
        sysusers = read(os.path.join(dest, "usr/lib/sysusers.d/fastgate.conf"))
        assert re.search(r'^u fastgate - "[^"]+" /var/lib/fastgate$', sysusers, re.M), sysusers
        tmpfiles = read(os.path.join(dest, "usr/lib/tmpfiles.d/fastgate.conf"))
        assert re.search(r"^d /var/lib/fastgate 0750 fastgate fastgate -$", tmpfiles, re.M), \
            tmpfiles
    finally:
        rmtree(dest)


def test_systemd_analyze_verify_accepts_the_unit():
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        print("     skipped: systemd-analyze is not installed (tests/deps.sh test installs it)")
        return
    dest = tmpdir("fg-install-")
    try:
        make_install("PREFIX=/usr", "DESTDIR=" + dest)
        # verify wants ExecStart's program to exist: a copy of the unit names the DESTDIR one
        # (--root= would need a whole systemd tree under DESTDIR)
        unit = read(os.path.join(dest, UNIT))
        assert "ExecStart=/usr/sbin/fastgated " in unit, unit
        copy = os.path.join(dest, "fastgated.service")
        with open(copy, "w") as f:
            f.write(unit.replace("ExecStart=/usr/sbin/fastgated ",
                                 "ExecStart=%s/usr/sbin/fastgated " % dest))
        env = os.environ.copy()
        env["MANPATH"] = os.path.join(dest, "usr/share/man")   # Documentation=man:... pages
        argv = [analyze, "verify"] + ([] if shutil.which("man") else ["--man=no"]) + [copy]
        p = subprocess.run(argv, capture_output=True, timeout=60, env=env)
        # an unknown or misspelt setting is only a warning: any output at all is a failure
        assert p.returncode == 0 and not p.stdout and not p.stderr, \
            (p.returncode, p.stdout.decode(), p.stderr.decode())
    finally:
        rmtree(dest)


def test_reinstall_keeps_the_operators_configuration():
    dest = tmpdir("fg-install-")
    try:
        make_install("PREFIX=/usr", "DESTDIR=" + dest)
        etc = os.path.join(dest, "etc/fastgate")
        assert not os.path.exists(os.path.join(etc, "fastgate.yaml.dist"))
        # a re-install over an untouched file leaves nothing beside it
        make_install("PREFIX=/usr", "DESTDIR=" + dest)
        assert not os.path.exists(os.path.join(etc, "fastgate.yaml.dist"))
        edited = read(os.path.join(etc, "fastgate.yaml")) + "drain_timeout: 5\n"
        with open(os.path.join(etc, "fastgate.yaml"), "w") as f:
            f.write(edited)
        os.remove(os.path.join(etc, "routes.d/50-openai.yaml"))
        with open(os.path.join(etc, "routes.d/10-mine.yaml"), "w") as f:
            f.write("routes: []\n")
        out = make_install("PREFIX=/usr", "DESTDIR=" + dest)
        assert read(os.path.join(etc, "fastgate.yaml")) == edited
        assert read(os.path.join(etc, "fastgate.yaml.dist")) == \
            read(os.path.join(dest, "usr/share/fastgate/fastgate.yaml.example"))
        assert "fastgate.yaml.dist" in out, out
        # the route file the operator removed does not come back; theirs stays
        assert sorted(os.listdir(os.path.join(etc, "routes.d"))) == ["10-mine.yaml"]
        assert read(os.path.join(etc, "routes.d/10-mine.yaml")) == "routes: []\n"
    finally:
        rmtree(dest)


def test_installed_daemon_runs_from_its_own_paths():
    """Installed into a temporary PREFIX, SYSCONFDIR, LOCALSTATEDIR and RUNSTATEDIR, the
    daemon starts with no flag at all from an empty working directory, serves /health, keeps
    its stores in the state directory, and the installed CLI reaches it unasked."""
    top = tmpdir("fg-inst-")
    daemon = None
    try:
        dirs = {"PREFIX": "usr", "SYSCONFDIR": "etc", "LOCALSTATEDIR": "var",
                "RUNSTATEDIR": "run"}
        make_install(*["%s=%s/%s" % (k, top, v) for k, v in dirs.items()])
        sbin = os.path.join(top, "usr/sbin/fastgated")
        cli = os.path.join(top, "usr/bin/fastgate-cli")
        etc = os.path.join(top, "etc/fastgate")
        state = os.path.join(top, "var/lib/fastgate")
        unit = read(os.path.join(top, "usr/lib/systemd/system/fastgated.service"))
        assert "ExecStart=%s -c %s/fastgate.yaml\n" % (sbin, etc) in unit, unit
        assert "ReadWritePaths=%s\n" % state in unit, unit
        cwd = os.path.join(top, "cwd")   # nothing here: a ./ path would not be found
        os.makedirs(cwd)
        env = clean_env()

        check = subprocess.run([sbin, "--check"], capture_output=True, timeout=30, cwd=cwd,
                               env=env)
        out = check.stdout.decode()
        assert check.returncode == 0, check.stderr.decode()
        assert "%s/usr/share/fastgate/models.yaml: " % top in out, out
        assert "%s/usr/share/fastgate/pricing.yaml: " % top in out, out
        assert "%s/routes.d: 1 routes OK" % etc in out, out

        # no configuration file: an error naming it, not a daemon on built-in defaults
        os.rename(os.path.join(etc, "fastgate.yaml"), os.path.join(etc, "moved.yaml"))
        p = subprocess.run([sbin], capture_output=True, timeout=30, cwd=cwd, env=env)
        assert p.returncode == 1, (p.returncode, p.stderr.decode())
        assert "%s/fastgate.yaml: cannot open" % etc in p.stderr.decode(), p.stderr.decode()
        os.rename(os.path.join(etc, "moved.yaml"), os.path.join(etc, "fastgate.yaml"))

        # as an operator would: another port (a free one), in the installed file
        conf = os.path.join(etc, "fastgate.yaml")
        text = read(conf)
        assert re.search(r"^listen: 127\.0\.0\.1:8514 ", text, re.M), text
        with open(conf, "w") as f:
            f.write(re.sub(r"^listen: \S+", "listen: 127.0.0.1:0", text, flags=re.M))
        os.makedirs(os.path.join(top, "run/fastgate"))   # systemd's RuntimeDirectory=
        daemon = Proc([sbin], cwd, "installed", env=env)

        def listening():
            if not daemon.alive():
                raise AssertionError("installed fastgated exited:\n" + daemon.stderr())
            return re.search(r"listening on http://127\.0\.0\.1:(\d+)", daemon.stderr())
        port = int(wait_for(listening, what="the installed fastgated to listen").group(1))
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/health")
        r = c.getresponse()
        assert r.status == 200, (r.status, r.read())
        r.read()
        c.close()

        p = subprocess.run([cli, "--json", "status"], capture_output=True, timeout=20, cwd=cwd,
                           env=env)
        assert p.returncode == 0, (p.returncode, p.stderr.decode())
        assert str(port) in p.stdout.decode(), p.stdout.decode()
        p = subprocess.run([cli, "route", "list"], capture_output=True, timeout=20, cwd=cwd,
                           env=env)
        assert p.returncode == 0 and "openai" in p.stdout.decode(), p
        for name in ("fastgate.db", "audit.db"):
            assert os.path.isfile(os.path.join(state, name)), os.listdir(state)
        assert os.path.exists(os.path.join(top, "run/fastgate/fastgate.sock"))
        # nothing written to the working directory but the test's own capture of the logs
        assert sorted(os.listdir(cwd)) == ["installed.err", "installed.out"], os.listdir(cwd)
        assert daemon.stop() == 0, daemon.stderr()
        daemon = None
    finally:
        if daemon:
            daemon.stop()
        rmtree(top)


def test_man_pages_have_no_groff_warnings():
    for page in ("fastgated.8", "fastgate-cli.1", "fastgate-routes.5"):
        p = subprocess.run(["groff", "-mandoc", "-ww", "-z", os.path.join(ROOT, "man", page)],
                           capture_output=True, timeout=60)
        assert p.returncode == 0 and not p.stderr, (page, p.stderr.decode())


if __name__ == "__main__":
    run_tests(globals())
