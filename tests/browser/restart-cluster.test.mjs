//! Cluster mode (issue 5): the page's node is restarted mid-stream and the
//! page resumes with no gap and no duplicate, checked by seq.
//!
//! A real redis-server and two tickwire nodes on it. The page subscribes on
//! node A; a publisher keeps publishing through node B the whole time, so
//! the stream never pauses while A is down. A gets SIGTERM, comes back on the
//! same port with the same Redis (a new process: everything it knows of the
//! streams comes from Redis), and the page, on its own, reconnects and ends
//! with every seq 1..N exactly once, in order, with no `reset`.
//!
//! The page reaches A the way README's "Cluster mode" deploys nodes: through
//! a load balancer that sends WebSocket upgrades only to a node whose /ready
//! answers 200. The last test reaches the restarted node directly, before its
//! Redis link is up: the node refuses the upgrade (503) until it is, and the
//! page's own reconnects carry it over.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as pause } from 'node:timers/promises';
import {
  FAST_CLIENT, connectEndpoint, launchBrowser, marketRow, mintJwt, openTestPage, publish, screenshot,
  startProxy, startRedis, startServer, startTcpGate, subscribe, tick, waitForRow, waitForStatus, waitReady,
  watchConsole
} from './helpers.mjs';

const SYMBOL = 'RST-USD';
const MIN_TOTAL = 300; // at least this many updates in all
const RESTART_AT_SEQ = 100; // SIGTERM the page's node once the page shows this seq
const AFTER_RESUME = 100; // and keep publishing this many more once it is back
const HARD_CAP = 5000; // whatever happens, the publisher stops here
// Enough attempts that the page never drops to HTTP polling (which only
// shows the latest price) while its node is away.
const CLIENT = { ...FAST_CLIENT, maxReconnectAttempts: 50 };
// What Chromium itself logs for a refused reconnect attempt while the node
// is away; not the page's doing.
const REFUSED_SOCKET = /WebSocket connection to .* failed/;

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

// Redis and nodes A and B on it. `aRedisUrl` lets A reach the same Redis
// another way (through a gate `beforeNodes` sets up). Stops Redis, and
// whichever A is running, at the end.
async function startCluster(t, { aRedisUrl, beforeNodes } = {}) {
  const redis = await startRedis();
  if (beforeNodes) await beforeNodes(redis);
  const argsA = ['--redis', aRedisUrl ? aRedisUrl(redis) : redis.url];
  const argsB = ['--redis', redis.url];
  const nodes = { a: await startServer({ extraArgs: argsA }), b: await startServer({ extraArgs: argsB }) };
  t.after(async () => {
    await nodes.a.stop();
    await nodes.b.stop();
    await redis.stop();
  });
  await waitReady(nodes.a);
  await waitReady(nodes.b);
  return { redis, argsA, nodes };
}

// A load balancer in front of one node: the TCP proxy of helpers.mjs, whose
// WebSocket upgrades are refused (503) unless the node's /ready answered 200
// at the last health check (every 50 ms). Plain HTTP always passes.
async function startBalancer(t, port) {
  const proxy = await startProxy(port);
  let stop = false;
  let checks = 0;
  const check = async () => {
    let ok = false;
    try {
      ok = (await fetch('http://127.0.0.1:' + port + '/ready', { signal: AbortSignal.timeout(1000) })).status === 200;
    } catch { /* down */ }
    if (ok) proxy.unblock(); else proxy.block();
    checks++;
  };
  await check();
  const loop = (async () => {
    while (!stop) {
      await pause(50);
      await check();
    }
  })();
  t.after(async () => {
    stop = true;
    await loop;
    await proxy.close();
  });
  return proxy;
}

