"""`make install` puts the programs and man pages where the issue says, and the man pages
format without a single groff warning."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ROOT, rmtree, run_tests, tmpdir  # noqa: E402

EXPECTED = ["usr/sbin/fastgated", "usr/bin/fastgate-cli", "usr/share/man/man1/fastgate-cli.1",
            "usr/share/man/man5/fastgate-routes.5", "usr/share/man/man8/fastgated.8",
            "usr/share/fastgate/fastgate.yaml.example", "usr/share/fastgate/models.yaml",
            "usr/share/bash-completion/completions/fastgate-cli"]


def test_make_install_into_destdir():
    dest = tmpdir("fg-install-")
    try:
        p = subprocess.run(["make", "-C", ROOT, "install", "PREFIX=/usr", "DESTDIR=" + dest],
                           capture_output=True, timeout=600)
        assert p.returncode == 0, p.stderr.decode()[-2000:]
        for rel in EXPECTED:
            assert os.path.isfile(os.path.join(dest, rel)), rel
        for rel in EXPECTED[:2]:
            assert os.access(os.path.join(dest, rel), os.X_OK), rel
        out = subprocess.run([os.path.join(dest, "usr/sbin/fastgated"), "--version"],
                             capture_output=True, timeout=10)
        assert out.returncode == 0 and out.stdout.startswith(b"fastgated "), out
    finally:
        rmtree(dest)


def test_man_pages_have_no_groff_warnings():
    for page in ("fastgated.8", "fastgate-cli.1", "fastgate-routes.5"):
        p = subprocess.run(["groff", "-mandoc", "-ww", "-z", os.path.join(ROOT, "man", page)],
                           capture_output=True, timeout=60)
        assert p.returncode == 0 and not p.stderr, (page, p.stderr.decode())


if __name__ == "__main__":
    run_tests(globals())
