"""Providers (issue 18): Anthropic behind the OpenAI API (the translation on the wire,
against the mock's Messages API), /v1/messages passed through, and Azure OpenAI: the URL the upstream gets in both of Azure's
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
  - name: claude
    priority: 5
    match: { path: /v1/chat/completions, methods: [POST], body: { model: "claude-*" } }
    upstream: { url: %(m)s, provider: anthropic, api_key: ant-secret-key-1 }
  - name: messages
    match: { path: /v1/messages, methods: [POST] }
    upstream: { url: %(m)s, provider: anthropic, api_key: ant-secret-key-2 }
  - name: messages-to-openai
    priority: 5
    match: { path: /v1/messages, methods: [POST], body: { model: "gpt-*" } }
    upstream: { url: %(m)s/v1/chat/completions, api_key: openai-secret-key }
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


# ---- Anthropic ----------------------------------------------------------------------------

CLAUDE = {"model": "claude-3-5-haiku-20241022",
          "messages": [{"role": "system", "content": "be brief"},
                       {"role": "user", "content": "hi there"}]}


def sse_events(data):
    return [e[6:] for e in data.decode().split("\n\n") if e.startswith("data: ")]


def audit_row(c, rid):
    import sqlite3
    def get():
        db = sqlite3.connect(os.path.join(c.dir, "audit.db"))
        db.row_factory = sqlite3.Row
        r = db.execute("select * from audit where request_id = ?", (rid,)).fetchone()
        db.close()
        return dict(r) if r else None
    return wait_for(get, timeout=10, what="the audit row")


def test_anthropic_answer_is_translated_with_the_key_version_and_a_max_tokens(c):
    st, h, data = c.gw.request("POST", "/v1/chat/completions", CLAUDE, c.auth)
    assert st == 200, (st, data)
    d = json.loads(data)
    assert d["object"] == "chat.completion" and d["choices"][0]["finish_reason"] == "stop", d
    assert d["choices"][0]["message"] == {"role": "assistant",
                                          "content": "Hello from mock. You said: hi there"}, d
    assert d["usage"]["prompt_tokens"] == 4 and d["usage"]["completion_tokens"] == 9, d
    uri, hd = last(c)
    sent = json.loads(c.mock.stats()["last"]["body"])
    assert uri == "/v1/messages", uri
    assert hd.get("x-api-key") == "ant-secret-key-1" and hd.get("anthropic-version") == "2023-06-01", hd
    assert "authorization" not in hd and c.key not in json.dumps(hd), hd
    # system lifted out, and a max_tokens the Messages API requires (no model table here)
    assert sent["system"] == "be brief" and sent["max_tokens"] == 4096, sent
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}] or \
        sent["messages"] == [{"role": "user", "content": "hi there"}], sent
    row = audit_row(c, h["x-request-id"])
    assert row["prompt_tokens"] == 4 and row["completion_tokens"] == 9 and row["cached_tokens"] == 0 \
        and row["cache_write_tokens"] == 0, row
    # the upstream's own id of the request, for its support (the mock's request-id header)
    assert row["upstream_request_id"] and row["upstream_request_id"].startswith("req_mock_"), row
    rc, out, err = c.gw.cli("logs", "show", h["x-request-id"])
    assert rc == 0 and row["upstream_request_id"] in out, (rc, out, err)


def test_anthropic_stream_reads_as_openai_chunks_with_usage_and_cached_tokens(c):
    body = dict(CLAUDE, stream=True, stream_options={"include_usage": True})
    st, h, data = c.gw.request("POST", "/v1/chat/completions", body,
                               dict(c.auth, **{"X-Mock-Cached-Tokens": "7"}))
    assert st == 200 and h["content-type"].startswith("text/event-stream"), (st, h)
    ev = sse_events(data)
    assert ev[-1] == "[DONE]", ev[-3:]
    chunks = [json.loads(e) for e in ev[:-1]]
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
    assert text == "Hello from mock. You said: hi there", text
    assert [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]][-1] == "stop"
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["prompt_tokens"] == 4 + 7, usage
    assert usage["prompt_tokens_details"]["cached_tokens"] == 7, usage
    row = audit_row(c, h["x-request-id"])
    assert row["prompt_tokens"] == 11 and row["cached_tokens"] == 7 and row["is_stream"], row


def test_anthropic_tool_calls_stream_with_their_own_index_and_whole_arguments(c):
    body = {"model": "claude-3-5-haiku", "stream": True,
            "messages": [{"role": "user", "content": "use the tool"}],
            "tools": [{"type": "function", "function": {"name": "lookup",
                                                         "parameters": {"type": "object"}}}]}
    st, _, data = c.gw.request("POST", "/v1/chat/completions", body, c.auth)
    assert st == 200, (st, data)
    ev = sse_events(data)
    chunks = [json.loads(e) for e in ev[:-1]]
    calls = {}
    for ch in chunks:
        for tc in (ch["choices"][0]["delta"].get("tool_calls") or []) if ch["choices"] else []:
            cur = calls.setdefault(tc["index"], {"id": None, "name": None, "args": ""})
            cur["id"] = tc.get("id") or cur["id"]
            cur["name"] = (tc.get("function") or {}).get("name") or cur["name"]
            cur["args"] += (tc.get("function") or {}).get("arguments") or ""
    assert list(calls) == [0] and calls[0]["name"] == "lookup" and calls[0]["id"], calls
    assert json.loads(calls[0]["args"]) == {"q": "mock"}, calls
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls", chunks[-1]
    assert json.loads(c.mock.stats()["last"]["body"])["tools"][0]["name"] == "lookup"


def test_anthropic_refusals_and_errors_come_back_in_openais_shape(c):
    # what the translation refuses is the client's 400, and nothing is sent
    before = c.mock.stats()["messages"]
    st, _, data = c.gw.request("POST", "/v1/chat/completions", dict(CLAUDE, n=2), c.auth)
    assert st == 400 and "n>1" in json.loads(data)["error"]["message"], (st, data)
    assert c.mock.stats()["messages"] == before
    # the upstream's own error keeps its status and reads as OpenAI's error
    st, _, data = c.gw.request("POST", "/v1/chat/completions", CLAUDE,
                               dict(c.auth, **{"X-Mock-Fail": "status:529"}))
    assert st == 529 and json.loads(data)["error"]["code"] == "overloaded_error", (st, data)
    # overloaded in the middle of a stream: an error event, no [DONE]
    st, _, data = c.gw.request("POST", "/v1/chat/completions", dict(CLAUDE, stream=True),
                               dict(c.auth, **{"X-Mock-Fail": "overloaded-mid"}))
    ev = sse_events(data)
    assert st == 200 and "[DONE]" not in ev and json.loads(ev[-1])["error"]["code"] == "overloaded_error", ev


def test_messages_api_is_passed_through_with_the_key_swapped_and_the_version_kept(c):
    body = {"model": "claude-3-5-haiku", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hello"}]}
    st, h, data = c.gw.request("POST", "/v1/messages", body,
                               {"x-api-key": c.key, "anthropic-version": "2023-01-01"})
    assert st == 200, (st, data)
    d = json.loads(data)
    assert d["type"] == "message" and d["content"][0]["text"] == "Hello from mock. You said: hello", d
    uri, hd = last(c)
    assert uri == "/v1/messages" and hd.get("x-api-key") == "ant-secret-key-2", hd
    assert hd.get("anthropic-version") == "2023-01-01", "the client's version is kept"
    # its usage is read as Anthropic counts it: input + cache reads (+ writes), output
    row = audit_row(c, h["x-request-id"])
    assert row["route"] == "messages" and row["prompt_tokens"] == d["usage"]["input_tokens"] \
        and row["completion_tokens"] == d["usage"]["output_tokens"] and row["cached_tokens"] == 0, row
    # the gateway's own errors on Anthropic's API come in Anthropic's shape, and the next
    # request on the same connection gets OpenAI's again elsewhere
    st, _, data = c.gw.request("POST", "/v1/messages", body, {"x-api-key": "fg_wrong"})
    err = json.loads(data)
    assert st == 401 and err["type"] == "error" and err["error"]["type"] == "authentication_error", err
    st, _, data = c.gw.request("POST", "/v1/chat/completions", CLAUDE, {"X-API-Key": "fg_wrong"})
    assert st == 401 and "type" not in json.loads(data) and json.loads(data)["error"]["code"], data
    # an Anthropic client's Bearer fastgate key works too, and a stream passes as it is, its
    # usage read from message_start and message_delta (the cumulative output count)
    st, h, data = c.gw.request("POST", "/v1/messages", dict(body, stream=True),
                               {"Authorization": "Bearer " + c.key, "anthropic-version": "2023-06-01",
                                "X-Mock-Cached-Tokens": "5"})
    text = data.decode()
    assert st == 200 and "event: message_start" in text and "event: message_stop" in text, text[:300]
    assert "chat.completion.chunk" not in text and "stream_options" not in c.mock.stats()["last"]["body"]
    row = audit_row(c, h["x-request-id"])
    assert row["prompt_tokens"] == 2 + 5 and row["cached_tokens"] == 5 and \
        row["completion_tokens"] == 8 and row["is_stream"], row


def test_messages_api_to_an_openai_upstream_is_translated_both_ways(c):
    body = {"model": "gpt-4o", "max_tokens": 50, "system": "be brief",
            "messages": [{"role": "user", "content": "hello"}]}
    hdr = {"x-api-key": c.key, "anthropic-version": "2023-06-01"}
    st, h, data = c.gw.request("POST", "/v1/messages", body, hdr)
    d = json.loads(data)
    assert st == 200 and d["type"] == "message" and d["stop_reason"] == "end_turn", d
    assert d["content"] == [{"type": "text", "text": "Hello from mock. You said: hello"}], d
    uri, hd = last(c)
    sent = json.loads(c.mock.stats()["last"]["body"])
    assert uri == "/v1/chat/completions" and hd.get("authorization") == "Bearer openai-secret-key", hd
    assert sent["messages"][0] == {"role": "system", "content": "be brief"} and sent["max_tokens"] == 50
    row = audit_row(c, h["x-request-id"])
    assert row["route"] == "messages-to-openai" and row["prompt_tokens"] == d["usage"]["input_tokens"] \
        and row["completion_tokens"] == d["usage"]["output_tokens"], (row, d["usage"])
    # a stream: Anthropic's events, message_delta (with the usage) held for OpenAI's usage chunk
    st, h, data = c.gw.request("POST", "/v1/messages", dict(body, stream=True), hdr)
    text = data.decode()
    names = [l[7:] for l in text.split("\n") if l.startswith("event: ")]
    assert st == 200 and names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"], names
    delta = [json.loads(l[6:]) for l in text.split("\n") if l.startswith("data: ") and "message_delta" in l][0]
    assert delta["usage"]["output_tokens"] > 0 and delta["delta"]["stop_reason"] == "end_turn", delta
    assert json.loads(c.mock.stats()["last"]["body"])["stream_options"] == {"include_usage": True}
    # what the translation refuses is a 400 in Anthropic's shape, sent nowhere
    before = c.mock.stats()["chat"]
    st, _, data = c.gw.request("POST", "/v1/messages", {"model": "gpt-4o", "messages": []}, hdr)
    err = json.loads(data)
    assert st == 400 and err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
    assert c.mock.stats()["chat"] == before


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
        with open(models, "w") as f:
            f.write("models:\n  - { match: \"m-*\", context_window: 1000, max_output_tokens: 100 }\n"
                    "  - { match: \"claude-3-5-*\", context_window: 200000, max_output_tokens: 8192,\n"
                    "      default_output_tokens: 1234 }\n")
        g = Gateway(os.path.join(d, "gw"), routes(c.mock), extra_args=["--models", models])
        try:
            # the model table gives an Anthropic request its max_tokens
            key = g.create_key()["key"]
            st, _, _ = g.request("POST", "/v1/chat/completions", CLAUDE, {"X-API-Key": key})
            assert st == 200 and json.loads(c.mock.stats()["last"]["body"])["max_tokens"] == 1234
            st, _, _ = g.request("POST", "/v1/chat/completions", dict(CLAUDE, max_tokens=77),
                                 {"X-API-Key": key})
            assert st == 200 and json.loads(c.mock.stats()["last"]["body"])["max_tokens"] == 77
            with open(models, "w") as f:
                f.write("models:\n  - { match: \"m-*\", context_window: 10, max_output_tokens: 100 }\n")
            rc, out, err = g.cli("reload")
            assert rc == 1 and "models.yaml:2: max_output_tokens (100) is more than context_window (10)" \
                in out + err, (rc, out, err)
            st, _, _ = g.request("POST", "/v1/chat/completions", CHAT, {"X-API-Key": key})
            assert st == 200, "the old set keeps serving after a failed reload"
        finally:
            g.stop()
    finally:
        rmtree(d)


if __name__ == "__main__":
    run_tests(globals(), setup=setup, teardown=teardown)
