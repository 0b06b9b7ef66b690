// End-to-end tests: the official `openai` npm SDK talking to the real fastgated, which
// forwards to the C mock upstream. Both processes run on free loopback ports in a temp dir,
// are tracked by PID and stopped here; every wait is bounded.
//
// FG_BUILD may point at the build dir holding fastgated and mock-upstream
// (default: ../../build-test relative to this file).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import OpenAI from 'openai';
import { startStack, stopStack } from './harness.mjs';

const ctx = {};

before(async () => {
  await startStack(ctx, (mockPort) => `routes:
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: http://127.0.0.1:${mockPort}/v1/chat/completions, api_key: upstream-key }
    timeout: 5
  - name: models
    match: { path: /v1/models }
    upstream: { url: http://127.0.0.1:${mockPort} }
  - name: pool
    priority: 10
    match: { path: /v1/chat/completions, methods: [POST], body: { model: "pool-*" } }
    upstreams:
      - { url: http://127.0.0.1:${mockPort}/v1/chat/completions, api_key: pool-key-a }
      - { url: http://127.0.0.1:${mockPort}/v1/chat/completions, api_key: pool-key-b }
    retry: { attempts: 2, on: [connect, reset] }
    timeout: 5
  - name: claude
    priority: 10
    match: { path: /v1/chat/completions, methods: [POST], body: { model: "claude-*" } }
    upstream: { url: http://127.0.0.1:${mockPort}, provider: anthropic, api_key: anthropic-sdk-key }
    timeout: 5
  - name: azure
    priority: 10
    match: { path: /v1/chat/completions, methods: [POST], body: { model: "azure-*" } }
    upstream:
      url: http://127.0.0.1:${mockPort}
      provider: azure
      deployment: gpt4o-prod
      api_version: "2024-10-21"
      api_key: azure-sdk-key
    timeout: 5
`);
  ctx.baseURL = `http://127.0.0.1:${ctx.port}/v1`;
  ctx.client = new OpenAI({ apiKey: ctx.key, baseURL: ctx.baseURL, maxRetries: 0, timeout: 10000 });
});

after(() => stopStack(ctx));

const USER_TEXT = 'ping from the openai SDK';
const EXPECTED = `Hello from mock. You said: ${USER_TEXT}`;
const MESSAGES = [{ role: 'system', content: 'be brief' }, { role: 'user', content: USER_TEXT }];

test('non-stream chat completion returns the mock text and usage', async () => {
  const { data, response } = await ctx.client.chat.completions
    .create({ model: 'mock-gpt', messages: MESSAGES })
    .withResponse();
  assert.equal(response.status, 200);
  assert.ok(response.headers.get('x-request-id'), 'response has an X-Request-Id');
  // The gateway replaced the client's fg_ key with the route's upstream key (the mock
  // answers with its SHA-256, never the key itself).
  assert.equal(response.headers.get('x-mock-received-auth-sha256'),
    createHash('sha256').update('Bearer upstream-key').digest('hex'));
  assert.equal(response.headers.get('x-mock-received-auth'), null);
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
      assert.match(err.message, /no route for model "mock-embed" on POST \/v1\/embeddings/);
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

test('openai and azure: tool calls, whole and reassembled by the SDK\'s stream helper', async () => {
  const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { q: { type: 'string' } } } } }];
  for (const model of ['mock-gpt', 'azure-gpt']) {
    const r = await ctx.client.chat.completions.create(
      { model, messages: [{ role: 'user', content: 'use the tool' }], tools });
    const call = r.choices[0].message.tool_calls[0];
    assert.equal(r.choices[0].finish_reason, 'tool_calls', model);
    assert.equal(call.function.name, 'get_weather', model);
    assert.deepEqual(JSON.parse(call.function.arguments), { q: 'mock' }, model);

    const runner = ctx.client.beta.chat.completions.stream(
      { model, messages: [{ role: 'user', content: 'use the tool' }], tools });
    const done = await runner.finalChatCompletion();
    const streamed = done.choices[0].message.tool_calls[0];
    assert.equal(streamed.id, call.id, model);
    assert.equal(streamed.function.name, 'get_weather', model);
    assert.deepEqual(JSON.parse(streamed.function.arguments), { q: 'mock' }, model);
    assert.equal(done.choices[0].finish_reason, 'tool_calls', model);
  }
  const last = (await (await fetch(`http://127.0.0.1:${ctx.mockPort}/__mock/stats`)).json()).last;
  assert.match(last.uri, /^\/openai\/deployments\/gpt4o-prod\/chat\/completions/);
});
