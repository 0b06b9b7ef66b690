// End-to-end: the official `openai` npm SDK talking to fastgated over https (issue 20,
// item 1). A CA and a server certificate for 127.0.0.1 are made with the openssl command in
// the stack's temp dir; the client trusts that CA through an https.Agent, as an operator's
// client would trust a private CA. A client that does not trust it is refused, so the
// listener really speaks TLS.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import OpenAI from 'openai';
import { startStack, stopStack, mockStats } from './harness.mjs';

const ctx = {};

function openssl(dir, ...args) {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], timeout: 60000 });
}

// ca.pem, server.pem and server.key in dir; returns the flags that serve them.
function makeCerts(dir) {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(dir, 'req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
    '-subj', '/CN=fastgate sdk test CA');
  openssl(dir, 'req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  fs.writeFileSync(path.join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  openssl(dir, 'x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
    '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'server.ext');
  return ['--tls-cert', path.join(dir, 'server.pem'), '--tls-key', path.join(dir, 'server.key')];
}

before(async () => {
  await startStack(ctx, (mockPort) => `routes:
  - name: chat
    match: { path: /v1/chat/completions, methods: [POST] }
    upstream: { url: http://127.0.0.1:${mockPort}/v1/chat/completions, api_key: upstream-key }
    timeout: 5
`, 'fg-sdk-tls-', makeCerts);
  ctx.baseURL = `https://127.0.0.1:${ctx.port}/v1`;
  ctx.agent = new https.Agent({ ca: fs.readFileSync(path.join(ctx.dir, 'ca.pem')), keepAlive: true });
  ctx.client = new OpenAI({ apiKey: ctx.key, baseURL: ctx.baseURL, httpAgent: ctx.agent,
    maxRetries: 0, timeout: 10000 });
});

after(async () => {
  ctx.agent?.destroy();
  await stopStack(ctx);
});

const MESSAGES = [{ role: 'user', content: 'ping over https' }];

test('the gateway announces https and a chat completion comes back over it', async () => {
  assert.equal(ctx.scheme, 'https');
  const r = await ctx.client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES });
  assert.equal(r.choices[0].message.content, 'Hello from mock. You said: ping over https');
  const last = (await mockStats(ctx)).last;
  const proto = Object.entries(last.headers).find(([k]) => k.toLowerCase() === 'x-forwarded-proto');
  assert.deepEqual(proto?.[1], 'https');
});

test('a streamed completion arrives chunk by chunk over https', async () => {
  const stream = await ctx.client.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES, stream: true });
  let text = '';
  let chunks = 0;
  for await (const c of stream) {
    chunks++;
    text += c.choices[0]?.delta?.content ?? '';
  }
  assert.ok(chunks > 2, `only ${chunks} chunks`);
  assert.equal(text, 'Hello from mock. You said: ping over https');
});

test('a client that does not trust the CA gets a connection error, not an answer', async () => {
  const untrusting = new OpenAI({ apiKey: ctx.key, baseURL: ctx.baseURL, maxRetries: 0, timeout: 10000,
    httpAgent: new https.Agent({ keepAlive: false }) });
  await assert.rejects(untrusting.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES }),
    (e) => e instanceof OpenAI.APIConnectionError);
});
