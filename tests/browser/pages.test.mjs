//! /websocket-test/ and /dashboard/ load and work without console errors, at
//! desktop (1280px) and phone (390px) widths, with nothing wider than the screen.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  connectEndpoint, launchBrowser, mintJwt, openTestPage, publish, screenshot, startServer, subscribe,
  tick, waitForRow, watchConsole
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

const WIDTHS = [
  { name: 'desktop', viewport: { width: 1280, height: 900 } },
  { name: 'phone', viewport: { width: 390, height: 844 } }
];

async function assertFitsWidth(page) {
  const { scrollWidth, innerWidth } = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth
  }));
  assert.ok(scrollWidth <= innerWidth, 'page is ' + scrollWidth + 'px wide in a ' + innerWidth + 'px window');
}

for (const { name, viewport } of WIDTHS) {
  test('/websocket-test/ at ' + name + ' width', { timeout: 60000 }, async () => {
    const { page, errors } = await openTestPage(browser, server.url, { token: mintJwt({ sub: 'alice' }), viewport });
    assert.equal(await page.title(), 'tickwire · WebSocket test');
    await page.click('#connect-all');
    for (const kind of ['market-data', 'trading-signals', 'notifications']) {
      await page.locator('[data-testid="status-' + kind + '"][data-status="open"]').waitFor();
    }
    await subscribe(page, 'BTC-USD');
    // A test broadcast sent from the page itself, as a person would.
    await page.selectOption('#publish-type', 'market_update');
    await page.fill('#publish-count', '3');
    await page.click('#publish-send');
    await page.locator('#publish-result[data-status="202"]').waitFor();
    await waitForRow(page, 'BTC-USD', { minTicks: 3 });
    await page.locator('#lat-n', { hasText: /^[1-9]/ }).waitFor();
    await page.selectOption('#publish-type', 'new_notification');
    await page.click('#publish-send');
    await page.locator('#notif-list li.unread').first().waitFor();
    await page.locator('#type-counters tr[data-type="market_update"]').waitFor();

    assert.equal(await page.evaluate(() => localStorage.length), 0, 'nothing is stored');
    // The ES-module entry gives the same client as the <script> tag.
    assert.ok(await page.evaluate(async () => {
      const mod = await import('/static/js/websocket_client.mjs');
      return mod.websocketClient === window.websocketClient && mod.default === window.websocketClient &&
        mod.TickwireClient === window.TickwireClient;
    }));
    await assertFitsWidth(page);
    await screenshot(page, 'f-websocket-test-' + name);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test('/dashboard/ at ' + name + ' width', { timeout: 60000 }, async () => {
    const subscriber = await openTestPage(browser, server.url, { token: mintJwt({ sub: 'alice' }) });
    await connectEndpoint(subscriber.page, 'market-data');
    await subscribe(subscriber.page, 'DASH-USD');

    const page = await browser.newPage(viewport);
    const errors = watchConsole(page);
    await page.goto(server.url + '/dashboard/');
    assert.equal(await page.title(), 'tickwire · dashboard');
    await page.locator('[data-testid="feed-status"][data-status="open"]').waitFor();
    await page.locator('#conn-rows tr[data-endpoint="market-data"]:not([data-value="0"])').waitFor();
    // Rates come from the deltas of two samples: keep ticks flowing to the
    // subscribed page until the charts have a few seconds of them.
    const feed = page.locator('[data-testid="feed-status"]');
    const samples = async () => Number(await feed.getAttribute('data-samples'));
    const firstSample = await samples();
    for (let i = 0; i < 200 && (await samples()) < firstSample + 5; i++) {
      await publish(server, [tick('DASH-USD', 100 + i), tick('DASH-USD', 100.5 + i)]);
      await page.waitForTimeout(50); // pacing of the publisher, not a wait for a result
    }
    await page.locator('[data-testid="kpi-in"]', { hasText: /^[1-9]/ }).waitFor({ timeout: 10000 });
    await page.locator('[data-testid="kpi-out"]', { hasText: /^[1-9]/ }).waitFor({ timeout: 10000 });
    assert.equal(await page.locator('.chart canvas').count(), 3, 'three live charts');
    assert.notEqual(await page.locator('[data-testid="kpi-uptime"]').textContent(), '–');
    assert.ok(await page.locator('#banner').isHidden(), 'no error banner');

    await assertFitsWidth(page);
    await screenshot(page, 'f-dashboard-' + name);
    assert.deepEqual(errors, []);
    assert.deepEqual(subscriber.errors, []);
    await page.close();
    await subscriber.page.close();
  });
}
