-- wrk script for tests/bench/run.sh: POST a ~300-byte non-stream chat completion with the
-- bench key (BENCH_KEY from the environment) on keep-alive connections, and print one
-- machine-readable summary line ("BENCHJSON {...}") that run.sh hands to bench.py.
-- BENCH_MODEL (default mock-gpt, which no price table lists) names the model: the spend
-- control section and callgrind.sh CG_LIMITS ask for a priced one (gpt-4o-mini).
-- BENCH_HEADER ("Name: value", optional) adds one request header: shape C of run.sh sends
-- X-Mock-First-Byte-Delay-Ms: 20 with it when its upstream is the mock.
local key = os.getenv("BENCH_KEY") or "missing-key"
local model = os.getenv("BENCH_MODEL") or ""
if model == "" then model = "mock-gpt" end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
local extra = os.getenv("BENCH_HEADER") or ""
local hname, hvalue = extra:match("^([%w-]+):%s*(.-)%s*$")
if hname then wrk.headers[hname] = hvalue end
wrk.body = '{"model":"' .. model .. '","temperature":0.2,"max_tokens":64,"messages":[' ..
           '{"role":"system","content":"You are a terse assistant. Answer in one sentence."},' ..
           '{"role":"user","content":"Summarise the benefits of keep-alive connections ' ..
           'between a gateway and its upstream in a few words, please."}]}'

function done(summary, latency, requests)
	local e = summary.errors
	io.write(string.format(
		'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,' ..
		'"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
		'"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,"body_bytes":%d}\n',
		summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
		e.status, e.timeout, latency:percentile(50), latency:percentile(90),
		latency:percentile(99), latency.mean, latency.max, #wrk.body))
end
