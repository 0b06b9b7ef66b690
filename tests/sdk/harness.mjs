// Shared by the SDK end-to-end tests: the C mock upstream and fastgated as children on free
// loopback ports in a temp dir, tracked by PID and stopped by it; every wait is bounded.
//
// FG_BUILD may point at the build dir holding fastgated and mock-upstream
// (default: ../../build-test relative to this file).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const BUILD = path.resolve(process.env.FG_BUILD || path.join(HERE, '..', '..', 'build-test'));
export const FASTGATED = path.join(BUILD, 'fastgated');
export const MOCK = path.join(BUILD, 'mock-upstream');

const SANITIZER_MARKS = ['ERROR: AddressSanitizer', 'LeakSanitizer', 'runtime error:',
  'SUMMARY: UndefinedBehaviorSanitizer'];
const START_TIMEOUT_MS = 15000;
export const STOP_TIMEOUT_MS = 15000;
const CTL_TIMEOUT_MS = 10000;

const CHILD_ENV = {
  ...process.env,
  ASAN_OPTIONS: process.env.ASAN_OPTIONS || 'detect_leaks=1:abort_on_error=0:exitcode=99',
  UBSAN_OPTIONS: process.env.UBSAN_OPTIONS || 'print_stacktrace=1:halt_on_error=1',
};

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A child whose stdout/stderr go to files in the work dir, readable while it runs.
export class Child {
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
export function ctl(sockPath, cmd, args) {
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

// Starts the mock, then fastgated with `routesYaml(mockPort)` as its one routes file, and
// creates a key through the control socket. Fills and returns `ctx`: dir, mock, mockPort,
// gw, port, scheme, sock, key. `prefix` names the temp dir; `extraArgs(dir)` gives more
// fastgated flags (made in the temp dir, e.g. a TLS certificate).
export async function startStack(ctx, routesYaml, prefix = 'fg-sdk-', extraArgs = () => []) {
  for (const bin of [FASTGATED, MOCK]) {
    assert.ok(fs.existsSync(bin), `missing ${bin} (run make test, or set FG_BUILD)`);
  }
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));

  ctx.mock = new Child('mock', [MOCK, '--listen', '127.0.0.1:0'], ctx.dir);
  const mm = await ctx.mock.waitFor(() => ctx.mock.stdout(), /listening 127\.0\.0\.1:(\d+)/, 'mock-upstream to listen');
  ctx.mockPort = Number(mm[1]);

  const routes = path.join(ctx.dir, 'routes');
  fs.mkdirSync(routes);
  fs.writeFileSync(path.join(routes, '10-sdk.yaml'), routesYaml(ctx.mockPort));
  ctx.sock = path.join(ctx.dir, 'ctl.sock');
  ctx.gw = new Child('fastgated', [FASTGATED, '--listen', '127.0.0.1:0', '--routes', routes,
    '--keys', path.join(ctx.dir, 'keys.db'), '--audit', path.join(ctx.dir, 'audit.db'),
    '--control', ctx.sock, ...extraArgs(ctx.dir)], ctx.dir);
  const gm = await ctx.gw.waitFor(() => ctx.gw.stderr(), /listening on (https?):\/\/127\.0\.0\.1:(\d+)/, 'fastgated to listen');
  ctx.scheme = gm[1];
  ctx.port = Number(gm[2]);

  const reply = await ctl(ctx.sock, 'key.create', { name: 'sdk' });
  assert.equal(reply.ok, true, `key.create failed: ${JSON.stringify(reply)}`);
  ctx.key = reply.result.key;
  assert.match(ctx.key, /^fg_[A-Za-z0-9]{32,}/);
  return ctx;
}

// Stops fastgated (which must exit 0) and the mock by PID, checks both for sanitizer reports,
// removes the temp dir (unless FG_KEEP_TMP is set), and fails on any problem.
export async function stopStack(ctx) {
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
}

// The mock's GET /__mock/stats (counters and the last request), bounded.
export async function mockStats(ctx) {
  const r = await fetch(`http://127.0.0.1:${ctx.mockPort}/__mock/stats`, { signal: AbortSignal.timeout(5000) });
  assert.equal(r.status, 200);
  return r.json();
}
