// End-to-end tests: the official `@anthropic-ai/sdk` npm SDK talking to the real fastgated's
// /v1/messages, passed through to the C mock upstream as `provider: anthropic`: the client's
// fastgate key (the SDK's apiKey, sent in x-api-key) swapped for the route's key, the
// client's anthropic-version kept. Both processes run on free loopback ports in a temp dir,
// are tracked by PID and stopped here; every wait is bounded (see harness.mjs).
//
// FG_BUILD may point at the build dir holding fastgated and mock-upstream
// (default: ../../build-test relative to this file).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { startStack, stopStack, mockStats } from './harness.mjs';

const ROUTE_KEY = 'anthropic-route-key';
// The route's own anthropic-version, which the gateway sends only when the client sent none:
// unlike the SDK's, so that the test sees whose went upstream.
const ROUTE_VERSION = '2099-12-31';

const ctx = {};

before(async () => {
  await startStack(ctx, (mockPort) => `routes:
  - name: messages
    match: { path: /v1/messages, methods: [POST] }
    upstream:
      url: http://127.0.0.1:${mockPort}
      provider: anthropic
      api_key: ${ROUTE_KEY}
      api_version: "${ROUTE_VERSION}"
    timeout: 5
  - name: messages-to-openai
    priority: 10
    match: { path: /v1/messages, methods: [POST], body: { model: "gpt-*" } }
    upstream: { url: http://127.0.0.1:${mockPort}, api_key: openai-route-key }
    timeout: 5
`, 'fg-asdk-');
  ctx.baseURL = `http://127.0.0.1:${ctx.port}`;
  ctx.client = new Anthropic({ apiKey: ctx.key, baseURL: ctx.baseURL, maxRetries: 0, timeout: 10000 });
});

after(() => stopStack(ctx));

const MODEL = 'claude-mock-1';
const USER_TEXT = 'ping from the anthropic SDK';
const EXPECTED = `Hello from mock. You said: ${USER_TEXT}`;
const PARAMS = {
  model: MODEL, max_tokens: 64, system: 'be brief',
  messages: [{ role: 'user', content: USER_TEXT }],
};
const TOOLS = [{
  name: 'lookup', description: 'look something up',
  input_schema: { type: 'object', properties: { q: { type: 'string' } }, required: ['q'] },
}];
const tokens = (s) => Math.ceil(Buffer.byteLength(s) / 4);

const lowerKeys = (o) => Object.fromEntries(Object.entries(o || {}).map(([k, v]) => [k.toLowerCase(), v]));

test('messages.create: text, end_turn and usage', async () => {
  const { data, response } = await ctx.client.messages.create(PARAMS).withResponse();
  assert.equal(response.status, 200);
  assert.ok(response.headers.get('x-request-id'), 'response has the gateway\'s X-Request-Id');
  // the upstream's request-id reaches the SDK
  assert.match(data._request_id ?? '', /^req_mock_\d+$/);
  assert.equal(data.type, 'message');
  assert.equal(data.role, 'assistant');
  assert.equal(data.model, MODEL);
  assert.match(data.id, /^msg_mock_\d+$/);
  assert.equal(data.content.length, 1);
  assert.equal(data.content[0].type, 'text');
  assert.equal(data.content[0].text, EXPECTED);
  assert.equal(data.stop_reason, 'end_turn');
  assert.equal(data.stop_sequence, null);
  assert.equal(data.usage.input_tokens, tokens('be brief') + tokens(USER_TEXT));
  assert.equal(data.usage.output_tokens, tokens(EXPECTED));
  assert.equal(data.usage.cache_read_input_tokens, 0);
  assert.equal(data.usage.cache_creation_input_tokens, 0);
});

test('the upstream gets the route\'s key and the client\'s anthropic-version', async () => {
  await ctx.client.messages.create(PARAMS);
  const { last } = await mockStats(ctx);
  assert.equal(last.method, 'POST');
  assert.equal(last.uri, '/v1/messages');
  const hdr = lowerKeys(last.headers);
  assert.equal(hdr['x-api-key'], ROUTE_KEY);
  assert.ok(!JSON.stringify(last.headers).includes(ctx.key), 'the client\'s fastgate key must not go upstream');
  assert.equal(hdr.authorization, undefined);
  // the SDK's own version header, not the route's
  assert.equal(hdr['anthropic-version'], '2023-06-01');
  assert.notEqual(hdr['anthropic-version'], ROUTE_VERSION);

  // a version the client chose itself also goes through as it is
  await ctx.client.messages.create(PARAMS, { headers: { 'anthropic-version': '2024-02-29' } });
  assert.equal(lowerKeys((await mockStats(ctx)).last.headers)['anthropic-version'], '2024-02-29');
});

test('X-Mock-Cached-Tokens comes back as usage.cache_read_input_tokens', async () => {
  const m = await ctx.client.messages.create(PARAMS, { headers: { 'X-Mock-Cached-Tokens': '17' } });
  assert.equal(m.usage.cache_read_input_tokens, 17);
});

