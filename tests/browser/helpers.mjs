// Shared pieces of the browser tests: the real server as a child process, a
// headless Chromium with a fresh profile, JWTs minted here, publishing over
// HTTP, and a TCP proxy that can cut or refuse the page's sockets. Not a test
// file itself (node --test only runs *.test.mjs here).
import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const REPORTS = path.join(ROOT, 'reports', 'browser');
export const JWT_SECRET = 'browser-tests-' + crypto.randomBytes(8).toString('hex');
export const API_KEY = 'publisher-' + crypto.randomBytes(8).toString('hex');

const SERVER_BIN = process.env.TICKWIRE_BIN || path.join(ROOT, 'target', 'debug', 'tickwire');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'
];
const STARTUP_TIMEOUT_MS = 30000;

// The client's timing, shortened so that the reconnect and fallback tests take
// seconds; the same code paths as the defaults.
export const FAST_CLIENT = {
  reconnectBaseMs: 100,
  reconnectMaxMs: 1000,
  connectTimeoutMs: 3000,
  stableMs: 1000,
  pollIntervalMs: 250,
  socketRetryMs: 1000
};

function ensureBinary() {
  if (fs.existsSync(SERVER_BIN)) return;
  if (process.env.TICKWIRE_BIN) throw new Error('TICKWIRE_BIN=' + SERVER_BIN + ' does not exist');
  execFileSync('cargo', ['build', '--bin', 'tickwire'], { cwd: ROOT, stdio: 'inherit' });
}

const ANSI = /\x1b\[[0-9;]*m/g;

// Starts target/debug/tickwire on 127.0.0.1:port (0: a free one) and resolves
// once it logs `listening on 127.0.0.1:PORT`.
export async function startServer({ port = 0, extraArgs = [] } = {}) {
  ensureBinary();
  const args = ['--listen', '127.0.0.1:' + port, '--jwt-secret', JWT_SECRET, '--api-key', API_KEY, ...extraArgs];
  const proc = spawn(SERVER_BIN, args, {
    cwd: ROOT,
    env: { ...process.env, NO_COLOR: '1', RUST_LOG: process.env.RUST_LOG || 'info' },
    stdio: ['ignore', 'pipe', 'pipe']
  });
  const lines = [];
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const listening = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not log "listening on" within ' + STARTUP_TIMEOUT_MS + ' ms:\n' + lines.join('\n'))), STARTUP_TIMEOUT_MS);
    const onText = (stream) => {
      let rest = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        rest += chunk;
        let nl;
        while ((nl = rest.indexOf('\n')) >= 0) {
          const line = rest.slice(0, nl).replace(ANSI, '');
          rest = rest.slice(nl + 1);
          lines.push(line);
          if (lines.length > 2000) lines.shift();
          const m = line.match(/listening on\D*?(127\.0\.0\.1):(\d+)/);
          if (m) { clearTimeout(timer); resolve(Number(m[2])); }
        }
      });
    };
    onText(proc.stdout);
    onText(proc.stderr);
    proc.once('error', (err) => { clearTimeout(timer); reject(err); });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error('server exited (' + (signal || code) + ') before listening:\n' + lines.join('\n')));
    });
  });
  const actualPort = await listening;
  let stopped = false;
  return {
    port: actualPort,
    url: 'http://127.0.0.1:' + actualPort,
    pid: proc.pid,
    output: () => lines.join('\n'),
    exited,
    // SIGTERM (the server drains and exits 0), SIGKILL if it is still there after 15 s.
    async stop() {
      if (stopped) return exited;
      stopped = true;
      if (proc.exitCode === null && proc.signalCode === null) {
        process.kill(proc.pid, 'SIGTERM');
        const timer = setTimeout(() => { try { process.kill(proc.pid, 'SIGKILL'); } catch { /* gone */ } }, 15000);
        const result = await exited;
        clearTimeout(timer);
        return result;
      }
      return exited;
    }
  };
}

export function mintJwt({ sub, ttlSeconds = 3600, symbols } = {}) {
  const enc = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds };
  if (symbols) claims.symbols = symbols;
  const unsigned = enc({ alg: 'HS256', typ: 'JWT' }) + '.' + enc(claims);
  const signature = crypto.createHmac('sha256', JWT_SECRET).update(unsigned).digest('base64url');
  return unsigned + '.' + signature;
}

export async function publish(server, messages) {
  const res = await fetch(server.url + '/api/publish', {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + API_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify(messages)
  });
  const text = await res.text();
  if (res.status !== 202) throw new Error('publish answered ' + res.status + ': ' + text);
  return JSON.parse(text);
}

