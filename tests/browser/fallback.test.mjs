//! When WebSockets stay blocked the page falls back to HTTP polling, keeps
//! showing ticks, and returns to the socket once it is unblocked.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FAST_CLIENT, launchBrowser, marketRow, mintJwt, openTestPage, publish, screenshot,
  startProxy, startServer, tick, waitForRow, waitForStatus
} from './helpers.mjs';

let server;
let proxy;
let browser;

before(async () => {
  server = await startServer();
  proxy = await startProxy(server.port);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  await server?.stop();
});

test('blocked sockets: polling fallback, then back to the socket', { timeout: 90000 }, async () => {
  proxy.block();
  const { page } = await openTestPage(browser, proxy.url, {
    token: mintJwt({ sub: 'alice' }),
    config: { ...FAST_CLIENT, maxReconnectAttempts: 3 }
  });
  await page.click('.endpoint[data-kind="market-data"] [data-action="connect"]');
  await page.fill('#md-symbol', 'BTC-USD');
  await page.click('#md-subscribe');

  await waitForStatus(page, 'market-data', 'polling');
  assert.equal(await page.locator('[data-testid="status-market-data"]').textContent(), 'polling (fallback)');
  assert.ok(proxy.counts.refused >= 4, 'first try and 3 reconnect attempts refused (' + proxy.counts.refused + ')');
  await page.locator('#log', { hasText: 'fallback' }).waitFor();

  for (let i = 1; i <= 3; i++) {
    await publish(server, tick('BTC-USD', 500 + i));
    await waitForRow(page, 'BTC-USD', { price: 500 + i, seq: i, via: 'poll' });
  }
  await screenshot(page, 'e-fallback-polling');

  proxy.unblock();
  await waitForStatus(page, 'market-data', 'open', 20000);
  await page.locator('#md-chips .chip[data-symbol="BTC-USD"][data-ack="yes"]').waitFor();
  for (let i = 4; i <= 6; i++) await publish(server, tick('BTC-USD', 500 + i));
  await waitForRow(page, 'BTC-USD', { price: 506, seq: 6, via: 'socket' });

  const row = await marketRow(page, 'BTC-USD');
  assert.equal(row.ticks, 6, 'three by polling, three by socket, none twice');
  assert.equal(row.gaps, 0);
  assert.ok(proxy.counts.upgrades >= 1);
  await screenshot(page, 'e-fallback-back-to-socket');
});
