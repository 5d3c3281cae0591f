//! The Django drop-in, end to end: a page served by Django's dev server
//! (python/tests/project), behind a proxy that sends /ws/, /api/ and
//! /static/js/ to tickwire and everything else to Django, as the migration
//! guide's nginx does. Logged in with a Django session only, the page opens
//! its three sockets with the replaced system's websocketClient calls and no
//! token function (the access_token cookie of tickwire.django's middleware
//! does it), and shows what `manage.py test_websockets` publishes from Python.
//! Needs the virtualenv scripts/test-python makes (.venv-python); skipped,
//! saying so, when it is missing.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { API_KEY, JWT_SECRET, ROOT, launchBrowser, screenshot, sparePort, startServer, watchConsole } from './helpers.mjs';

const run = promisify(execFile);
const VENV = process.env.VENV || path.join(ROOT, '.venv-python');
const PYTHON = path.join(VENV, 'bin', 'python');
const PROJECT = path.join(ROOT, 'python', 'tests', 'project');
const PASSWORD = 'correct horse battery staple';
const STARTUP_TIMEOUT_MS = 30000;
const skip = fs.existsSync(PYTHON)
  ? false
  : 'no virtualenv at ' + VENV + ': run scripts/test-python first (it makes one with Django and ./python)';

let server;
let django;
let proxy;
let browser;
let scratch;
let env;

// The environment a deployment gives Django: where tickwire is, its key and
// its secret. No TICKWIRE_* of ours leaks in.
function djangoEnv() {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TICKWIRE_') && !k.startsWith('DJANGO_')));
  return {
    ...base,
    TICKWIRE_URL: server.url,
    TICKWIRE_API_KEY: API_KEY,
    TICKWIRE_JWT_SECRET: JWT_SECRET,
    TESTPROJECT_DB: path.join(scratch, 'db.sqlite3'),
    DJANGO_SETTINGS_MODULE: 'testproject.settings',
    PYTHONUNBUFFERED: '1'
  };
}

function manage(...args) {
  return run(PYTHON, ['manage.py', ...args], { cwd: PROJECT, env, timeout: 60000 });
}

// `manage.py runserver` on a spare port; resolves once it answers.
async function startDjango() {
  const port = await sparePort();
  const proc = spawn(PYTHON, ['manage.py', 'runserver', '127.0.0.1:' + port, '--noreload'], {
    cwd: PROJECT, env, stdio: ['ignore', 'pipe', 'pipe']
  });
  const lines = [];
  for (const stream of [proc.stdout, proc.stderr]) {
    stream.setEncoding('utf8');
    stream.on('data', (chunk) => { lines.push(...chunk.split('\n').filter(Boolean)); lines.splice(0, Math.max(0, lines.length - 500)); });
  }
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  for (;;) {
    if (proc.exitCode !== null) throw new Error('Django exited before answering:\n' + lines.join('\n'));
    try {
      const res = await fetch('http://127.0.0.1:' + port + '/');
      if (res.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error('Django did not answer within ' + STARTUP_TIMEOUT_MS + ' ms:\n' + lines.join('\n'));
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    port,
    output: () => lines.join('\n'),
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        process.kill(proc.pid, 'SIGTERM');
        const timer = setTimeout(() => { try { process.kill(proc.pid, 'SIGKILL'); } catch { /* gone */ } }, 5000);
        await exited;
        clearTimeout(timer);
      }
    }
  };
}

