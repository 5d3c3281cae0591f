//! Protocol 1.1 in the browser: `configure({multiplex: true})` carries the
//! three kinds on one socket (`/ws/stream/`), with everything else as
//! before (resume by seq after a cut, fall-back to polling and back, other
//! users' notifications never shown); `configure({format: 'msgpack'})`
//! speaks MessagePack through the vendored decoder; Chromium negotiates
//! permessage-deflate; the test page shows each kind's transport, format and
//! compression, and the dashboard counts `/ws/stream/` connections.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FAST_CLIENT, launchBrowser, marketRow, mintJwt, openTestPage, publish, screenshot,
  startProxy, startServer, subscribe, tick, waitForRow, waitForStatus
} from './helpers.mjs';

const KINDS = ['market-data', 'trading-signals', 'notifications'];

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

function signal(id, symbol, extra = {}) {
  return {
    type: 'new_signal', signal_id: id, symbol, signal_type: 'BUY', strength: 'STRONG',
    confidence_score: 80, entry_price: 45000.5, target_price: 50000, stop_loss: 42000, ...extra
  };
}

function notification(user, id, extra = {}) {
  return {
    type: 'new_notification', user_id: user, notification_id: id, title: 'Trade Executed',
    message: 'BUY 100 BTC-USD @ $45000', notification_type: 'trade', priority: 'high', ...extra
  };
}

// Records every message the page's client emits, with its kind and seq.
async function recordMessages(page) {
  await page.evaluate(() => {
    window.__seen = [];
    window.websocketClient.on('*', (msg, meta) => {
      // Notifications published while away come in the unread list (each
      // new one only: the client drops those it has by seq).
      if (msg.type === 'unread_notifications') {
        for (const n of msg.notifications) window.__seen.push({ type: 'new_notification', kind: meta.kind, via: 'unread', seq: n.seq, id: n.notification_id });
      }
      window.__seen.push({ type: msg.type, kind: meta.kind, via: meta.via, seq: msg.seq, id: msg.notification_id || msg.signal_id || null,
        volume: msg.volume, price: msg.price });
    });
  });
}

async function seen(page, type) {
  return page.evaluate((t) => window.__seen.filter((m) => m.type === t), type);
}

async function waitSeen(page, type, n, timeout = 20000) {
  try {
    await page.waitForFunction(({ t, n }) => window.__seen.filter((m) => m.type === t).length >= n, { t: type, n }, { timeout, polling: 50 });
  } catch (err) {
    throw new Error('never saw ' + n + ' ' + type + ': ' + JSON.stringify(await seen(page, type)));
  }
}

function assertConsecutive(list, first, what) {
  const seqs = list.map((m) => m.seq);
  assert.deepEqual(seqs, seqs.map((_, i) => first + i), what + ': ' + JSON.stringify(seqs));
}

async function field(page, kind, name) {
  return page.locator('.endpoint[data-kind="' + kind + '"] [data-field="' + name + '"]').textContent();
}