test('messages.stream: the helpers reassemble the text', async () => {
  const stream = ctx.client.messages.stream(PARAMS, { headers: { 'X-Mock-Chunks': '6' } });
  const pieces = [];
  stream.on('text', (delta) => pieces.push(delta));
  const msg = await stream.finalMessage();
  assert.ok(pieces.length >= 2, `only ${pieces.length} text delta(s) arrived`);
  assert.equal(pieces.join(''), EXPECTED);
  assert.equal(msg.content.length, 1);
  assert.equal(msg.content[0].type, 'text');
  assert.equal(msg.content[0].text, EXPECTED);
  assert.equal(msg.stop_reason, 'end_turn');
  assert.equal(msg.model, MODEL);
  assert.ok(msg.usage.input_tokens > 0, `input_tokens ${msg.usage.input_tokens}`);
  assert.equal(msg.usage.output_tokens, tokens(EXPECTED));
  assert.equal(await stream.finalText(), EXPECTED);
});

test('messages.create with stream: true yields the raw events in order', async () => {
  const stream = await ctx.client.messages.create({ ...PARAMS, stream: true });
  const types = [];
  let text = '';
  for await (const ev of stream) {
    types.push(ev.type);
    if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') text += ev.delta.text;
  }
  assert.equal(types[0], 'message_start');
  assert.equal(types[1], 'content_block_start');
  assert.deepEqual(types.slice(-3), ['content_block_stop', 'message_delta', 'message_stop']);
  assert.equal(text, EXPECTED);
});

test('tool use: create and stream end with a tool_use block', async () => {
  const params = { model: MODEL, max_tokens: 64, tools: TOOLS, messages: [{ role: 'user', content: 'use the tool' }] };
  const m = await ctx.client.messages.create(params);
  assert.equal(m.stop_reason, 'tool_use');
  const use = m.content.find((b) => b.type === 'tool_use');
  assert.ok(use, `no tool_use block in ${JSON.stringify(m.content)}`);
  assert.equal(use.name, 'lookup');
  assert.deepEqual(use.input, { q: 'mock' });

  // streamed: the SDK reassembles the input from its input_json_delta fragments
  const stream = ctx.client.messages.stream(params);
  const jsonPieces = [];
  stream.on('inputJson', (partial) => jsonPieces.push(partial));
  const msg = await stream.finalMessage();
  assert.equal(msg.stop_reason, 'tool_use');
  assert.equal(msg.content[0].type, 'text');
  assert.equal(msg.content[0].text, 'Calling.');
  const block = msg.content.find((b) => b.type === 'tool_use');
  assert.ok(block, `no tool_use block in ${JSON.stringify(msg.content)}`);
  assert.equal(block.id, 'toolu_mock_1');
  assert.equal(block.name, 'lookup');
  assert.deepEqual(block.input, { q: 'mock' });
  assert.ok(jsonPieces.length >= 2, `only ${jsonPieces.length} input_json_delta(s)`);
  assert.equal(msg.usage.output_tokens, tokens('Calling.') + tokens('{"q":"mock"}'));

  // the tool's result goes back, and comes back in the mock's echo
  const follow = await ctx.client.messages.create({
    model: MODEL, max_tokens: 64, tools: TOOLS,
    messages: [
      { role: 'user', content: 'use the tool' },
      { role: 'assistant', content: msg.content },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: block.id, content: 'forty-two' }] },
    ],
  });
  assert.equal(follow.stop_reason, 'end_turn');
  assert.equal(follow.content[0].text, 'Hello from mock. You said: forty-two');
});

test('a bad fastgate key raises AuthenticationError (401) from the gateway', async () => {
  const badKey = 'fg_' + 'A'.repeat(46);
  const bad = new Anthropic({ apiKey: badKey, baseURL: ctx.baseURL, maxRetries: 0, timeout: 10000 });
  const before = await mockStats(ctx);
  await assert.rejects(bad.messages.create(PARAMS), (err) => {
    assert.ok(err instanceof Anthropic.AuthenticationError, `got ${err?.constructor?.name}: ${err?.message}`);
    assert.equal(err.status, 401);
    assert.match(err.message, /invalid API key/);
    assert.ok(!err.message.includes(badKey), 'message must not echo the key');
    assert.ok(!JSON.stringify(err.error ?? {}).includes(badKey), 'error body must not echo the key');
    assert.ok(err.headers?.['x-request-id'], 'the gateway\'s error carries its X-Request-Id');
    // the gateway's own answer (its error code, no upstream request-id), not the upstream's
    // in Anthropic's shape, which its SDK reads, with the gateway's code beside the type
    assert.equal(err.error?.type, 'error');
    assert.equal(err.error?.error?.type, 'authentication_error');
    assert.equal(err.error?.error?.code, 'invalid_api_key');
    assert.equal(err.request_id, undefined);
    return true;
  });
  const after = await mockStats(ctx);
  assert.equal(after.messages, before.messages, 'a request with a bad key must not reach the upstream');
});

