// Spend control (issue #19) as the official `openai` SDK (pinned in tests/package.json) sees
// it: a limited key's 429 is a RateLimitError carrying the gateway's message and headers
// (retry-after, x-ratelimit-*); the SDK never waits longer than Retry-After before a retry;
// and a refusal marked x-should-retry: false (insufficient_quota, request_too_large) is not
// retried even with maxRetries: 2. Requests are counted three ways: what the SDK sent
// (a counting fetch), what the gateway took (its status counter) and what reached the mock.
//
// The gateway runs with the shipped price and model tables (share/pricing.yaml,
// share/models.yaml), which startStack does not pass, so the stack is started here with the
// harness's own pieces. Every process is tracked by PID; every wait is bounded.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { Child, ctl, FASTGATED, HERE, MOCK, mockStats, stopStack } from './harness.mjs';

const ROOT = path.resolve(HERE, '..', '..');
const PRICING = path.join(ROOT, 'share', 'pricing.yaml');
const MODELS = path.join(ROOT, 'share', 'models.yaml');
const ctx = {};

before(async () => {
  for (const f of [FASTGATED, MOCK, PRICING, MODELS]) assert.ok(fs.existsSync(f), `missing ${f}`);
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fg-sdk-spend-'));
  ctx.mock = new Child('mock', [MOCK, '--listen', '127.0.0.1:0'], ctx.dir);
  const mm = await ctx.mock.waitFor(() => ctx.mock.stdout(), /listening 127\.0\.0\.1:(\d+)/, 'mock-upstream to listen');
  ctx.mockPort = Number(mm[1]);
  const routes = path.join(ctx.dir, 'routes');
  fs.mkdirSync(routes);
  fs.writeFileSync(path.join(routes, '10-spend.yaml'), `routes:
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: http://127.0.0.1:${ctx.mockPort}/v1/chat/completions, api_key: upstream-key }
    models: [gpt-4o-mini]
    timeout: 10
`);
  ctx.sock = path.join(ctx.dir, 'ctl.sock');
  ctx.gw = new Child('fastgated', [FASTGATED, '--listen', '127.0.0.1:0', '--routes', routes,
    '--keys', path.join(ctx.dir, 'keys.db'), '--audit', path.join(ctx.dir, 'audit.db'),
    '--control', ctx.sock, '--pricing', PRICING, '--models', MODELS], ctx.dir);
  const gm = await ctx.gw.waitFor(() => ctx.gw.stderr(), /listening on http:\/\/127\.0\.0\.1:(\d+)/, 'fastgated to listen');
  ctx.port = Number(gm[1]);
  ctx.baseURL = `http://127.0.0.1:${ctx.port}/v1`;
});

after(() => stopStack(ctx));

async function control(cmd, args) {
  const r = await ctl(ctx.sock, cmd, args);
  assert.equal(r.ok, true, `${cmd}: ${JSON.stringify(r)}`);
  return r.result;
}

// A client whose fetch counts (and times) what the SDK sends.
function client(secret, maxRetries) {
  const sent = [];
  const c = new OpenAI({
    apiKey: secret,
    baseURL: ctx.baseURL,
    maxRetries,
    timeout: 10000,
    fetch: async (url, init) => { sent.push(Date.now()); return fetch(url, init); },
  });
  return { c, sent };
}

const gatewayRequests = async () => (await control('status', {})).requests;
const ASK = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'spend from the SDK' }], max_tokens: 20 };

test('a limited key: RateLimitError with the gateway message, retry-after and x-ratelimit-* (maxRetries 0)', async () => {
  // Fails if the 429 is not a RateLimitError, loses the gateway's message (the SDK shows
  // error.message), or lacks Retry-After or the x-ratelimit-* headers.
  const k = await control('key.create', { name: 'sdk-limited', limits: ['requests:1/day'] });
  const { c, sent } = client(k.key, 0);
  const { data, response } = await c.chat.completions.create(ASK).withResponse();
  assert.equal(data.object, 'chat.completion');
  assert.equal(response.headers.get('x-ratelimit-limit-requests'), '1');
  assert.equal(response.headers.get('x-ratelimit-remaining-requests'), '0');
  assert.match(response.headers.get('x-fastgate-cost'), /^0\.\d{9}$/);
  const before = await gatewayRequests();
  const err = await c.chat.completions.create(ASK).then(() => null, (e) => e);
  assert.ok(err instanceof OpenAI.RateLimitError, `got ${err && err.constructor.name}: ${err}`);
  assert.equal(err.status, 429);
  assert.equal(err.code, 'rate_limited');
  assert.match(err.message, new RegExp(`the API key \\(id ${k.id}\\) is over its limit requests:1/day; retry in \\d+ s`));
  const ra = Number(err.headers['retry-after']);
  assert.ok(Number.isInteger(ra) && ra >= 1 && ra <= 86400, `retry-after ${err.headers['retry-after']}`);
  assert.equal(err.headers['x-ratelimit-limit-requests'], '1');
  assert.equal(err.headers['x-ratelimit-remaining-requests'], '0');
  assert.match(err.headers['x-ratelimit-reset-requests'], /^(\d+h)?(\d+m)?\d+s$/);
  assert.equal(err.headers['x-should-retry'], undefined);
  assert.equal(sent.length, 2);
  assert.equal((await gatewayRequests()) - before, 1);
  assert.equal((await mockStats(ctx)).chat, 1);
});

