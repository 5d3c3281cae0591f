//! A page whose connection is cut, or whose server restarts, comes back by
//! itself and shows every tick once: no gap, no duplicate, checked by seq.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as pause } from 'node:timers/promises';
import {
  FAST_CLIENT, connectEndpoint, launchBrowser, marketRow, mintJwt, openTestPage, publish, screenshot,
  startProxy, startServer, subscribe, tick, waitForRow, waitForStatus
} from './helpers.mjs';

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

test('cutting the connection mid-stream loses and repeats nothing', { timeout: 120000 }, async (t) => {
  const server = await startServer();
  const proxy = await startProxy(server.port);
  t.after(async () => { await proxy.close(); await server.stop(); });

  const { page } = await openTestPage(browser, proxy.url, { token: mintJwt({ sub: 'alice' }), config: FAST_CLIENT });
  await connectEndpoint(page, 'market-data');
  await subscribe(page, 'BTC-USD');

  // A steady stream (about 150 ticks/s) that runs until the page has
  // resumed after the last cut, whatever the machine's speed.
  let published = 0;
  let stop = false;
  const publisher = (async () => {
    while (!stop && published < 20000) {
      published++;
      await publish(server, tick('BTC-USD', 40000 + published));
      if (published % 3 === 0) await pause(10);
    }
  })();

  // Cut every socket through the proxy three times while ticks keep coming.
  try {
    for (const atSeq of [50, 120, 190]) {
      await waitForRow(page, 'BTC-USD', { minSeq: atSeq });
      proxy.cut();
    }
    await waitForRow(page, 'BTC-USD', { minSeq: 260 });
  } finally {
    stop = true;
    await publisher;
  }
  const total = published;
  await waitForRow(page, 'BTC-USD', { seq: total });

  const row = await marketRow(page, 'BTC-USD');
  assert.deepEqual(
    { seq: row.seq, ticks: row.ticks, gaps: row.gaps, price: row.price },
    { seq: total, ticks: total, gaps: 0, price: 40000 + total },
    'each of seq 1..' + total + ' shown exactly once'
  );
  const stats = await page.evaluate(() => window.websocketClient.stats());
  t.diagnostic('client: ' + JSON.stringify(stats) + '; proxy: ' + JSON.stringify(proxy.counts));
  assert.equal(proxy.counts.cuts, 3);
  assert.ok(proxy.counts.upgrades >= 4, 'the page opened a new socket after each cut (' + proxy.counts.upgrades + ' upgrades)');
  assert.ok(Number(await page.locator('.endpoint[data-kind="market-data"] [data-field="reconnects"]').textContent()) >= 3);
  await screenshot(page, 'd-resume-after-cuts');
});

test('a server restart on the same port: the page reconnects by itself and handles reset', { timeout: 120000 }, async (t) => {
  let server = await startServer();
  t.after(async () => { await server.stop(); });
  const port = server.port;

  const { page } = await openTestPage(browser, server.url, {
    token: mintJwt({ sub: 'alice' }),
    config: { ...FAST_CLIENT, maxReconnectAttempts: 8 }
  });
  await connectEndpoint(page, 'market-data');
  await subscribe(page, 'BTC-USD');
  for (let i = 1; i <= 5; i++) await publish(server, tick('BTC-USD', 100 + i));
  await waitForRow(page, 'BTC-USD', { seq: 5, ticks: 5 });

  const exit = await server.stop();
  assert.equal(exit.code, 0, 'SIGTERM drains and exits 0');
  await page.locator('[data-testid="status-market-data"]:not([data-status="open"])').waitFor();

  server = await startServer({ port });
  await waitForStatus(page, 'market-data', 'open', 30000);
  await page.locator('#md-chips .chip[data-symbol="BTC-USD"][data-ack="yes"]').waitFor();

  // The restarted embedded server starts its streams over at seq 1; the
  // client must take its `reset` and show these rather than drop them.
  for (let i = 1; i <= 3; i++) await publish(server, tick('BTC-USD', 200 + i));
  await waitForRow(page, 'BTC-USD', { price: 203, seq: 3 });

  const row = await marketRow(page, 'BTC-USD');
  assert.equal(row.ticks, 8, 'five before the restart, three after, none twice');
  assert.equal(row.gaps, 0);
  assert.ok(Number(await page.locator('#reset-count').textContent()) >= 1, 'the page saw a reset');
  await screenshot(page, 'd-resume-after-restart');
});