// Records, from before the page connects, what its handlers are given (after
// the client's own duplicate check) and what arrives on its market-data
// sockets, frame by frame: the server itself must repeat nothing either.
async function record(page) {
  await page.evaluate(() => {
    const rec = window.__restartTest = { seen: [], closes: [], resets: [], opens: [] };
    const client = window.websocketClient;
    client.on('market_update', (msg, meta) => rec.seen.push([msg.seq, meta.via]));
    client.on('close', (ev) => { if (ev.kind === 'market-data') rec.closes.push(ev.code); });
    client.on('open', (ev) => { if (ev.kind === 'market-data') rec.opens.push(ev.resumed); });
    client.on('reset', (msg) => rec.resets.push(msg));
  });
  const wire = [];
  page.on('websocket', (ws) => {
    if (!ws.url().includes('/ws/market-data/')) return;
    const frames = { seqs: [], resets: [] };
    wire.push(frames);
    ws.on('framereceived', ({ payload }) => {
      let parsed;
      try { parsed = JSON.parse(String(payload)); } catch { return; }
      for (const msg of Array.isArray(parsed) ? parsed : [parsed]) {
        if (msg?.type === 'market_update' && msg.symbol === SYMBOL) frames.seqs.push(msg.seq);
        if (msg?.type === 'reset') frames.resets.push(msg);
      }
    });
  });
  return {
    wire,
    page: () => page.evaluate(() => window.__restartTest),
    summary: (rec) => 'page: ' + rec.seen.length + ' updates, closes ' + JSON.stringify(rec.closes) +
      ', opens (resumed) ' + JSON.stringify(rec.opens) + ', resets ' + JSON.stringify(rec.resets) + '; wire, per socket: ' +
      JSON.stringify(wire.map((w) => ({ updates: w.seqs.length, first: w.seqs[0], last: w.seqs[w.seqs.length - 1], resets: w.resets })))
  };
}

// Every seq 1..total exactly once, in order: on the page, and on the wire
// across all of the page's sockets; no reset anywhere.
async function assertEverySeqOnce(page, recorder, total) {
  const rec = await recorder.page();
  const expected = Array.from({ length: total }, (_, i) => i + 1);
  assert.deepEqual(rec.resets, [], 'no reset: the restarted node continued the stream from Redis (' + recorder.summary(rec) + ')');
  assert.deepEqual(recorder.wire.flatMap((w) => w.resets), [], 'no reset frame on the wire');
  assert.deepEqual(rec.seen.map(([seq]) => seq), expected, 'the page shows seq 1..' + total + ' exactly once each, in order');
  assert.ok(rec.seen.every(([, via]) => via === 'socket'), 'every update came over the socket, none by polling');
  assert.deepEqual(recorder.wire.flatMap((w) => w.seqs), expected, 'on the wire, across sockets: seq 1..' + total + ' once each');
  const stats = await page.evaluate(() => window.websocketClient.stats());
  assert.equal(stats.duplicatesDropped, 0, 'the client had no duplicate to drop');
  const row = await marketRow(page, SYMBOL);
  assert.deepEqual(
    { seq: row.seq, ticks: row.ticks, gaps: row.gaps, via: row.via, price: row.price },
    { seq: total, ticks: total, gaps: 0, via: 'socket', price: 1000 + total }
  );
  assert.equal(await page.locator('#reset-count').textContent(), '0');
  assert.equal(await page.locator('#dup-dropped').textContent(), '0');
  return rec;
}

