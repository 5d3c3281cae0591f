//! A signal filter set on the page hides the signals it does not match.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connectEndpoint, launchBrowser, mintJwt, openTestPage, publish, screenshot, startServer } from './helpers.mjs';

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

function signal(id, symbol, signalType, extra = {}) {
  return {
    type: 'new_signal', signal_id: id, symbol, signal_type: signalType, strength: 'STRONG',
    confidence_score: 80, entry_price: 45000, target_price: 50000, stop_loss: 42000, ...extra
  };
}

test('a BTC-USD/BUY filter shows only BTC-USD BUY signals and their updates', { timeout: 60000 }, async () => {
  const { page, errors } = await openTestPage(browser, server.url, { token: mintJwt({ sub: 'alice' }) });
  await connectEndpoint(page, 'trading-signals');
  await page.fill('#sig-symbol', 'BTC-USD');
  await page.selectOption('#sig-type', 'BUY');
  await page.click('#sig-apply');
  await page.locator('#sig-filter[data-state="active"]').waitFor();
  assert.equal(await page.locator('#sig-filter').textContent(), 'BTC-USD · BUY');

  // One batch keeps its order on the one signals stream: once the last
  // entry shows, every earlier one has been either shown or filtered out.
  await publish(server, [
    signal('sig-sell', 'BTC-USD', 'SELL'),
    signal('sig-eth-buy', 'ETH-USD', 'BUY'),
    signal('sig-hold', 'BTC-USD', 'HOLD'),
    signal('sig-buy', 'BTC-USD', 'BUY')
  ]);
  await page.locator('#sig-list li[data-signal-id="sig-buy"]').waitFor();
  await publish(server, [
    { type: 'signal_update', signal_id: 'sig-sell', confidence_score: 99 },
    { type: 'signal_update', signal_id: 'sig-buy', confidence_score: 91 }
  ]);
  await page.locator('#sig-list li[data-signal-id="sig-buy"]', { hasText: '91%' }).waitFor();

  const shown = await page.locator('#sig-list li').evaluateAll((lis) => lis.map((li) => li.getAttribute('data-signal-id')));
  assert.deepEqual(shown, ['sig-buy']);
  assert.equal(await page.locator('#sig-list li[data-signal-id="sig-buy"]').getAttribute('data-signal-type'), 'BUY');

  // Clearing the filter lets every signal through again.
  await page.fill('#sig-symbol', '');
  await page.selectOption('#sig-type', '');
  await page.click('#sig-apply');
  await page.locator('#sig-filter[data-state="active"]', { hasText: 'none' }).waitFor();
  await publish(server, signal('sig-sell-2', 'ETH-USD', 'SELL'));
  await page.locator('#sig-list li[data-signal-id="sig-sell-2"][data-signal-type="SELL"]').waitFor();

  await screenshot(page, 'b-signal-filter');
  assert.deepEqual(errors, []);
});
