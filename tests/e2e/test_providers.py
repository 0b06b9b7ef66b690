"""Providers (issue 18), Azure OpenAI so far: the URL the upstream gets in both of Azure's
forms (deployment + api-version, and /openai/v1), the api-key header in place of
Authorization, what the client sends that must not reach Azure, Azure's own errors passed
through, health checks with the right header, and the pool's view of provider, deployment
and api_version. The mock checks what Azure checks (api-key, api-version) and records the
last request it got."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import FASTGATED, Gateway, Mock, run_tests, tmpdir, rmtree, wait_for  # noqa: E402
import subprocess  # noqa: E402

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def routes(m):
    return """routes:
  - name: az
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream:
      url: %(m)s
      provider: azure
      deployment: gpt4o-prod
      api_version: "2024-10-21"
      api_key: azure-secret-key-1
  - name: azv1
    priority: 10
    match: { path: /v1/chat/completions, methods: [POST], body: { model: "v1-*" } }
    upstream: { url: %(m)s, provider: azure, api_version: v1, api_key: azure-secret-key-2 }
  - name: nokey
    priority: 10
    match: { path: /v1/chat/completions, methods: [POST], body: { model: "nokey-*" } }
    upstream: { url: %(m)s, provider: azure, deployment: d1, api_version: "2024-10-21" }
  - name: health
    match: { path: /health-probe/** }
    upstreams:
      - { url: %(m)s, provider: azure, api_version: v1, api_key: azure-health-key }
      - { url: %(m)s, provider: azure, deployment: other, api_version: "2024-10-21", api_key: azure-health-key }
    health: { path: /openai/v1/models, interval: 1, timeout: 1 }
""" % {"m": m.url}


class Ctx:
    def __init__(self):
        self.dir = tmpdir()
        self.mock = Mock(self.dir)
        self.gw = Gateway(self.dir, routes(self.mock))
        self.key = self.gw.create_key()["key"]
        self.auth = {"X-API-Key": self.key}


def setup():
    return Ctx()


def teardown(c):
    try:
        c.gw.stop()
        c.mock.stop()
    finally:
        rmtree(c.dir)


def last(c):
    d = c.mock.stats()["last"]
    return d["uri"], {k.lower(): v for k, v in d["headers"].items()}


def test_deployment_form_gets_api_version_api_key_and_the_clients_query(c):
    st, _, data = c.gw.request("POST", "/v1/chat/completions?trace=1", CHAT,
                               dict(c.auth, **{"api-key": "client-chosen-key"}))
    assert st == 200, (st, data)
    assert json.loads(data)["choices"][0]["message"]["content"].startswith("Hello from mock."), data
    uri, h = last(c)
    assert uri == "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21&trace=1", uri
    # the route's key, as Azure wants it; never the client's api-key, its fastgate key or a Bearer
    assert h.get("api-key") == "azure-secret-key-1", h
    assert "authorization" not in h and "x-api-key" not in h, h
    assert c.key not in json.dumps(h) and "client-chosen-key" not in json.dumps(h), h


def test_v1_form_keeps_the_model_in_the_body_and_streams(c):
    body = dict(CHAT, model="v1-gpt-4o", stream=True)
    st, hdrs, data = c.gw.request("POST", "/v1/chat/completions", body,
                                  {"Authorization": "Bearer " + c.key})
    assert st == 200 and hdrs["content-type"].startswith("text/event-stream"), (st, hdrs)
    assert data.rstrip().endswith(b"data: [DONE]"), data[-200:]
    uri, h = last(c)
    assert uri == "/openai/v1/chat/completions", uri
    assert h.get("api-key") == "azure-secret-key-2" and "authorization" not in h, h
    assert json.loads(c.mock.stats()["last"]["body"])["model"] == "v1-gpt-4o"


def test_azures_own_refusal_is_passed_through(c):
    # no key on the route: Azure (the mock) answers 401 in its own shape, which reaches the
    # client unchanged, as any upstream status does
    st, _, data = c.gw.request("POST", "/v1/chat/completions", dict(CHAT, model="nokey-x"), c.auth)
    assert st == 401, (st, data)
    err = json.loads(data)["error"]
    assert err["code"] == "401" and "subscription key" in err["message"], err
    uri, h = last(c)
    assert uri.startswith("/openai/deployments/d1/chat/completions?api-version=") and "api-key" not in h


def test_health_checks_send_api_key_and_two_deployments_are_two_upstreams(c):
    def probed():
        uri, h = last(c)
        return uri == "/openai/v1/models" and h.get("api-key") == "azure-health-key" and \
            "authorization" not in h
    wait_for(probed, timeout=5, what="a health check with Azure's api-key header")
    r = c.gw.ctl("route.show", {"name": "health"})
    assert r["ok"], r
    ups = r["result"]["upstreams"]
    assert [(u["provider"], u["deployment"], u["api_version"]) for u in ups] == \
        [("azure", None, "v1"), ("azure", "other", "2024-10-21")], ups
    assert all("azure-health-key" not in json.dumps(u) for u in ups), "a key in route.show"
    rc, out, err = c.gw.cli("upstream", "list", "--route", "az", "--json")
    assert rc == 0 and json.loads(out)[0]["deployment"] == "gpt4o-prod", (rc, out, err)


def test_model_table_is_checked_loaded_and_a_bad_one_keeps_the_old_set(c):
    d = tmpdir()
    try:
        models = os.path.join(d, "models.yaml")
        with open(models, "w") as f:
            f.write("models:\n  - { match: \"m-*\", context_window: 1000, max_output_tokens: 100 }\n")
        p = subprocess.run([FASTGATED, "--check", "--routes", c.gw.routes_dir, "--models", models],
                           capture_output=True, timeout=20)
        assert p.returncode == 0 and b"models.yaml: 1 models OK" in p.stdout, (p.stdout, p.stderr)
        # a named model file that is missing, or wrong, is an error naming FILE:LINE
        p = subprocess.run([FASTGATED, "--check", "--routes", c.gw.routes_dir, "--models",
                            os.path.join(d, "none.yaml")], capture_output=True, timeout=20)
        assert p.returncode == 1 and b"none.yaml: No such file or directory" in p.stderr, p.stderr
        g = Gateway(os.path.join(d, "gw"), routes(c.mock), extra_args=["--models", models])
        try:
            with open(models, "w") as f:
                f.write("models:\n  - { match: \"m-*\", context_window: 10, max_output_tokens: 100 }\n")
            rc, out, err = g.cli("reload")
            assert rc == 1 and "models.yaml:2: max_output_tokens (100) is more than context_window (10)" \
                in out + err, (rc, out, err)
            key = g.create_key()["key"]
            st, _, _ = g.request("POST", "/v1/chat/completions", CHAT, {"X-API-Key": key})
            assert st == 200, "the old set keeps serving after a failed reload"
        finally:
            g.stop()
    finally:
        rmtree(d)


if __name__ == "__main__":
    run_tests(globals(), setup=setup, teardown=teardown)