test('an upstream 529 raises an APIError with status 529 and the overloaded_error', async () => {
  const overloaded = new Anthropic({
    apiKey: ctx.key, baseURL: ctx.baseURL, maxRetries: 0, timeout: 10000,
    defaultHeaders: { 'X-Mock-Fail': 'status:529' },
  });
  for (const req of [() => overloaded.messages.create(PARAMS),
    () => overloaded.messages.stream(PARAMS).finalMessage()]) {
    await assert.rejects(req(), (err) => {
      assert.ok(err instanceof Anthropic.APIError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 529);
      assert.equal(err.error?.type, 'error');
      assert.equal(err.error?.error?.type, 'overloaded_error');
      assert.match(err.request_id ?? '', /^req_mock_\d+$/);
      return true;
    });
  }
});

test('overloaded-mid: the error event in a stream raises in the SDK', async () => {
  const stream = ctx.client.messages.stream(PARAMS, { headers: { 'X-Mock-Fail': 'overloaded-mid' } });
  let text = '';
  stream.on('text', (d) => { text += d; });
  // The SDK turns an SSE "error" event into an APIError without a status (an
  // APIConnectionError in 0.41) whose message is the event's data.
  await assert.rejects(stream.finalMessage(), (err) => {
    assert.ok(err instanceof Anthropic.APIError, `got ${err?.constructor?.name}: ${err?.message}`);
    assert.match(err.message, /overloaded_error/);
    assert.match(err.message, /Overloaded/);
    return true;
  });
  assert.ok(text.length > 0 && EXPECTED.startsWith(text), `text before the error: ${JSON.stringify(text)}`);
  assert.notEqual(text, EXPECTED);
});

test('the gateway still answers after the error cases', async () => {
  const m = await ctx.client.messages.create(PARAMS);
  assert.equal(m.content[0].text, EXPECTED);
});

// Anthropic's API to an OpenAI upstream: translated both ways by the gateway
test('to an OpenAI upstream: create and stream read as Anthropic\'s, usage in message_delta', async () => {
  const params = { ...PARAMS, model: 'gpt-4o' };
  const msg = await ctx.client.messages.create(params);
  assert.equal(msg.type, 'message');
  assert.equal(msg.content[0].text, EXPECTED);
  assert.equal(msg.stop_reason, 'end_turn');
  assert.equal(msg.usage.input_tokens, tokens('be brief') + tokens(USER_TEXT));
  assert.equal(msg.usage.output_tokens, tokens(EXPECTED));
  const last = (await mockStats(ctx)).last;
  assert.equal(last.uri, '/v1/chat/completions');
  assert.equal(lowerKeys(last.headers).authorization, 'Bearer openai-route-key');
  const sent = JSON.parse(last.body);
  assert.deepEqual(sent.messages[0], { role: 'system', content: 'be brief' });

  const stream = ctx.client.messages.stream(params);
  const types = [];
  stream.on('streamEvent', (ev) => types.push(ev.type));
  const final = await stream.finalMessage();
  assert.equal(final.content[0].text, EXPECTED);
  assert.equal(final.stop_reason, 'end_turn');
  assert.equal(final.usage.output_tokens, tokens(EXPECTED));
  assert.equal(types[0], 'message_start');
  assert.equal(types.at(-1), 'message_stop');
  assert.equal(types.at(-2), 'message_delta');
});

test('to an OpenAI upstream: its 500 comes back as Anthropic\'s error with the status kept', async () => {
  await assert.rejects(
    ctx.client.messages.create({ ...PARAMS, model: 'gpt-4o' }, { headers: { 'X-Mock-Fail': '500' } }),
    (err) => {
      assert.ok(err instanceof Anthropic.APIError, `got ${err?.constructor?.name}`);
      assert.equal(err.status, 500);
      assert.equal(err.error?.type, 'error');
      return true;
    });
});

test('to an OpenAI upstream: a tool call comes back as a tool_use block, whole and streamed', async () => {
  const params = { ...PARAMS, model: 'gpt-4o', tools: TOOLS, messages: [{ role: 'user', content: 'use the tool' }] };
  const msg = await ctx.client.messages.create(params);
  const block = msg.content.find((b) => b.type === 'tool_use');
  assert.equal(msg.stop_reason, 'tool_use');
  assert.equal(block.name, 'lookup');
  assert.deepEqual(block.input, { q: 'mock' });
  const final = await ctx.client.messages.stream(params).finalMessage();
  const streamed = final.content.find((b) => b.type === 'tool_use');
  assert.equal(final.stop_reason, 'tool_use');
  assert.deepEqual(streamed.input, { q: 'mock' });
  // the tool definitions reached the OpenAI upstream as functions
  const sent = JSON.parse((await mockStats(ctx)).last.body);
  assert.equal(sent.tools[0].type, 'function');
  assert.equal(sent.tools[0].function.name, 'lookup');
});