test('cluster: the page\'s node restarts mid-stream; the page resumes with every seq once, no reset', { timeout: 180000 }, async (t) => {
  const { argsA, nodes } = await startCluster(t);
  const port = nodes.a.port;
  const balancer = await startBalancer(t, port);

  const { page, errors } = await openTestPage(browser, balancer.url, { token: mintJwt({ sub: 'alice' }), config: CLIENT });
  const recorder = await record(page);
  await connectEndpoint(page, 'market-data');
  await subscribe(page, SYMBOL);

  // The publisher: one update per request through node B, paced at a few
  // dozen a second, until MIN_TOTAL and until AFTER_RESUME more have gone
  // out since the page was back. Every publish must be accepted.
  let published = 0;
  let publishedWhileDown = 0;
  let aDown = false;
  let resumedAt = null;
  let publishError = null;
  const publisher = (async () => {
    while (published < HARD_CAP) {
      if (published >= MIN_TOTAL && resumedAt !== null && published >= resumedAt + AFTER_RESUME) break;
      const n = published + 1;
      try {
        const answer = await publish(nodes.b, tick(SYMBOL, 1000 + n, { volume: n }));
        assert.equal(answer.accepted, 1);
      } catch (err) {
        publishError = err;
        return;
      }
      published = n;
      if (aDown) publishedWhileDown++;
      await pause(15);
    }
  })();

  let exit;
  try {
    await waitForRow(page, SYMBOL, { minSeq: RESTART_AT_SEQ }, 30000);
    assert.equal(publishError, null);

    // SIGTERM: A drains (1001 to the page) and exits; B keeps taking publishes.
    aDown = true;
    const downAt = published;
    exit = await nodes.a.stop();
    await page.locator('[data-testid="status-market-data"]:not([data-status="open"])').waitFor();
    // Stay down a moment, as a real restart does: the page's reconnect
    // attempts are refused meanwhile, and the stream runs on through B.
    await pause(1000);
    // A new process on the same port and the same Redis. The page is not
    // touched: it reconnects by itself and resubscribes with `since`.
    nodes.a = await startServer({ port, extraArgs: argsA });
    await waitForStatus(page, 'market-data', 'open', 30000);
    aDown = false;
    resumedAt = published;
    t.diagnostic('node A went down after ' + downAt + ' published, was back after ' + resumedAt +
      ' (' + publishedWhileDown + ' published through B meanwhile); balancer: ' + JSON.stringify(balancer.counts));
  } finally {
    // On an early failure, let the publisher end at the next bound.
    if (resumedAt === null) resumedAt = published;
    await publisher;
  }
  assert.equal(publishError, null, 'every publish through node B was accepted');
  assert.equal(exit.code, 0, 'SIGTERM drains node A and it exits 0');
  assert.ok(publishedWhileDown > 0, 'updates were published while the page\'s node was down');

  const total = published;
  assert.ok(total >= MIN_TOTAL);
  await waitForRow(page, SYMBOL, { seq: total }, 30000);
  const rec = await assertEverySeqOnce(page, recorder, total);
  t.diagnostic(recorder.summary(rec));

  // A closed with 1001 (going away), and the page came back on its own.
  assert.ok(rec.closes.includes(1001), 'the page saw 1001 going away (closes: ' + JSON.stringify(rec.closes) + ')');
  assert.ok(recorder.wire.length >= 2, 'the page opened a new socket after the restart');
  assert.ok(rec.opens.length >= 2 && rec.opens[rec.opens.length - 1] === true, 'the page reopened as a resume');
  assert.ok(Number(await page.locator('.endpoint[data-kind="market-data"] [data-field="reconnects"]').textContent()) >= 1);
  await screenshot(page, 'g-restart-cluster');
  assert.deepEqual(errors.filter((e) => !REFUSED_SOCKET.test(e)), [], 'no console errors of the page\'s own');
});

