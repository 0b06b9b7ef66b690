// End-to-end tests: the official `openai` npm SDK talking to the real fastgated, which
// forwards to the C mock upstream. Both processes run on free loopback ports in a temp dir,
// are tracked by PID and stopped here; every wait is bounded.
//
// FG_BUILD may point at the build dir holding fastgated and mock-upstream
// (default: ../../build-test relative to this file).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BUILD = path.resolve(process.env.FG_BUILD || path.join(HERE, '..', '..', 'build-test'));
const FASTGATED = path.join(BUILD, 'fastgated');
const MOCK = path.join(BUILD, 'mock-upstream');

const SANITIZER_MARKS = ['ERROR: AddressSanitizer', 'LeakSanitizer', 'runtime error:',
  'SUMMARY: UndefinedBehaviorSanitizer'];
const START_TIMEOUT_MS = 15000;
const STOP_TIMEOUT_MS = 15000;
const CTL_TIMEOUT_MS = 10000;

const CHILD_ENV = {
  ...process.env,
  ASAN_OPTIONS: process.env.ASAN_OPTIONS || 'detect_leaks=1:abort_on_error=0:exitcode=99',
  UBSAN_OPTIONS: process.env.UBSAN_OPTIONS || 'print_stacktrace=1:halt_on_error=1',
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A child whose stdout/stderr go to files in the work dir, readable while it runs.
class Child {
  constructor(name, argv, dir) {
    this.name = name;
    this.outPath = path.join(dir, `${name}.out`);
    this.errPath = path.join(dir, `${name}.err`);
    const out = fs.openSync(this.outPath, 'w');
    const err = fs.openSync(this.errPath, 'w');
    this.exitCode = undefined;
    this.exitSignal = undefined;
    this.proc = spawn(argv[0], argv.slice(1), { cwd: dir, env: CHILD_ENV, stdio: ['ignore', out, err] });
    fs.closeSync(out);
    fs.closeSync(err);
    this.pid = this.proc.pid;
    this.exited = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => {
        this.exitCode = code;
        this.exitSignal = signal;
        resolve();
      });
      this.proc.on('error', (e) => {
        this.spawnError = e;
        this.exitCode = -1;
        resolve();
      });
    });
  }

  alive() { return this.exitCode === undefined; }
  stdout() { try { return fs.readFileSync(this.outPath, 'utf8'); } catch { return ''; } }
  stderr() { try { return fs.readFileSync(this.errPath, 'utf8'); } catch { return ''; } }

  // Poll `read()` for `re` until it matches; fail if the process exits or time runs out.
  async waitFor(read, re, what) {
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      const m = re.exec(read());
      if (m) return m;
      if (!this.alive()) {
        throw new Error(`${this.name} exited (code ${this.exitCode}, signal ${this.exitSignal}` +
          `${this.spawnError ? ', ' + this.spawnError.message : ''}) before ${what}:\n` + this.stderr().slice(-4000));
      }
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${START_TIMEOUT_MS} ms waiting for ${what}:\n` + this.stderr().slice(-4000));
      }
      await sleep(20);
    }
  }

  // SIGTERM by PID, wait bounded; SIGKILL if it does not go. Returns {code, signal, timedOut}.
  async stop() {
    if (this.alive() && this.pid) process.kill(this.pid, 'SIGTERM');
    let timer;
    const timedOut = await Promise.race([
      this.exited.then(() => false),
      new Promise((r) => { timer = setTimeout(() => r(true), STOP_TIMEOUT_MS); }),
    ]);
    clearTimeout(timer);
    if (timedOut && this.alive()) {
      try { process.kill(this.pid, 'SIGKILL'); } catch { /* already gone */ }
      await Promise.race([this.exited, sleep(5000)]);
    }
    return { code: this.exitCode, signal: this.exitSignal, timedOut };
  }

  sanitizerReport() {
    const err = this.stderr();
    for (const mark of SANITIZER_MARKS) {
      const i = err.indexOf(mark);
      if (i >= 0) return err.slice(Math.max(0, i - 200), i + 3000);
    }
    return null;
  }
}

// One request over the control socket, spoken directly (greeting line, then one reply line).
function ctl(sockPath, cmd, args) {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(sockPath);
    let buf = '';
    let greeted = false;
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`control ${cmd}: no reply within ${CTL_TIMEOUT_MS} ms`)); }, CTL_TIMEOUT_MS);
    const done = (err, val) => { clearTimeout(timer); s.destroy(); err ? reject(err) : resolve(val); };
    s.setEncoding('utf8');
    s.on('error', (e) => done(e));
    s.on('close', () => done(new Error(`control ${cmd}: connection closed early; got ${JSON.stringify(buf)}`)));
    s.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let msg;
        try { msg = JSON.parse(line); } catch (e) { return done(new Error(`control ${cmd}: bad JSON line ${JSON.stringify(line)}`)); }
        if (!greeted) {
          greeted = true;
          if (msg.protocol !== 1) return done(new Error(`control greeting without protocol 1: ${line}`));
          s.write(JSON.stringify({ id: 1, cmd, args: args || {} }) + '\n');
        } else if (msg.id === 1) {
          return done(null, msg);
        }
      }
    });
  });
}

const ctx = {};

before(async () => {
  for (const bin of [FASTGATED, MOCK]) {
    assert.ok(fs.existsSync(bin), `missing ${bin} (run make test, or set FG_BUILD)`);
  }
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fg-sdk-'));

  ctx.mock = new Child('mock', [MOCK, '--listen', '127.0.0.1:0'], ctx.dir);
  const mm = await ctx.mock.waitFor(() => ctx.mock.stdout(), /listening 127\.0\.0\.1:(\d+)/, 'mock-upstream to listen');
  ctx.mockPort = Number(mm[1]);

  const routes = path.join(ctx.dir, 'routes');
  fs.mkdirSync(routes);
  fs.writeFileSync(path.join(routes, '10-sdk.yaml'), `routes:
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: http://127.0.0.1:${ctx.mockPort}/v1/chat/completions, api_key: upstream-key }
    timeout: 5
  - name: models
    match: { path: /v1/models }
    upstream: { url: http://127.0.0.1:${ctx.mockPort} }
  - name: pool
    priority: 10
    match: { path: /v1/chat/completions, methods: [POST], body: { model: "pool-*" } }
    upstreams:
      - { url: http://127.0.0.1:${ctx.mockPort}/v1/chat/completions, api_key: pool-key-a }
      - { url: http://127.0.0.1:${ctx.mockPort}/v1/chat/completions, api_key: pool-key-b }
    retry: { attempts: 2, on: [connect, reset] }
    timeout: 5
  - name: claude
    priority: 10
    match: { path: /v1/chat/completions, methods: [POST], body: { model: "claude-*" } }
    upstream: { url: http://127.0.0.1:${ctx.mockPort}, provider: anthropic, api_key: anthropic-sdk-key }
    timeout: 5
  - name: azure
    priority: 10
    match: { path: /v1/chat/completions, methods: [POST], body: { model: "azure-*" } }
    upstream:
      url: http://127.0.0.1:${ctx.mockPort}
      provider: azure
      deployment: gpt4o-prod
      api_version: "2024-10-21"
      api_key: azure-sdk-key
    timeout: 5
`);
  ctx.sock = path.join(ctx.dir, 'ctl.sock');
  ctx.gw = new Child('fastgated', [FASTGATED, '--listen', '127.0.0.1:0', '--routes', routes,
    '--keys', path.join(ctx.dir, 'keys.db'), '--audit', path.join(ctx.dir, 'audit.db'),
    '--control', ctx.sock], ctx.dir);
  const gm = await ctx.gw.waitFor(() => ctx.gw.stderr(), /listening on http:\/\/127\.0\.0\.1:(\d+)/, 'fastgated to listen');
  ctx.port = Number(gm[1]);
  ctx.baseURL = `http://127.0.0.1:${ctx.port}/v1`;

  const reply = await ctl(ctx.sock, 'key.create', { name: 'sdk' });
  assert.equal(reply.ok, true, `key.create failed: ${JSON.stringify(reply)}`);
  ctx.key = reply.result.key;
  assert.match(ctx.key, /^fg_[A-Za-z0-9]{32,}/);

  ctx.client = new OpenAI({ apiKey: ctx.key, baseURL: ctx.baseURL, maxRetries: 0, timeout: 10000 });
});

after(async () => {
  const problems = [];
  try {
    if (ctx.gw) {
      const r = await ctx.gw.stop();
      if (r.timedOut) problems.push(`fastgated did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM`);
      else if (r.code !== 0) problems.push(`fastgated exited with code ${r.code}, signal ${r.signal}:\n${ctx.gw.stderr().slice(-3000)}`);
      const rep = ctx.gw.sanitizerReport();
      if (rep) problems.push(`fastgated sanitizer report:\n${rep}`);
    }
    if (ctx.mock) {
      const r = await ctx.mock.stop();
      if (r.timedOut) problems.push(`mock-upstream did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM`);
      const rep = ctx.mock.sanitizerReport();
      if (rep) problems.push(`mock-upstream sanitizer report:\n${rep}`);
    }
  } finally {
    if (ctx.dir && !process.env.FG_KEEP_TMP) fs.rmSync(ctx.dir, { recursive: true, force: true });
  }
  assert.deepEqual(problems, []);
});

const USER_TEXT = 'ping from the openai SDK';
const EXPECTED = `Hello from mock. You said: ${USER_TEXT}`;
const MESSAGES = [{ role: 'system', content: 'be brief' }, { role: 'user', content: USER_TEXT }];

test('non-stream chat completion returns the mock text and usage', async () => {
  const { data, response } = await ctx.client.chat.completions
    .create({ model: 'mock-gpt', messages: MESSAGES })
    .withResponse();
  assert.equal(response.status, 200);
  assert.ok(response.headers.get('x-request-id'), 'response has an X-Request-Id');
  // The gateway replaced the client's fg_ key with the route's upstream key.
  assert.equal(response.headers.get('x-mock-received-auth'), 'Bearer upstream-key');
  assert.equal(data.object, 'chat.completion');
  assert.equal(data.choices.length, 1);
  assert.equal(data.choices[0].message.role, 'assistant');
  assert.equal(data.choices[0].message.content, EXPECTED);
  assert.ok(data.usage, 'usage present');
  assert.ok(data.usage.prompt_tokens > 0, `prompt_tokens ${data.usage.prompt_tokens}`);
  assert.ok(data.usage.completion_tokens > 0, `completion_tokens ${data.usage.completion_tokens}`);
  assert.equal(data.usage.total_tokens, data.usage.prompt_tokens + data.usage.completion_tokens);
});

test('stream: deltas reassemble to the non-stream text', async () => {
  const plain = await ctx.client.chat.completions.create({ model: 'mock-gpt', messages: MESSAGES });
  const stream = await ctx.client.chat.completions.create(
    { model: 'mock-gpt', messages: MESSAGES, stream: true },
    { headers: { 'X-Mock-Chunks': '6' } },
  );
  let text = '';
  let chunks = 0;
  let contentChunks = 0;
  let finish = null;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    const c = chunk.choices[0];
    if (c?.delta?.content) { text += c.delta.content; contentChunks++; }
    if (c?.finish_reason) finish = c.finish_reason;
  }
  assert.ok(chunks >= 2, `only ${chunks} chunk(s) arrived`);
  assert.ok(contentChunks >= 2, `only ${contentChunks} chunk(s) carried content`);
  assert.equal(finish, 'stop');
  assert.equal(text, plain.choices[0].message.content);
  assert.equal(text, EXPECTED);
});

test('stream with include_usage: last chunk has usage and no choices', async () => {
  const stream = await ctx.client.chat.completions.create({
    model: 'mock-gpt', messages: MESSAGES, stream: true, stream_options: { include_usage: true },
  });
  const all = [];
  for await (const chunk of stream) all.push(chunk);
  assert.ok(all.length >= 2, `only ${all.length} chunk(s) arrived`);
  const last = all[all.length - 1];
  assert.deepEqual(last.choices, []);
  assert.ok(last.usage, 'last chunk carries usage');
  assert.ok(last.usage.total_tokens > 0, `total_tokens ${last.usage.total_tokens}`);
  assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
  for (const c of all.slice(0, -1)) assert.ok(!c.usage, 'only the last chunk carries usage');
  const text = all.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  assert.equal(text, EXPECTED);
});

test('models.list() works through the gateway', async () => {
  const page = await ctx.client.models.list();
  const ids = page.data.map((m) => m.id);
  assert.ok(ids.length > 0, 'at least one model');
  assert.ok(ids.includes('mock-gpt'), `models: ${ids.join(', ')}`);
  assert.ok(ids.includes('demo-model'), `models: ${ids.join(', ')}`);
  for (const m of page.data) assert.equal(m.object, 'model');
});

test('a bad key raises AuthenticationError (401) with a readable message', async () => {
  const badKey = 'fg_' + 'A'.repeat(46);
  const bad = new OpenAI({ apiKey: badKey, baseURL: ctx.baseURL, maxRetries: 0, timeout: 10000 });
  await assert.rejects(
    bad.chat.completions.create({ model: 'mock-gpt', messages: MESSAGES }),
    (err) => {
      assert.ok(err instanceof OpenAI.AuthenticationError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 401);
      assert.match(err.message, /invalid API key/);
      assert.ok(!err.message.includes(badKey), 'message must not echo the key');
      assert.ok(!JSON.stringify(err.error ?? {}).includes(badKey), 'error body must not echo the key');
      assert.equal(err.code, 'invalid_api_key');
      assert.ok(err.headers?.['x-request-id'], 'error response has an X-Request-Id');
      return true;
    },
  );
});

test('an upstream 500 surfaces as InternalServerError', async () => {
  await assert.rejects(
    ctx.client.chat.completions.create(
      { model: 'mock-gpt', messages: MESSAGES },
      { headers: { 'X-Mock-Fail': '500' } },
    ),
    (err) => {
      assert.ok(err instanceof OpenAI.InternalServerError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 500);
      // The upstream's own status and body are passed through unchanged.
      assert.match(err.message, /forced status 500/);
      return true;
    },
  );
});

test('an upstream 500 on a stream request surfaces as InternalServerError', async () => {
  await assert.rejects(
    (async () => {
      const stream = await ctx.client.chat.completions.create(
        { model: 'mock-gpt', messages: MESSAGES, stream: true },
        { headers: { 'X-Mock-Fail': '500' } },
      );
      for await (const _ of stream) { /* drain */ }
    })(),
    (err) => {
      assert.ok(err instanceof OpenAI.InternalServerError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 500);
      return true;
    },
  );
});

test('an unknown path raises NotFoundError with the gateway message', async () => {
  await assert.rejects(
    ctx.client.embeddings.create({ model: 'mock-embed', input: 'hello' }),
    (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 404);
      assert.match(err.message, /no route matches this request/);
      assert.equal(err.code, 'no_route');
      return true;
    },
  );
});

test('the gateway still answers after the error cases', async () => {
  const r = await ctx.client.chat.completions.create({ model: 'mock-gpt', messages: MESSAGES });
  assert.equal(r.choices[0].message.content, EXPECTED);
});

// Upstream pools: the one mock behind a route twice (under two keys, so two upstreams), and
// POST /__mock/behave making its next request misbehave while the retry goes to the other.
async function behave(plan) {
  const r = await fetch(`http://127.0.0.1:${ctx.mockPort}/__mock/behave`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(plan),
    signal: AbortSignal.timeout(5000),
  });
  assert.equal(r.status, 200, await r.text());
}

