//! The browser client's own logic, driven without a browser or a server: a
//! fake WebSocket and fetch stand in for them. Resume with `since`, dropping
//! duplicates, `reset`, close codes 4001 / 4002, the polling fallback and the
//! way back to the socket.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../../static/js/websocket_client.js';

const { TickwireClient } = globalThis;

class FakeSocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closedByClient = null;
    FakeSocket.all.push(this);
  }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code, reason) { this.closedByClient = { code, reason }; }
  accept() { this.onopen?.({}); }
  deliver(...messages) { for (const m of messages) this.onmessage?.({ data: JSON.stringify(m) }); }
  drop(code = 1006, reason = '') { this.onclose?.({ code, reason, wasClean: code !== 1006 }); }
}
FakeSocket.all = [];

async function until(predicate, what, timeoutMs = 3000) {
  const start = Date.now();
  while (!predicate()) {
    if (Date.now() - start > timeoutMs) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function makeClient(extra = {}) {
  FakeSocket.all = [];
  const requests = [];
  const responses = new Map();
  const client = new TickwireClient({
    baseUrl: 'http://127.0.0.1:9',
    token: 't1',
    WebSocket: FakeSocket,
    fetch: async (url, init) => {
      requests.push({ url, init });
      const path = url.replace('http://127.0.0.1:9', '');
      const body = responses.get(path.split('?')[0]);
      if (body === undefined) return { ok: false, status: 404, json: async () => null };
      return { ok: true, status: 200, json: async () => (typeof body === 'function' ? body(path) : body) };
    },
    reconnectBaseMs: 1,
    reconnectMaxMs: 4,
    heartbeatMs: 0,
    pollIntervalMs: 5,
    socketRetryMs: 30,
    ...extra
  });
  const events = [];
  client.on('*', (m, meta) => events.push({ ...m, via: meta.via }));
  for (const type of ['open', 'close', 'reconnecting', 'fallback', 'reset']) client.on(type, (e) => events.push({ event: type, ...e }));
  return { client, events, requests, responses, socket: (i) => FakeSocket.all[i] };
}

const tick = (seq, price = seq) => ({ type: 'market_update', symbol: 'BTC-USD', price, seq });

test('resumes with since after a drop and shows nothing twice', async () => {
  const { client, events, socket } = makeClient();
  client.subscribeToSymbol('BTC-USD');
  client.connect('market-data');
  await until(() => socket(0), 'first socket');
  assert.equal(socket(0).url, 'ws://127.0.0.1:9/ws/market-data/?token=t1');
  socket(0).accept();
  assert.deepEqual(socket(0).sent, [{ type: 'subscribe', symbols: ['BTC-USD'] }]);
  socket(0).deliver(tick(1), tick(2), tick(2), tick(3));
  socket(0).drop(1001, 'going away');
  await until(() => socket(1), 'a reconnect');
  socket(1).accept();
  assert.deepEqual(socket(1).sent, [{ type: 'subscribe', symbols: ['BTC-USD'], since: { 'BTC-USD': 3 } }]);
  socket(1).deliver(tick(3), tick(4));
  const seqs = events.filter((e) => e.type === 'market_update').map((e) => e.seq);
  assert.deepEqual(seqs, [1, 2, 3, 4]);
  assert.equal(client.stats().duplicatesDropped, 2);
  assert.ok(events.some((e) => e.event === 'open' && e.resumed));
  client.disconnect('market-data');
  assert.deepEqual(socket(1).closedByClient, { code: 1000, reason: 'client disconnect' });
});

test('reset moves the base: a restarted server counting from 1 again is shown', async () => {
  const { client, events, socket } = makeClient();
  client.subscribeToSymbol('BTC-USD');
  client.connect('market-data');
  await until(() => socket(0), 'socket');
  socket(0).accept();
  socket(0).deliver(tick(41), tick(42));
  socket(0).drop(1001);
  await until(() => socket(1), 'reconnect');
  socket(1).accept();
  assert.deepEqual(socket(1).sent[0].since, { 'BTC-USD': 42 });
  socket(1).deliver({ type: 'reset', stream: 'BTC-USD', seq: 1 }, tick(1, 7), tick(2, 8));
  assert.deepEqual(events.filter((e) => e.type === 'market_update').map((e) => e.price), [41, 42, 7, 8]);
  assert.ok(events.some((e) => e.event === 'reset' && e.stream === 'BTC-USD'));
  assert.equal(client.lastSeq('BTC-USD'), 2);
  client.disconnect('market-data');
});

test('4001 asks the token function again; 4002 reconnects at once with since', async () => {
  let issued = 0;
  const { client, socket } = makeClient({ token: () => Promise.resolve('tok' + ++issued), stableMs: 0 });
  client.connect('trading-signals');
  await until(() => socket(0), 'socket');
  assert.match(socket(0).url, /token=tok1$/);
  socket(0).accept();
  assert.deepEqual(socket(0).sent, [], 'no filter set and nothing seen: nothing to resend');
  socket(0).deliver({ type: 'new_signal', signal_id: 's1', symbol: 'BTC-USD', signal_type: 'BUY', seq: 7 });
  socket(0).drop(4001, 'token expired');
  await until(() => socket(1), 'reconnect after 4001');
  assert.match(socket(1).url, /token=tok2$/);
  socket(1).accept();
  assert.deepEqual(socket(1).sent, [{ type: 'filter', symbol: null, signal_type: null, since: 7 }]);
  client.filterSignals('BTC-USD', 'SELL');
  socket(1).drop(4002, 'slow consumer');
  await until(() => socket(2), 'reconnect after 4002');
  socket(2).accept();
  assert.deepEqual(socket(2).sent.at(-1), { type: 'filter', symbol: 'BTC-USD', signal_type: 'SELL', since: 7 });
  client.disconnect('trading-signals');
});

test('attempts exhausted: fallback polls HTTP with the same dedup, then returns to the socket', async () => {
  const { client, events, socket, requests, responses } = makeClient({ maxReconnectAttempts: 2 });
  responses.set('/api/market/BTC-USD', tick(5, 500));
  client.subscribeToSymbol('BTC-USD');
  client.connect('market-data');
  for (let i = 0; i < 3; i++) {
    await until(() => socket(i), 'attempt ' + i);
    socket(i).drop(1006);
  }
  await until(() => events.some((e) => e.event === 'fallback'), 'fallback');
  assert.equal(client.status('market-data'), 'polling');
  await until(() => events.some((e) => e.type === 'market_update'), 'a polled tick');
  await until(() => requests.length >= 3, 'several polls');
  assert.equal(events.filter((e) => e.type === 'market_update').length, 1, 'the same tick polled again is not shown again');
  assert.equal(events.find((e) => e.type === 'market_update').via, 'poll');
  assert.equal(requests[0].init.headers.Authorization, 'Bearer t1');

  await until(() => socket(3), 'a socket retry from fallback');
  socket(3).accept();
  assert.equal(client.status('market-data'), 'open');
  assert.deepEqual(socket(3).sent, [{ type: 'subscribe', symbols: ['BTC-USD'], since: { 'BTC-USD': 5 } }]);
  const polls = requests.length;
  await new Promise((r) => setTimeout(r, 40));
  assert.equal(requests.length, polls, 'polling stopped');
  socket(3).deliver(tick(5, 500), tick(6, 600));
  assert.deepEqual(events.filter((e) => e.type === 'market_update').map((e) => [e.seq, e.via]), [[5, 'poll'], [6, 'socket']]);
  client.disconnect('market-data');
});

test('notifications: unread backlog deduplicated, mark_read queued while down', async () => {
  const { client, events, socket } = makeClient({ stableMs: 0 });
  const note = (id, seq) => ({ type: 'new_notification', notification_id: id, title: id, seq });
  assert.equal(client.markNotificationRead('n0'), false);
  client.connect('notifications');
  await until(() => socket(0), 'socket');
  socket(0).accept();
  assert.deepEqual(socket(0).sent, [{ type: 'mark_read', notification_id: 'n0' }]);
  socket(0).deliver({ type: 'unread_notifications', notifications: [note('n1', 1), note('n2', 2)] }, note('n3', 3));
  socket(0).drop(1001);
  await until(() => socket(1), 'reconnect');
  socket(1).accept();
  socket(1).deliver({ type: 'unread_notifications', notifications: [note('n1', 1), note('n2', 2), note('n3', 3), note('n4', 4)] });
  const backlogs = events.filter((e) => e.type === 'unread_notifications').map((e) => e.notifications.map((n) => n.notification_id));
  assert.deepEqual(backlogs, [['n1', 'n2'], ['n4']]);
  assert.equal(client.markNotificationRead('n4'), true);
  assert.deepEqual(socket(1).sent.at(-1), { type: 'mark_read', notification_id: 'n4' });
  client.disconnect('notifications');
});

test('multiplex: kinds connected in one tick share one socket; a later kind reopens it with since', async () => {
  const { client, events, socket } = makeClient({ multiplex: true });
  client.subscribeToSymbol('BTC-USD');
  client.filterSignals('BTC-USD', 'BUY');
  client.connect('market-data');
  client.connect('trading-signals');
  await until(() => socket(0), 'the one socket');
  assert.equal(socket(0).url, 'ws://127.0.0.1:9/ws/stream/?token=t1&streams=market-data,trading-signals');
  socket(0).accept();
  assert.deepEqual(socket(0).sent, [
    { type: 'subscribe', symbols: ['BTC-USD'] },
    { type: 'filter', symbol: 'BTC-USD', signal_type: 'BUY' }
  ]);
  assert.equal(client.status('market-data'), 'open');
  assert.equal(client.status('trading-signals'), 'open');
  assert.equal(client.transport('market-data').transport, 'multiplex');
  socket(0).deliver(tick(1), { type: 'new_signal', signal_id: 's', symbol: 'BTC-USD', seq: 4 },
    { type: 'reset', stream: 'signals', seq: 2 });
  assert.equal(client.lastSeq('signals'), 1, 'the reset named the signals stream');
  assert.equal(client.lastSeq('BTC-USD'), 1);
  // Notifications later: the socket is reopened carrying all three, and
  // the others resume from what they saw.
  client.connect('notifications');
  await until(() => socket(1), 'the reopened socket');
  assert.deepEqual(socket(0).closedByClient, { code: 1000, reason: 'streams changed' });
  assert.match(socket(1).url, /streams=market-data,trading-signals,notifications$/);
  socket(1).accept();
  assert.deepEqual(socket(1).sent, [
    { type: 'subscribe', symbols: ['BTC-USD'], since: { 'BTC-USD': 1 } },
    { type: 'filter', symbol: 'BTC-USD', signal_type: 'BUY', since: 1 }
  ]);
  socket(1).deliver({ type: 'unread_notifications', notifications: [] }, { type: 'pong', timestamp: 'x' });
  const opens = events.filter((e) => e.event === 'open').map((e) => e.kind);
  assert.deepEqual(opens, ['market-data', 'trading-signals', 'market-data', 'trading-signals', 'notifications']);
  // Disconnecting one kind keeps the socket for the others and drops its messages.
  client.disconnect('market-data');
  assert.equal(socket(1).closedByClient, null);
  socket(1).deliver(tick(2));
  assert.equal(events.filter((e) => e.type === 'market_update').length, 1);
  for (const kind of ['trading-signals', 'notifications']) client.disconnect(kind);
  assert.deepEqual(socket(1).closedByClient, { code: 1000, reason: 'client disconnect' });
  assert.equal(FakeSocket.all.length, 2);
});