test('one socket carries all three kinds, resumes after a cut and shows its transport', { timeout: 120000 }, async (t) => {
  const server = await startServer();
  const proxy = await startProxy(server.port);
  t.after(async () => { await proxy.close(); await server.stop(); });

  const { page, errors } = await openTestPage(browser, proxy.url, { token: mintJwt({ sub: 'alice' }), config: FAST_CLIENT });
  await page.selectOption('#transport-mode', 'multiplex');
  await recordMessages(page);
  await page.click('#connect-all');
  for (const kind of KINDS) await waitForStatus(page, kind, 'open');
  assert.equal(proxy.counts.upgrades, 1, 'one socket for the three kinds');
  await subscribe(page, 'BTC-USD');
  await waitSeen(page, 'unread_notifications', 1);

  for (const kind of KINDS) {
    assert.match(await field(page, kind, 'transport'), /^one socket \(\/ws\/stream\/\?streams=/);
    assert.equal(await field(page, kind, 'format'), 'json');
    // Chromium offers permessage-deflate by itself; the server agrees.
    assert.equal(await field(page, kind, 'compression'), 'permessage-deflate');
  }
  const stats = await (await fetch(server.url + '/api/stats')).json();
  assert.equal(stats.connections.stream, 1);

  await publish(server, [tick('BTC-USD', 1), tick('BTC-USD', 2)]);
  await publish(server, [signal('s1', 'BTC-USD'), signal('s2', 'ETH-USD')]);
  await publish(server, [notification('bob', 'not-for-alice'), notification('alice', 'n1')]);
  await waitForRow(page, 'BTC-USD', { seq: 2, via: 'socket' });
  await waitSeen(page, 'new_signal', 2);
  await waitSeen(page, 'new_notification', 1);

  // Cut the socket while all three streams go on: the one socket comes
  // back and each stream resumes by seq with no gap and no duplicate.
  proxy.cut();
  await publish(server, [tick('BTC-USD', 3), tick('BTC-USD', 4)]);
  await publish(server, [signal('s3', 'BTC-USD')]);
  await publish(server, [notification('alice', 'n2')]);
  for (const kind of KINDS) await waitForStatus(page, kind, 'open');
  await publish(server, [tick('BTC-USD', 5)]);
  await publish(server, [signal('s4', 'BTC-USD')]);
  await waitForRow(page, 'BTC-USD', { seq: 5, ticks: 5, gaps: 0 });
  await waitSeen(page, 'new_signal', 4);
  await waitSeen(page, 'new_notification', 2);
  assert.equal(proxy.counts.upgrades, 2, 'one socket again, not three');

  assertConsecutive(await seen(page, 'new_signal'), 1, 'signals');
  const notes = await seen(page, 'new_notification');
  assert.deepEqual(notes.map((n) => n.id), ['n1', 'n2'], 'only alice\'s, each once');
  assert.ok(notes.every((n) => n.kind === 'notifications'));
  const row = await marketRow(page, 'BTC-USD');
  assert.deepEqual({ seq: row.seq, ticks: row.ticks, gaps: row.gaps }, { seq: 5, ticks: 5, gaps: 0 });

  // mark_read goes over the one socket and comes back as notification_read.
  await page.evaluate(() => window.websocketClient.markNotificationRead('n1'));
  await waitSeen(page, 'notification_read', 1);
  // ping is answered once, to the kind that asked.
  await page.click('.endpoint[data-kind="trading-signals"] [data-action="ping"]');
  await page.waitForFunction(() => /ms$/.test(document.querySelector('.endpoint[data-kind="trading-signals"] [data-field="rtt"]').textContent));
  assert.equal((await seen(page, 'pong')).length, 1);
  await screenshot(page, 'm-multiplex');
  assert.deepEqual(errors, []);
});

test('multiplexed: blocked sockets fall back to polling for every kind, then back to one socket', { timeout: 120000 }, async (t) => {
  const server = await startServer();
  const proxy = await startProxy(server.port);
  t.after(async () => { await proxy.close(); await server.stop(); });
  proxy.block();
  const { page } = await openTestPage(browser, proxy.url, {
    token: mintJwt({ sub: 'carol' }), config: { ...FAST_CLIENT, maxReconnectAttempts: 2, multiplex: true }
  });
  await recordMessages(page);
  await page.click('.endpoint[data-kind="market-data"] [data-action="connect"]');
  await page.click('.endpoint[data-kind="trading-signals"] [data-action="connect"]');
  await page.fill('#md-symbol', 'ETH-USD');
  await page.click('#md-subscribe');
  await waitForStatus(page, 'market-data', 'polling');
  await waitForStatus(page, 'trading-signals', 'polling');
  assert.equal(await field(page, 'market-data', 'transport'), 'HTTP polling');

  await publish(server, [tick('ETH-USD', 10)]);
  await publish(server, [signal('p1', 'ETH-USD')]);
  await waitForRow(page, 'ETH-USD', { seq: 1, via: 'poll' });
  await waitSeen(page, 'new_signal', 1);

  proxy.unblock();
  await waitForStatus(page, 'market-data', 'open');
  await waitForStatus(page, 'trading-signals', 'open');
  await publish(server, [tick('ETH-USD', 11)]);
  await publish(server, [signal('p2', 'ETH-USD')]);
  await waitForRow(page, 'ETH-USD', { seq: 2, ticks: 2, gaps: 0, via: 'socket' });
  await waitSeen(page, 'new_signal', 2);
  assertConsecutive(await seen(page, 'new_signal'), 1, 'signals by poll then socket');
  assert.equal(proxy.counts.upgrades, 1, 'back on one socket');
  assert.match(await field(page, 'market-data', 'transport'), /streams=market-data,trading-signals/);
});

test('MessagePack through the vendored decoder: resume after a cut and fall-back', { timeout: 120000 }, async (t) => {
  const server = await startServer();
  const proxy = await startProxy(server.port);
  t.after(async () => { await proxy.close(); await server.stop(); });
  const { page, errors } = await openTestPage(browser, proxy.url, {
    token: mintJwt({ sub: 'dave' }), config: { ...FAST_CLIENT, maxReconnectAttempts: 2 }
  });
  await page.selectOption('#format-mode', 'msgpack');
  await recordMessages(page);
  const frames = { binary: 0, text: 0 };
  page.on('websocket', (ws) => ws.on('framereceived', (f) => { if (typeof f.payload === 'string') frames.text++; else frames.binary++; }));
  await page.click('.endpoint[data-kind="market-data"] [data-action="connect"]');
  await waitForStatus(page, 'market-data', 'open');
  await subscribe(page, 'SOL-USD');
  assert.equal(await field(page, 'market-data', 'format'), 'msgpack');
  assert.equal(await field(page, 'market-data', 'transport'), 'own socket');
  assert.ok(await page.evaluate(() => typeof window.MessagePack.decode === 'function'), 'the vendored decoder loaded');

  // Integers stay integers, floats floats; a large one arrives compressed too.
  await publish(server, [tick('SOL-USD', 150.25, { volume: 1000000 }), tick('SOL-USD', 151, { note: 'x'.repeat(2000) })]);
  await waitForRow(page, 'SOL-USD', { seq: 2, via: 'socket' });
  const first = (await seen(page, 'market_update'))[0];
  assert.deepEqual({ volume: first.volume, price: first.price, seq: first.seq }, { volume: 1000000, price: 150.25, seq: 1 });
  assert.ok(frames.binary >= 3 && frames.text === 0, JSON.stringify(frames));

  // A cut: the socket comes back, still MessagePack, and resumes by seq.
  proxy.cut();
  await publish(server, [tick('SOL-USD', 152), tick('SOL-USD', 153)]);
  await waitForStatus(page, 'market-data', 'open');
  await waitForRow(page, 'SOL-USD', { seq: 4, ticks: 4, gaps: 0 });

  // Blocked: polling (JSON over HTTP), then back to the MessagePack socket.
  proxy.block();
  proxy.cut();
  await waitForStatus(page, 'market-data', 'polling');
  await publish(server, [tick('SOL-USD', 154)]);
  await waitForRow(page, 'SOL-USD', { seq: 5, via: 'poll' });
  proxy.unblock();
  await waitForStatus(page, 'market-data', 'open');
  await publish(server, [tick('SOL-USD', 155)]);
  await waitForRow(page, 'SOL-USD', { seq: 6, ticks: 6, gaps: 0, via: 'socket' });
  assert.equal(await field(page, 'market-data', 'format'), 'msgpack');
  assert.equal(frames.text, 0, 'no text frame from the server on a msgpack socket');
  await screenshot(page, 'm-msgpack');
  // The refused handshakes while blocked are the only console errors.
  assert.deepEqual(errors.filter((e) => !/Unexpected response code: 503/.test(e)), []);
});

test('MessagePack on the one socket keeps integers integers; the dashboard counts it', { timeout: 60000 }, async (t) => {
  const server = await startServer();
  t.after(async () => { await server.stop(); });
  const { page, errors } = await openTestPage(browser, server.url, { token: mintJwt({ sub: 'erin' }), config: FAST_CLIENT });
  await page.selectOption('#transport-mode', 'multiplex');
  await page.selectOption('#format-mode', 'msgpack');
  await page.evaluate(() => {
    window.__values = [];
    window.websocketClient.on('new_signal', (m) => window.__values.push(m));
  });
  await page.click('#connect-all');
  for (const kind of KINDS) await waitForStatus(page, kind, 'open');
  await publish(server, [signal('big', 'BTC-USD', { confidence_score: 85, entry_price: 45000.5, target_price: 50000.0 })]);
  await page.waitForFunction(() => window.__values.length === 1);
  const v = await page.evaluate(() => window.__values[0]);
  assert.equal(v.confidence_score, 85);
  assert.equal(v.entry_price, 45000.5);
  assert.equal(v.seq, 1);
  for (const kind of KINDS) assert.equal(await field(page, kind, 'format'), 'msgpack');

  const dash = await browser.newPage();
  await dash.goto(server.url + '/dashboard/');
  await dash.locator('#conn-rows tr[data-endpoint="stream"][data-value="1"]').waitFor({ timeout: 20000 });
  const msgpackRow = dash.locator('#msg-rows tr[data-counter="messages_out_msgpack"]');
  await msgpackRow.waitFor();
  assert.ok(!/^\s*out: MessagePack frames\s*0/.test(await msgpackRow.textContent()));
  await dash.close();
  assert.deepEqual(errors, []);
});