test('cluster: the dashboard lists the cluster\'s nodes and marks its own', { timeout: 60000 }, async (t) => {
  const { nodes } = await startCluster(t);
  const stats = await (await fetch(nodes.a.url + '/api/stats')).json();
  assert.equal(stats.mode, 'cluster');
  assert.equal(typeof stats.redis.node_id, 'string');

  const page = await browser.newPage({ width: 1280, height: 900 });
  const errors = watchConsole(page);
  await page.goto(nodes.a.url + '/dashboard/');
  await page.locator('[data-testid="feed-status"][data-status="open"]').waitFor();
  await page.locator('[data-testid="kpi-redis"]', { hasText: 'connected' }).waitFor();
  // Both nodes heartbeat through Redis; the list fills within a few beats.
  await page.locator('#redis-nodes li').nth(1).waitFor({ timeout: 20000 });
  const listed = await page.locator('#redis-nodes li').evaluateAll((lis) => lis.map((li) => ({
    id: li.getAttribute('data-node-id'), self: li.hasAttribute('data-self')
  })));
  const ids = listed.map((n) => n.id);
  assert.equal(new Set(ids).size, ids.length, 'each node once');
  assert.ok(ids.includes(stats.redis.node_id), 'node A is listed');
  assert.deepEqual(listed.filter((n) => n.self).map((n) => n.id), [stats.redis.node_id], 'node A, and only it, is marked as this node');
  assert.equal(ids[0], stats.redis.node_id, 'this node first');
  assert.match(await page.locator('#kpi-redis-sub').textContent(), /^\d+ nodes in the cluster$/);
  // Conflated frames sit beside the slow-consumer cuts.
  await page.locator('[data-testid="kpi-conflated"]', { hasText: /^\d/ }).waitFor();
  await page.locator('#msg-rows tr[data-counter="conflated_frames"]').waitFor();

  // A few seconds of traffic through both nodes, so that the charts show some.
  const feed = page.locator('[data-testid="feed-status"]');
  const firstSample = Number(await feed.getAttribute('data-samples'));
  for (let i = 0; i < 200 && Number(await feed.getAttribute('data-samples')) < firstSample + 4; i++) {
    await publish(i % 2 ? nodes.b : nodes.a, tick('DASH-USD', 100 + i));
    await page.waitForTimeout(50); // pacing of the publisher, not a wait for a result
  }
  await page.locator('[data-testid="kpi-in"]', { hasText: /^[1-9]/ }).waitFor({ timeout: 10000 });
  await screenshot(page, 'g-dashboard-cluster');
  await page.setViewportSize({ width: 390, height: 844 });
  const { scrollWidth, innerWidth } = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth
  }));
  assert.ok(scrollWidth <= innerWidth, 'page is ' + scrollWidth + 'px wide in a ' + innerWidth + 'px window');
  await screenshot(page, 'g-dashboard-cluster-phone');
  assert.deepEqual(errors, []);
  await page.close();
});

// Without a balancer, the page can reach the restarted node in the moment
// between "listening on" and "Redis link up" (a few ms, so about one run in
// twenty of the first test when it connected directly). Here that moment is
// made long: A's connection to Redis goes through a gate held while A
// restarts. Before, A answered the page's `subscribe ... since: {RST-USD: n}`
// with {"type":"reset","stream":"RST-USD","seq":1}, as an embedded node that
// forgot its streams would, and once linked replayed the stream from seq 1,
// so the page (rightly following `reset`) showed 1..n twice. Now A refuses
// the upgrade until it has caught up from Redis.
test('cluster: a page that reaches the restarted node before its Redis link is up still sees every seq once', {
  timeout: 120000
}, async (t) => {
  let gate;
  const { argsA, nodes } = await startCluster(t, {
    aRedisUrl: () => 'redis://127.0.0.1:' + gate.port,
    beforeNodes: async (redis) => { gate = await startTcpGate(redis.port); }
  });
  t.after(async () => { await gate.close(); });
  const port = nodes.a.port;

  const { page } = await openTestPage(browser, nodes.a.url, { token: mintJwt({ sub: 'alice' }), config: CLIENT });
  const recorder = await record(page);
  await connectEndpoint(page, 'market-data');
  await subscribe(page, SYMBOL);
  let n = 0;
  const publishSome = async (count) => {
    for (let i = 0; i < count; i++) {
      n++;
      await publish(nodes.b, tick(SYMBOL, 1000 + n, { volume: n }));
    }
  };
  await publishSome(20);
  await waitForRow(page, SYMBOL, { seq: 20 });

  await nodes.a.stop();
  await publishSome(10); // while A is down
  gate.hold(); // A's new process will not reach Redis until release()
  nodes.a = await startServer({ port, extraArgs: argsA });
  // While A is not linked it refuses the page's upgrades (503, as its
  // /ready says) rather than answer a resume from an empty memory.
  await pause(1500);
  const refused = await fetch(nodes.a.url + '/ready');
  assert.equal(refused.status, 503);
  gate.release();
  await waitReady(nodes.a);
  // The page gets in by itself and resubscribes with since 20.
  await waitForStatus(page, 'market-data', 'open', 30000);
  await publishSome(10);
  await waitForRow(page, SYMBOL, { minSeq: n }, 20000).catch(() => {});
  const rec = await assertEverySeqOnce(page, recorder, n);
  t.diagnostic(recorder.summary(rec));
});
