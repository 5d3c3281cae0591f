//! A token that expires while the socket is open: the server closes with
//! 4001, the client asks its token function for a new one, reconnects and
//! resumes, and the page keeps showing ticks.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FAST_CLIENT, connectEndpoint, launchBrowser, marketRow, mintJwt, openTestPage, publish, screenshot,
  startServer, subscribe, tick, waitForRow
} from './helpers.mjs';

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('close 4001: the client renews its token through the token function and resumes', { timeout: 60000 }, async () => {
  const { page, errors } = await openTestPage(browser, server.url, { config: FAST_CLIENT });
  let minted = 0;
  // The first token lives two seconds; every renewal an hour.
  await page.exposeFunction('mintToken', () => mintJwt({ sub: 'alice', ttlSeconds: minted++ === 0 ? 2 : 3600 }));
  await page.evaluate(() => {
    window.tokenRequests = 0;
    window.websocketClient.configure({ token: () => { window.tokenRequests++; return window.mintToken(); } });
  });
  await connectEndpoint(page, 'market-data');
  await subscribe(page, 'BTC-USD');
  await publish(server, tick('BTC-USD', 1));
  await waitForRow(page, 'BTC-USD', { seq: 1 });

  await page.locator('#log', { hasText: 'close 4001' }).waitFor({ timeout: 15000 });
  await page.locator('#md-chips .chip[data-symbol="BTC-USD"][data-ack="yes"]').waitFor();
  await publish(server, [tick('BTC-USD', 2), tick('BTC-USD', 3)]);
  await waitForRow(page, 'BTC-USD', { seq: 3, price: 3 });

  assert.equal(await page.evaluate(() => window.tokenRequests), 2, 'one token at connect, one after 4001');
  const row = await marketRow(page, 'BTC-USD');
  assert.deepEqual({ ticks: row.ticks, gaps: row.gaps }, { ticks: 3, gaps: 0 });
  assert.equal(await page.locator('[data-testid="status-market-data"]').getAttribute('data-status'), 'open');
  await screenshot(page, 'token-renewed-after-4001');
  assert.deepEqual(errors, []);
});