export async function launchBrowser() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tickwire-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 900 }
  });
  return {
    context,
    async newPage(viewport) {
      const page = await context.newPage();
      if (viewport) await page.setViewportSize(viewport);
      return page;
    },
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    }
  };
}

// Collects what a person would see in DevTools as errors.
export function watchConsole(page) {
  const errors = [];
  page.on('console', (msg) => { if (msg.type() === 'error') errors.push('console: ' + msg.text()); });
  page.on('pageerror', (err) => errors.push('pageerror: ' + err.message));
  return errors;
}

export async function screenshot(page, name) {
  fs.mkdirSync(REPORTS, { recursive: true });
  const file = path.join(REPORTS, name + '.png');
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

// Opens /websocket-test/ from `origin` with a JWT pasted into its field, the
// publisher key typed in, and the client timing set to `config`.
export async function openTestPage(browser, origin, { token, config, viewport } = {}) {
  const page = await browser.newPage(viewport);
  const errors = watchConsole(page);
  await page.goto(origin + '/websocket-test/');
  if (token) await page.fill('#jwt', token);
  await page.fill('#api-key', API_KEY);
  if (config) await page.evaluate((cfg) => window.websocketClient.configure(cfg), config);
  return { page, errors };
}

export async function connectEndpoint(page, kind) {
  await page.click('.endpoint[data-kind="' + kind + '"] [data-action="connect"]');
  await waitForStatus(page, kind, 'open');
}

export async function waitForStatus(page, kind, status, timeout = 20000) {
  await page.locator('[data-testid="status-' + kind + '"][data-status="' + status + '"]').waitFor({ timeout });
}

export async function subscribe(page, symbol) {
  await page.fill('#md-symbol', symbol);
  await page.click('#md-subscribe');
  await page.locator('#md-chips .chip[data-symbol="' + symbol + '"][data-ack="yes"]').waitFor();
}

export function tick(symbol, price, extra = {}) {
  return { type: 'market_update', symbol, price, change: 0.5, volume: 1000, ...extra };
}

// The open sockets of a relay: track(sock) adds one, which leaves the set
// when it closes; its errors are expected (the relay cuts connections).
function socketSet() {
  const sockets = new Set();
  const track = (sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
  };
  return { sockets, track };
}

// A TCP proxy between the page and the server. cut() destroys every open
// connection (both sides) as a network failure would; block() answers new
// WebSocket upgrades with 503 while plain HTTP (the page, polling) still
// passes; unblock() lets them through again.
export async function startProxy(targetPort) {
  const { sockets, track } = socketSet();
  let blocked = false;
  const counts = { upgrades: 0, refused: 0, cuts: 0 };
  const server = net.createServer((client) => {
    track(client);
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      if (head.indexOf('\r\n\r\n') < 0 && head.length < 65536) return;
      client.off('data', onData);
      client.pause();
      const isUpgrade = /^upgrade:\s*websocket/im.test(head.toString('latin1'));
      if (isUpgrade && blocked) {
        counts.refused++;
        client.end('HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
        return;
      }
      if (isUpgrade) counts.upgrades++;
      const upstream = net.connect(targetPort, '127.0.0.1');
      track(upstream);
      upstream.on('close', () => client.destroy());
      client.on('close', () => upstream.destroy());
      upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    };
    client.on('data', onData);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  return {
    port,
    url: 'http://127.0.0.1:' + port,
    counts,
    cut() {
      counts.cuts++;
      for (const sock of [...sockets]) sock.destroy();
    },
    block() { blocked = true; },
    unblock() { blocked = false; },
    async close() {
      for (const sock of [...sockets]) sock.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  };
}

// Reads what the market table shows for a symbol.
export async function marketRow(page, symbol) {
  return page.locator('#md-rows tr[data-symbol="' + symbol + '"]').evaluate((tr) => ({
    seq: Number(tr.getAttribute('data-seq')),
    ticks: Number(tr.getAttribute('data-ticks')),
    gaps: Number(tr.getAttribute('data-gaps')),
    via: tr.getAttribute('data-via'),
    price: Number(tr.querySelector('.price').getAttribute('data-value'))
  }));
}

// Waits until the market table's row for `symbol` shows every value of
// `want` (exact: seq, ticks, gaps, via, price; at least: minSeq, minTicks).
export async function waitForRow(page, symbol, want, timeout = 20000) {
  try {
    await page.waitForFunction(({ symbol, want }) => {
      const tr = document.querySelector('#md-rows tr[data-symbol="' + symbol + '"]');
      if (!tr) return false;
      const row = {
        seq: Number(tr.getAttribute('data-seq')),
        ticks: Number(tr.getAttribute('data-ticks')),
        gaps: Number(tr.getAttribute('data-gaps')),
        via: tr.getAttribute('data-via'),
        price: Number(tr.querySelector('.price').getAttribute('data-value'))
      };
      return Object.keys(want).every((key) => {
        if (key === 'minSeq') return row.seq >= want.minSeq;
        if (key === 'minTicks') return row.ticks >= want.minTicks;
        return row[key] === want[key];
      });
    }, { symbol, want }, { timeout, polling: 50 });
  } catch (err) {
    const seen = await marketRow(page, symbol).catch(() => 'no row');
    throw new Error('market row ' + symbol + ' never showed ' + JSON.stringify(want) + '; it shows ' + JSON.stringify(seen) + ' (' + err.message.split('\n')[0] + ')');
  }
}

// A free loopback port, for a process that must be told its port up front
// (redis-server). Another process could take it in between; rare enough here.
export async function sparePort() {
  const probe = net.createServer();
  await new Promise((resolve, reject) => { probe.once('error', reject); probe.listen(0, '127.0.0.1', resolve); });
  const port = probe.address().port;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

// Starts a real redis-server (no persistence, its own scratch directory) on a
// spare loopback port and resolves once it answers. stop() ends it by its PID
// (SIGTERM, SIGKILL after 5 s) and removes the directory.
export async function startRedis() {
  for (let attempt = 1; ; attempt++) {
    const port = await sparePort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tickwire-redis-'));
    const proc = spawn('redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines = [];
    const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    const ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('redis-server did not get ready within ' + STARTUP_TIMEOUT_MS + ' ms:\n' + lines.join('\n'))), STARTUP_TIMEOUT_MS);
      const onData = (chunk) => {
        for (const line of String(chunk).split('\n')) {
          if (!line) continue;
          lines.push(line);
          if (/Ready to accept connections/i.test(line)) { clearTimeout(timer); resolve(); }
        }
      };
      proc.stdout.on('data', onData);
      proc.stderr.on('data', onData);
      proc.once('error', (err) => { clearTimeout(timer); reject(err); });
      exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error('redis-server exited (' + (signal || code) + ') before it was ready:\n' + lines.join('\n')));
      });
    });
    try {
      await ready;
    } catch (err) {
      fs.rmSync(dir, { recursive: true, force: true });
      // Someone took the spare port between the probe and the bind: try another.
      if (attempt < 3 && /address already in use/i.test(err.message)) continue;
      throw err;
    }
    let stopped = null;
    return {
      port,
      url: 'redis://127.0.0.1:' + port,
      pid: proc.pid,
      output: () => lines.join('\n'),
      stop() {
        if (stopped) return stopped;
        stopped = (async () => {
          if (proc.exitCode === null && proc.signalCode === null) {
            process.kill(proc.pid, 'SIGTERM');
            const timer = setTimeout(() => { try { process.kill(proc.pid, 'SIGKILL'); } catch { /* gone */ } }, 5000);
            await exited;
            clearTimeout(timer);
          }
          fs.rmSync(dir, { recursive: true, force: true });
          return exited;
        })();
        return stopped;
      }
    };
  }
}

