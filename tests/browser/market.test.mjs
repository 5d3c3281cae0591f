//! A page that subscribes to a symbol shows its ticks live, in order, each once.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  connectEndpoint, launchBrowser, marketRow, mintJwt, openTestPage, publish, screenshot,
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

test('a subscribed page shows live ticks of its symbol and nothing of others', { timeout: 60000 }, async () => {
  const { page, errors } = await openTestPage(browser, server.url, { token: mintJwt({ sub: 'alice' }) });
  await connectEndpoint(page, 'market-data');
  await subscribe(page, 'BTC-USD');

  const prices = [45000.25, 45010.5, 44990, 45020.75, 45031];
  for (const price of prices) {
    await publish(server, [tick('ETH-USD', price / 15), tick('BTC-USD', price)]);
  }
  await waitForRow(page, 'BTC-USD', { ticks: prices.length, price: prices.at(-1) });

  const row = await marketRow(page, 'BTC-USD');
  assert.equal(row.seq, prices.length, 'seq of the last tick');
  assert.equal(row.gaps, 0);
  assert.equal(row.via, 'socket');
  assert.equal(await page.locator('#md-rows tr[data-symbol="ETH-USD"]').count(), 0, 'an unsubscribed symbol shows nothing');
  const shown = await page.locator('#md-rows tr[data-symbol="BTC-USD"] .price').textContent();
  assert.equal(shown, '45,031');

  // Unsubscribing stops the ticks: a later one for the symbol is not shown.
  await page.click('#md-chips .chip[data-symbol="BTC-USD"] button');
  await page.locator('#md-rows tr[data-symbol="BTC-USD"]').waitFor({ state: 'detached' });
  await page.fill('#md-symbol', 'ETH-USD');
  await page.click('#md-subscribe');
  // Right after `subscribed` the server sends the latest ETH-USD tick.
  await waitForRow(page, 'ETH-USD', { seq: prices.length, ticks: 1 });
  await publish(server, [tick('BTC-USD', 1), tick('ETH-USD', 3001)]);
  await waitForRow(page, 'ETH-USD', { price: 3001 });
  assert.equal(await page.locator('#md-rows tr[data-symbol="BTC-USD"]').count(), 0);

  await screenshot(page, 'a-market-ticks');
  assert.deepEqual(errors, []);
});