test('a rate-limited retry waits no longer than Retry-After (maxRetries 1)', async () => {
  // Fails if the gateway's Retry-After is missing or not a number of seconds (the SDK
  // would then fall back to its own backoff whatever it said), or if the SDK's second
  // attempt came later than Retry-After allows. A day window: Retry-After is hours, so the
  // SDK (which obeys only waits under 60 s) uses its own short backoff, well within it.
  const k = await control('key.create', { name: 'sdk-retry', limits: ['requests:1/day'] });
  const first = client(k.key, 0);
  await first.c.chat.completions.create(ASK);
  const chatBefore = (await mockStats(ctx)).chat;
  const before = await gatewayRequests();
  const { c, sent } = client(k.key, 1);
  const err = await c.chat.completions.create(ASK).then(() => null, (e) => e);
  assert.ok(err instanceof OpenAI.RateLimitError, `${err}`);
  const ra = Number(err.headers['retry-after']);
  assert.ok(ra >= 1, `retry-after ${err.headers['retry-after']}`);
  assert.equal(sent.length, 2, 'one retry');
  assert.ok(sent[1] - sent[0] <= ra * 1000, `waited ${sent[1] - sent[0]} ms, Retry-After ${ra} s`);
  assert.equal((await gatewayRequests()) - before, 2);
  assert.equal((await mockStats(ctx)).chat, chatBefore, 'nothing refused reached the upstream');
});

test('insufficient_quota carries x-should-retry: false and is not retried (maxRetries 2)', async () => {
  // Fails if the gateway omits x-should-retry: false on a spent balance (the SDK would
  // then retry twice in vain) or the error is not the 429 insufficient_quota the SDK shows.
  const u = await control('user.create', { name: 'sdk-broke', balance: '0.000000001' });
  const k = await control('key.create', { name: 'sdk-broke-key', user: u.id });
  const chatBefore = (await mockStats(ctx)).chat;
  const before = await gatewayRequests();
  const { c, sent } = client(k.key, 2);
  const err = await c.chat.completions.create(ASK).then(() => null, (e) => e);
  assert.ok(err instanceof OpenAI.RateLimitError, `${err}`);
  assert.equal(err.code, 'insufficient_quota');
  assert.equal(err.headers['x-should-retry'], 'false');
  assert.equal(err.headers['retry-after'], undefined);
  assert.match(err.message, new RegExp(`balance of this key's user \\(id ${u.id}\\) is 0\\.000000001 USD`));
  assert.equal(sent.length, 1, 'the SDK did not retry');
  assert.equal((await gatewayRequests()) - before, 1);
  assert.equal((await mockStats(ctx)).chat, chatBefore);
});

test('request_too_large carries x-should-retry: false and is not retried (maxRetries 2)', async () => {
  // Fails if an estimate that can never fit is answered as a wait the SDK would retry.
  const k = await control('key.create', { name: 'sdk-small', limits: ['tokens:100/day'] });
  const before = await gatewayRequests();
  const { c, sent } = client(k.key, 2);
  const err = await c.chat.completions.create({ ...ASK, max_tokens: 1000 }).then(() => null, (e) => e);
  assert.ok(err instanceof OpenAI.RateLimitError, `${err}`);
  assert.equal(err.code, 'request_too_large');
  assert.equal(err.headers['x-should-retry'], 'false');
  assert.match(err.message, /tokens:100\/day/);
  assert.equal(sent.length, 1);
  assert.equal((await gatewayRequests()) - before, 1);
  // a smaller max_tokens fits, as the message says
  const ok = await c.chat.completions.create({ ...ASK, max_tokens: 5 });
  assert.equal(ok.object, 'chat.completion');
});

test('a stream on a limited key fails before any chunk with RateLimitError', async () => {
  // Fails if a refused stream is started (a 200 event stream) instead of a plain 429.
  const k = await control('key.create', { name: 'sdk-stream', limits: ['requests:1/month'] });
  const { c } = client(k.key, 0);
  const s = await c.chat.completions.create({ ...ASK, stream: true });
  let text = '';
  for await (const ch of s) text += ch.choices[0]?.delta?.content ?? '';
  assert.match(text, /^Hello from mock/);
  const err = await c.chat.completions.create({ ...ASK, stream: true }).then(() => null, (e) => e);
  assert.ok(err instanceof OpenAI.RateLimitError, `${err}`);
  assert.match(err.message, /requests:1\/month/);
});
