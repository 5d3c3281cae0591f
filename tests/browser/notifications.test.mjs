//! A notification reaches only its user; mark_read in one tab updates the other tabs of that user.
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

function notification(id, userId, title) {
  return {
    type: 'new_notification', notification_id: id, user_id: userId, title,
    message: 'BUY 100 BTC-USD @ $45000', notification_type: 'trade', priority: 'high'
  };
}

test('notifications go to their user only, and read state follows across tabs', { timeout: 60000 }, async () => {
  const alice1 = await openTestPage(browser, server.url, { token: mintJwt({ sub: 'alice' }) });
  const alice2 = await openTestPage(browser, server.url, { token: mintJwt({ sub: 'alice' }) });
  const bob = await openTestPage(browser, server.url, { token: mintJwt({ sub: 'bob' }) });
  for (const tab of [alice1, alice2, bob]) await connectEndpoint(tab.page, 'notifications');

  await publish(server, notification('n-alice-1', 'alice', 'Trade Executed'));
  for (const tab of [alice1, alice2]) {
    await tab.page.locator('#notif-list li.unread[data-notification-id="n-alice-1"]').waitFor();
    assert.equal(await tab.page.locator('[data-testid="notif-unread"]').textContent(), '1');
  }
  // Bob's notification is published after Alice's reached her tabs: had Bob's
  // connection been sent Alice's, it would have arrived before his own.
  await publish(server, notification('n-bob-1', 'bob', 'Margin Call'));
  await bob.page.locator('#notif-list li[data-notification-id="n-bob-1"]').waitFor();
  assert.equal(await bob.page.locator('#notif-list li').count(), 1, 'bob sees only his own notification');
  assert.equal(await alice1.page.locator('#notif-list li[data-notification-id="n-bob-1"]').count(), 0);
  const li = alice1.page.locator('#notif-list li[data-notification-id="n-alice-1"]');
  assert.match(await li.textContent(), /Trade Executed/);

  await alice1.page.click('#notif-list li[data-notification-id="n-alice-1"] button');
  for (const tab of [alice1, alice2]) {
    await tab.page.locator('#notif-list li.read[data-notification-id="n-alice-1"]').waitFor();
    assert.equal(await tab.page.locator('[data-testid="notif-unread"]').textContent(), '0');
  }
  assert.equal(await bob.page.locator('[data-testid="notif-unread"]').textContent(), '1', "bob's notification stays unread");
  // The message log shows every frame as received: user_id is never sent to a browser.
  const log = await alice1.page.locator('#log').textContent();
  assert.match(log, /n-alice-1/);
  assert.doesNotMatch(log, /user_id/);

  // The read state is stored: a tab opened later gets only what is unread.
  await publish(server, notification('n-alice-2', 'alice', 'Order Filled'));
  const alice3 = await openTestPage(browser, server.url, { token: mintJwt({ sub: 'alice' }) });
  await connectEndpoint(alice3.page, 'notifications');
  await alice3.page.locator('#notif-list li.unread[data-notification-id="n-alice-2"]').waitFor();
  assert.equal(await alice3.page.locator('#notif-list li[data-notification-id="n-alice-1"]').count(), 0);

  await screenshot(alice2.page, 'c-notifications-second-tab');
  await screenshot(bob.page, 'c-notifications-other-user');
  for (const tab of [alice1, alice2, bob, alice3]) assert.deepEqual(tab.errors, []);
});