// Resolves once GET /ready answers 200 (in cluster mode: the node's Redis
// link is up and caught up).
export async function waitReady(server, timeout = 20000) {
  const deadline = Date.now() + timeout;
  let last = 'no answer';
  while (Date.now() < deadline) {
    try {
      const res = await fetch(server.url + '/ready');
      last = res.status + ' ' + await res.text();
      if (res.status === 200) return;
    } catch (err) {
      last = err.message;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(server.url + '/ready never answered 200 (last: ' + last + ')');
}

// A plain TCP relay to 127.0.0.1:targetPort (any protocol, e.g. a node's link
// to Redis). hold() makes new connections wait, unanswered, until release();
// connections already relayed are not touched.
export async function startTcpGate(targetPort) {
  const { sockets, track } = socketSet();
  const waiting = [];
  let held = false;
  const server = net.createServer((client) => {
    track(client);
    client.pause();
    const relay = () => {
      if (client.destroyed) return;
      const upstream = net.connect(targetPort, '127.0.0.1');
      track(upstream);
      upstream.on('close', () => client.destroy());
      client.on('close', () => upstream.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    };
    if (held) waiting.push(relay); else relay();
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  return {
    port,
    hold() { held = true; },
    release() {
      held = false;
      for (const relay of waiting.splice(0)) relay();
    },
    async close() {
      waiting.length = 0;
      for (const sock of [...sockets]) sock.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  };
}