test('pool: a stream whose upstream closes right after its head arrives whole from the other', async () => {
  await behave({ fail: 'close-after-head', times: 1 });
  const stream = await ctx.client.chat.completions.create(
    { model: 'pool-gpt', messages: MESSAGES, stream: true });
  let text = '';
  let roles = 0;
  let finish = null;
  for await (const chunk of stream) {
    const c = chunk.choices[0];
    if (c?.delta?.role) roles++;
    if (c?.delta?.content) text += c.delta.content;
    if (c?.finish_reason) finish = c.finish_reason;
  }
  assert.equal(text, EXPECTED);
  assert.equal(roles, 1, 'one role event: the failed attempt\'s held one is dropped');
  assert.equal(finish, 'stop');
});

test('pool: a stream cut after its first content raises in the SDK, not retried', async () => {
  await behave({ fail: 'fail-after-content', times: 1 });
  const before = await (await fetch(`http://127.0.0.1:${ctx.mockPort}/__mock/stats`)).json();
  const stream = await ctx.client.chat.completions.create(
    { model: 'pool-gpt', messages: MESSAGES, stream: true });
  let text = '';
  await assert.rejects(
    (async () => {
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    })(),
    (err) => {
      assert.ok(err instanceof OpenAI.APIError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.match(String(err.message), /upstream/i);
      return true;
    },
  );
  assert.equal(text, 'Hello');
  const after = await (await fetch(`http://127.0.0.1:${ctx.mockPort}/__mock/stats`)).json();
  assert.equal(after.chat - before.chat, 1, 'the cut stream must not be sent again');
});

test('azure: chat and a stream reach the deployment with api-version and api-key, and read as OpenAI', async () => {
  const r = await ctx.client.chat.completions.create({ model: 'azure-gpt', messages: MESSAGES });
  assert.equal(r.choices[0].message.content, EXPECTED);
  let last = (await (await fetch(`http://127.0.0.1:${ctx.mockPort}/__mock/stats`)).json()).last;
  assert.equal(last.uri, '/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21');
  const hdr = Object.fromEntries(Object.entries(last.headers).map(([k, v]) => [k.toLowerCase(), v]));
  assert.equal(hdr['api-key'], 'azure-sdk-key');
  assert.equal(hdr.authorization, undefined, 'Azure gets api-key, and never the client\'s key');

  const stream = await ctx.client.chat.completions.create(
    { model: 'azure-gpt', messages: MESSAGES, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, EXPECTED);
  assert.ok(usage && usage.completion_tokens > 0, `usage chunk: ${JSON.stringify(usage)}`);
  last = (await (await fetch(`http://127.0.0.1:${ctx.mockPort}/__mock/stats`)).json()).last;
  assert.match(last.uri, /^\/openai\/deployments\/gpt4o-prod\/chat\/completions\?api-version=2024-10-21$/);
});

test('anthropic: chat, a stream and streamed tool calls read as OpenAI through the SDK', async () => {
  const r = await ctx.client.chat.completions.create({ model: 'claude-3-5-haiku', messages: MESSAGES });
  assert.equal(r.choices[0].message.content, EXPECTED);
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.ok(r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0);

  const stream = await ctx.client.chat.completions.create(
    { model: 'claude-3-5-haiku', messages: MESSAGES, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, EXPECTED);
  assert.ok(usage && usage.completion_tokens > 0, `usage chunk: ${JSON.stringify(usage)}`);

  // the SDK's stream helper reassembles the tool call from its fragments
  const runner = ctx.client.beta.chat.completions.stream({
    model: 'claude-3-5-haiku',
    messages: [{ role: 'user', content: 'use the tool' }],
    tools: [{ type: 'function', function: { name: 'lookup', parameters: { type: 'object', properties: { q: { type: 'string' } } } } }],
  });
  const done = await runner.finalChatCompletion();
  const call = done.choices[0].message.tool_calls[0];
  assert.equal(call.function.name, 'lookup');
  assert.deepEqual(JSON.parse(call.function.arguments), { q: 'mock' });
  assert.equal(done.choices[0].finish_reason, 'tool_calls');
});