// The reverse proxy of the migration guide: /ws/, /api/ and /static/js/ to
// tickwire, the rest to Django, Host and Cookie passed on as they came (the
// browser's Origin then matches the Host tickwire sees, so it takes the
// cookie). Counts what it sent where.
async function startSiteProxy(djangoPort, tickwirePort) {
  const sockets = new Set();
  const track = (sock) => { sockets.add(sock); sock.on('close', () => sockets.delete(sock)); sock.on('error', () => {}); };
  const sent = { tickwire: [], django: [] };
  const route = (url) => (/^\/(ws|api)\//.test(url) || url.startsWith('/static/js/') ? 'tickwire' : 'django');
  const portOf = { tickwire: tickwirePort, django: djangoPort };

  const site = http.createServer((req, res) => {
    const to = route(req.url);
    sent[to].push(req.method + ' ' + req.url);
    const upstream = http.request(
      { host: '127.0.0.1', port: portOf[to], method: req.method, path: req.url, headers: req.headers },
      (answer) => { res.writeHead(answer.statusCode, answer.headers); answer.pipe(res); }
    );
    upstream.on('error', (err) => { res.writeHead(502, { 'Content-Type': 'text/plain' }); res.end(String(err)); });
    req.pipe(upstream);
  });
  site.on('connection', track);
  site.on('upgrade', (req, client, head) => {
    const to = route(req.url);
    sent[to].push('UPGRADE ' + req.url);
    const upstream = net.connect(portOf[to], '127.0.0.1', () => {
      let request = req.method + ' ' + req.url + ' HTTP/' + req.httpVersion + '\r\n';
      for (let i = 0; i < req.rawHeaders.length; i += 2) request += req.rawHeaders[i] + ': ' + req.rawHeaders[i + 1] + '\r\n';
      upstream.write(request + '\r\n');
      if (head.length) upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    track(upstream);
    upstream.on('close', () => client.destroy());
    client.on('close', () => upstream.destroy());
  });
  await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
  return {
    url: 'http://127.0.0.1:' + site.address().port,
    sent,
    async close() {
      for (const sock of [...sockets]) sock.destroy();
      await new Promise((resolve) => site.close(resolve));
    }
  };
}

before(async () => {
  if (skip) return;
  server = await startServer();
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'tickwire-django-'));
  env = djangoEnv();
  await manage('migrate', '--verbosity', '0');
  await manage('shell', '-c',
    "from django.contrib.auth import get_user_model; get_user_model().objects.create_user('alice', password='" + PASSWORD + "')");
  django = await startDjango();
  proxy = await startSiteProxy(django.port, server.port);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  await django?.stop();
  await server?.stop();
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
});

test('a Django-session page with the unchanged client calls receives what Python broadcasts', { skip, timeout: 90000 }, async () => {
  const page = await browser.newPage();
  const errors = watchConsole(page);

  // Log in as a person does: the dashboard sends us to Django's login form.
  await page.goto(proxy.url + '/dashboard/');
  assert.match(new URL(page.url()).pathname, /^\/login\/$/);
  await page.fill('#id_username', 'alice');
  await page.fill('#id_password', PASSWORD);
  await Promise.all([page.waitForURL(proxy.url + '/dashboard/'), page.click('#login')]);

  for (const kind of ['market-data', 'trading-signals', 'notifications']) {
    await page.locator('section[data-kind="' + kind + '"][data-status="open"]').waitFor({ timeout: 20000 });
  }
  assert.equal(await page.evaluate(() => window.websocketClient.options().token), null, 'no token function, no token');
  const cookies = await browser.context.cookies(proxy.url);
  const token = cookies.find((c) => c.name === 'access_token');
  assert.ok(token, 'the middleware set the access_token cookie: ' + JSON.stringify(cookies.map((c) => c.name)));
  assert.equal(token.httpOnly, true);
  assert.equal(token.sameSite, 'Lax');
  assert.doesNotMatch(await page.evaluate(() => document.cookie), /access_token/, 'page scripts cannot read it');
  for (const endpoint of ['/ws/market-data/', '/ws/trading-signals/', '/ws/notifications/']) {
    assert.ok(proxy.sent.tickwire.includes('UPGRADE ' + endpoint), endpoint + ' went through the site to tickwire');
  }
  assert.ok(proxy.sent.tickwire.includes('GET /static/js/websocket_client.js'), 'the client script comes from tickwire');

  // A broadcast made from Python: the replaced system's command, through the broadcasters.
  const { stdout } = await manage('test_websockets', '--type', 'all', '--count', '1', '--delay', '0', '--user', 'alice', '--symbol', 'BTC-USD');
  const price = stdout.match(/market_update BTC-USD price=([0-9.]+)/)[1];
  const signalId = stdout.match(/new_signal BUY BTC-USD (\S+)/)[1];
  const notificationId = stdout.match(/new_notification (\S+) to alice/)[1];

  const tick = page.locator('#prices li[data-symbol="BTC-USD"]');
  await tick.waitFor();
  assert.equal(Number(await tick.getAttribute('data-price')).toFixed(2), price);
  await page.locator('#signal-list li[data-signal-id="' + signalId + '"][data-type="BUY"]').waitFor();
  const note = page.locator('#notification-list li[data-notification-id="' + notificationId + '"]');
  await note.waitFor();
  assert.doesNotMatch(await note.getAttribute('data-fields'), /user_id/, 'user_id never reaches the browser');
  assert.match(await note.textContent(), /Trade Executed/);

  await screenshot(page, 'django-dashboard');
  assert.deepEqual(errors, []);
});
