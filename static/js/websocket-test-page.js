// The /websocket-test/ page: drives window.websocketClient against the three
// endpoints and publishes test broadcasts through POST /api/publish. Nothing
// typed here (JWT, API key) is stored: no localStorage, no cookies.
(function () {
  'use strict';

  var client = window.websocketClient;
  var $ = function (id) { return document.getElementById(id); };
  var KINDS = ['market-data', 'trading-signals', 'notifications'];
  var MAX_FEED_ITEMS = 100;
  var MAX_LOG_LINES = 300;
  var MAX_LATENCY_SAMPLES = 5000;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (key) {
        var value = attrs[key];
        if (value === null || value === undefined || value === false) return;
        if (key === 'text') node.textContent = value;
        else if (key === 'className') node.className = value;
        else node.setAttribute(key, value === true ? '' : String(value));
      });
    }
    (children || []).forEach(function (child) {
      if (child !== null && child !== undefined) node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    });
    return node;
  }

  function fmtNumber(value, digits) {
    if (typeof value !== 'number' || !isFinite(value)) return value === undefined || value === null ? '–' : String(value);
    return value.toLocaleString('en-US', { maximumFractionDigits: digits === undefined ? 8 : digits });
  }

  function fmtTime(date) {
    return date.toTimeString().slice(0, 8) + '.' + String(date.getMilliseconds()).padStart(3, '0');
  }

  // ---- session: server URL and token --------------------------------------

  var baseUrlInput = $('base-url');
  var jwtInput = $('jwt');
  baseUrlInput.value = location.origin;

  function currentToken() {
    var token = jwtInput.value.trim();
    return token || null;
  }

  function decodeClaims(token) {
    var parts = token.split('.');
    if (parts.length !== 3) return null;
    try {
      var json = atob(parts[1].replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(parts[1].length / 4) * 4, '='));
      return JSON.parse(json);
    } catch (_) {
      return null;
    }
  }

  function showTokenInfo() {
    var info = $('jwt-info');
    var token = currentToken();
    if (!token) { info.textContent = 'No token: the server refuses anonymous subscribers.'; return; }
    var claims = decodeClaims(token);
    if (!claims) { info.textContent = 'This does not look like a JWT (three base64url parts).'; return; }
    var text = 'sub ' + (claims.sub || '?');
    if (typeof claims.exp === 'number') {
      var mins = Math.round((claims.exp * 1000 - Date.now()) / 60000);
      text += mins >= 0 ? ' · expires in ' + mins + ' min' : ' · expired ' + -mins + ' min ago';
    }
    text += claims.symbols ? ' · symbols ' + claims.symbols.join(', ') : ' · all symbols';
    info.textContent = text;
  }

  var transportMode = $('transport-mode');
  var formatMode = $('format-mode');
  // ?multiplex=1 and ?format=msgpack preselect them (and make the page's
  // state linkable).
  var pageQuery = new URLSearchParams(location.search);
  if (pageQuery.get('multiplex') === '1') transportMode.value = 'multiplex';
  if (pageQuery.get('format') === 'msgpack') formatMode.value = 'msgpack';
  function applyTransport() {
    client.configure({ multiplex: transportMode.value === 'multiplex', format: formatMode.value });
  }
  transportMode.addEventListener('change', applyTransport);
  formatMode.addEventListener('change', applyTransport);

  client.configure({
    baseUrl: baseUrlInput.value,
    token: currentToken
  });
  applyTransport();
  baseUrlInput.addEventListener('change', function () {
    client.configure({ baseUrl: baseUrlInput.value.trim() || location.origin });
  });
  jwtInput.addEventListener('input', showTokenInfo);
  showTokenInfo();

  // ---- endpoint cards -----------------------------------------------------

  var cards = {};
  var pingSentAt = {};
  KINDS.forEach(function (kind) {
    var card = document.querySelector('.endpoint[data-kind="' + kind + '"]');
    var fields = {};
    card.querySelectorAll('[data-field]').forEach(function (node) { fields[node.getAttribute('data-field')] = node; });
    cards[kind] = { card: card, pill: card.querySelector('.pill[data-status]'), fields: fields, received: 0, reconnects: 0 };
    card.querySelector('[data-action="connect"]').addEventListener('click', function () { client.connect(kind); });
    card.querySelector('[data-action="disconnect"]').addEventListener('click', function () { client.disconnect(kind); });
    card.querySelector('[data-action="ping"]').addEventListener('click', function () {
      pingSentAt[kind] = performance.now();
      if (!client.ping(kind)) cards[kind].fields.rtt.textContent = 'not open';
    });
  });
  $('connect-all').addEventListener('click', function () { KINDS.forEach(function (k) { client.connect(k); }); });
  $('disconnect-all').addEventListener('click', function () { KINDS.forEach(function (k) { client.disconnect(k); }); });

  // Which transport, format and compression each kind has now.
  function showTransport(kind) {
    var t = client.transport(kind);
    var f = cards[kind].fields;
    f.transport.textContent = t.transport === 'none' ? '–' : t.transport === 'multiplex' ? 'one socket (' + t.path + ')' : t.transport === 'socket' ? 'own socket' : 'HTTP polling';
    f.format.textContent = t.format || '–';
    f.compression.textContent = t.compression === null ? '–' : (/permessage-deflate/.test(t.compression) ? 'permessage-deflate' : 'none');
    f.compression.title = t.compression || '';
  }
  client.on('status', function (ev) {
    var pill = cards[ev.kind].pill;
    pill.setAttribute('data-status', ev.status);
    pill.textContent = ev.status === 'polling' ? 'polling (fallback)' : ev.status;
    showTransport(ev.kind);
  });
  client.on('reconnecting', function (ev) {
    var c = cards[ev.kind];
    c.reconnects++;
    c.fields.reconnects.textContent = String(c.reconnects);
    logLine(ev.kind, 'client', 'reconnecting: attempt ' + ev.attempt + (ev.polling ? ' (from fallback)' : ' in ' + ev.delayMs + ' ms'));
  });
  client.on('open', function (ev) {
    logLine(ev.kind, 'client', 'open' + (ev.resumed ? ' (resumed)' : '') + (ev.fromFallback ? ' (back from polling)' : ''));
  });
  client.on('close', function (ev) {
    logLine(ev.kind, 'client', 'close ' + ev.code + (ev.reason ? ' ' + ev.reason : '') + (ev.willReconnect ? '' : ' (no reconnect)'));
  });
  client.on('fallback', function (ev) {
    logLine(ev.kind, 'client', 'fallback: socket unavailable after ' + ev.attempts + ' attempts; polling HTTP');
  });
  client.on('pong', function (msg, meta) {
    if (pingSentAt[meta.kind] !== undefined) {
      cards[meta.kind].fields.rtt.textContent = (performance.now() - pingSentAt[meta.kind]).toFixed(1) + ' ms';
      delete pingSentAt[meta.kind];
    }
  });

  // ---- every message: counters, latency, log -------------------------------

  var typeCounts = Object.create(null);
  var typePrevCounts = Object.create(null);
  var typeRates = Object.create(null);
  var latencies = [];
  var lastLatency = null;
  var resetCount = 0;

  client.on('*', function (msg, meta) {
    var c = cards[meta.kind];
    if (c) {
      c.received++;
      c.fields.received.textContent = String(c.received);
      c.fields.via.textContent = meta.via;
    }
    typeCounts[msg.type] = (typeCounts[msg.type] || 0) + 1;
    // Only live deliveries measure latency: a backlog (unread_notifications,
    // a replay after reconnecting, the latest tick sent on subscribing, a
    // poll) says how long it was stored.
    if (typeof msg.sent_at_ms === 'number' && meta.via === 'socket' && msg.sent_at_ms >= liveSince(meta.kind, msg)) {
      lastLatency = Date.now() - msg.sent_at_ms;
      latencies.push(lastLatency);
      if (latencies.length > MAX_LATENCY_SAMPLES) latencies.splice(0, latencies.length - MAX_LATENCY_SAMPLES);
    }
    logLine(meta.kind, meta.via, JSON.stringify(msg));
    scheduleCounters();
  });

  var openedAt = Object.create(null);
  var subscribedAt = Object.create(null);
  client.on('open', function (ev) { openedAt[ev.kind] = Date.now(); });
  client.on('subscribed', function (msg) {
    (msg.symbols || []).forEach(function (s) { subscribedAt[s] = Date.now(); });
  });
  function liveSince(kind, msg) {
    var since = openedAt[kind] || 0;
    if (msg.type === 'market_update' && subscribedAt[msg.symbol]) since = Math.max(since, subscribedAt[msg.symbol]);
    return since;
  }

  function percentile(sorted, p) {
    if (!sorted.length) return null;
    return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
  }

  var countersPending = false;
  function scheduleCounters() {
    if (countersPending) return;
    countersPending = true;
    setTimeout(renderCounters, 150);
  }

  function renderCounters() {
    countersPending = false;
    var ms = function (v) { return v === null ? '–' : v + ' ms'; };
    var sorted = latencies.slice().sort(function (a, b) { return a - b; });
    $('lat-n').textContent = String(sorted.length);
    $('lat-last').textContent = ms(lastLatency);
    $('lat-p50').textContent = ms(percentile(sorted, 0.5));
    $('lat-p90').textContent = ms(percentile(sorted, 0.9));
    $('lat-p99').textContent = ms(percentile(sorted, 0.99));
    $('lat-max').textContent = ms(sorted.length ? sorted[sorted.length - 1] : null);
    var body = $('type-counters');
    var types = Object.keys(typeCounts).sort();
    body.replaceChildren.apply(body, types.map(function (type) {
      return el('tr', { 'data-type': type }, [
        el('td', { text: type }),
        el('td', { className: 'num', text: String(typeCounts[type]) }),
        el('td', { className: 'num', text: fmtNumber(typeRates[type] || 0, 1) })
      ]);
    }));
    var stats = client.stats();
    $('dup-dropped').textContent = String(stats.duplicatesDropped);
    $('reset-count').textContent = String(resetCount);
  }

  setInterval(function () {
    var changed = false;
    Object.keys(typeCounts).forEach(function (type) {
      var rate = typeCounts[type] - (typePrevCounts[type] || 0);
      if (rate !== (typeRates[type] || 0)) changed = true;
      typeRates[type] = rate;
      typePrevCounts[type] = typeCounts[type];
    });
    if (changed) scheduleCounters();
  }, 1000);

  $('counters-reset').addEventListener('click', function () {
    typeCounts = Object.create(null);
    typePrevCounts = Object.create(null);
    typeRates = Object.create(null);
    latencies = [];
    lastLatency = null;
    renderCounters();
  });

  var logBox = $('log');
  var logQueue = [];
  var logPending = false;
  function logLine(kind, via, text) {
    if ($('log-pause').checked) return;
    logQueue.push(el('div', null, [
      el('span', { className: 't', text: fmtTime(new Date()) + ' ' }),
      el('span', { className: 'k', text: kind + ' ' + via + ' ' }),
      text
    ]));
    if (logQueue.length > MAX_LOG_LINES) logQueue.splice(0, logQueue.length - MAX_LOG_LINES);
    if (!logPending) {
      logPending = true;
      setTimeout(flushLog, 100);
    }
  }
  function flushLog() {
    logPending = false;
    var atBottom = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 30;
    logBox.append.apply(logBox, logQueue);
    logQueue = [];
    while (logBox.childElementCount > MAX_LOG_LINES) logBox.firstElementChild.remove();
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
  }
  $('log-clear').addEventListener('click', function () { logBox.replaceChildren(); });

  // ---- market data ----------------------------------------------------------

  var mdRows = Object.create(null);
  var acknowledged = new Set();

  function renderChips() {
    var chips = $('md-chips');
    chips.replaceChildren.apply(chips, client.subscriptions().map(function (symbol) {
      var remove = el('button', { type: 'button', 'aria-label': 'Unsubscribe ' + symbol, text: '×' });
      remove.addEventListener('click', function () { unsubscribe(symbol); });
      return el('span', {
        className: 'chip', 'data-symbol': symbol, 'data-ack': acknowledged.has(symbol) ? 'yes' : 'no',
        title: acknowledged.has(symbol) ? 'subscribed' : 'waiting for the server'
      }, [symbol + (acknowledged.has(symbol) ? '' : ' …'), remove]);
    }));
  }

  function unsubscribe(symbol) {
    client.unsubscribeFromSymbol(symbol);
    acknowledged.delete(symbol);
    if (mdRows[symbol]) { mdRows[symbol].tr.remove(); delete mdRows[symbol]; }
    $('md-empty').hidden = Object.keys(mdRows).length > 0;
    renderChips();
  }

  $('md-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var symbol = $('md-symbol').value.trim();
    if (!symbol) return;
    client.subscribeToSymbol(symbol);
    renderChips();
  });
  $('md-unsubscribe').addEventListener('click', function () {
    var symbol = $('md-symbol').value.trim();
    if (symbol) unsubscribe(symbol);
  });

  client.on('subscribed', function (msg) {
    (msg.symbols || []).forEach(function (s) { acknowledged.add(s); });
    renderChips();
  });
  client.on('unsubscribed', function (msg) {
    (msg.symbols || []).forEach(function (s) { acknowledged.delete(s); });
    renderChips();
  });
  // A resubscription after a reconnect is acknowledged again.
  client.on('close', function (ev) {
    if (ev.kind === 'market-data') { acknowledged.clear(); renderChips(); }
  });

  function mdRow(symbol) {
    var row = mdRows[symbol];
    if (row) return row;
    var cells = {};
    ['price', 'change', 'volume', 'seq', 'ticks', 'gaps', 'via'].forEach(function (name) {
      cells[name] = el('td', { className: name === 'via' ? name : 'num ' + name + (name === 'change' || name === 'volume' ? ' hide-narrow' : '') });
    });
    var tr = el('tr', { 'data-symbol': symbol }, [el('td', { text: symbol })].concat(
      ['price', 'change', 'volume', 'seq', 'ticks', 'gaps', 'via'].map(function (n) { return cells[n]; })));
    $('md-rows').appendChild(tr);
    $('md-empty').hidden = true;
    row = mdRows[symbol] = { tr: tr, cells: cells, ticks: 0, gaps: 0, lastSeq: null };
    return row;
  }

  client.on('market_update', function (msg, meta) {
    var row = mdRow(msg.symbol);
    if (row.lastSeq !== null && typeof msg.seq === 'number' && msg.seq !== row.lastSeq + 1) row.gaps++;
    if (typeof msg.seq === 'number') row.lastSeq = msg.seq;
    row.ticks++;
    row.cells.price.textContent = fmtNumber(msg.price);
    row.cells.price.setAttribute('data-value', String(msg.price));
    row.cells.change.textContent = fmtNumber(msg.change, 2);
    row.cells.change.className = 'num change hide-narrow ' + (msg.change > 0 ? 'up' : msg.change < 0 ? 'down' : '');
    row.cells.volume.textContent = fmtNumber(msg.volume, 0);
    row.cells.seq.textContent = String(msg.seq);
    row.tr.setAttribute('data-seq', String(msg.seq));
    row.tr.setAttribute('data-ticks', String(row.ticks));
    row.tr.setAttribute('data-gaps', String(row.gaps));
    row.tr.setAttribute('data-via', meta.via);
    row.cells.ticks.textContent = String(row.ticks);
    row.cells.gaps.textContent = String(row.gaps);
    row.cells.via.textContent = meta.via;
    row.tr.classList.remove('flash');
    void row.tr.offsetWidth;
    row.tr.classList.add('flash');
  });

  client.on('reset', function (msg) {
    resetCount++;
    // The server's history starts over at msg.seq: the next update is not a gap.
    if (mdRows[msg.stream]) {
      mdRows[msg.stream].lastSeq = null;
      mdRows[msg.stream].tr.setAttribute('data-reset', String(msg.seq));
    }
    $('reset-count').textContent = String(resetCount);
    logLine('-', 'client', 'reset of stream ' + msg.stream + ' at seq ' + msg.seq);
  });

  // ---- trading signals -------------------------------------------------------

  var signalItems = Object.create(null);
  var lastSignalId = null;

  function describeFilter(f) {
    if (!f.symbol && !f.signal_type) return 'none (every signal)';
    return (f.symbol || 'any symbol') + ' · ' + (f.signal_type || 'any type');
  }

  $('sig-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var symbol = $('sig-symbol').value.trim() || null;
    var type = $('sig-type').value || null;
    var sent = client.filterSignals(symbol, type);
    var label = $('sig-filter');
    label.textContent = describeFilter({ symbol: symbol, signal_type: type }) + (sent ? ' (sent)' : ' (applied on connect)');
    label.setAttribute('data-state', 'pending');
  });

  client.on('filtered', function (msg) {
    var label = $('sig-filter');
    label.textContent = describeFilter(msg);
    label.setAttribute('data-state', 'active');
  });

  function renderSignal(item, msg) {
    var s = item.state;
    Object.keys(msg).forEach(function (key) { s[key] = msg[key]; });
    item.li.setAttribute('data-signal-type', s.signal_type || '');
    item.li.setAttribute('data-symbol', s.symbol || '');
    item.li.setAttribute('data-seq', String(s.seq));
    item.li.replaceChildren(
      el('div', { className: 'line' }, [
        el('span', { className: 'badge-' + s.signal_type, text: s.signal_type || '?' }),
        el('b', { text: s.symbol || '?' }),
        el('span', { className: 'meta', text: (s.strength || '') + (s.confidence_score !== undefined ? ' · ' + s.confidence_score + '%' : '') }),
        el('span', { className: 'spacer' }),
        el('span', { className: 'meta mono', text: s.signal_id + ' · seq ' + s.seq + (item.updates ? ' · ' + item.updates + ' update' + (item.updates > 1 ? 's' : '') : '') })
      ]),
      el('div', { className: 'meta', text: 'entry ' + fmtNumber(s.entry_price) + ' · target ' + fmtNumber(s.target_price) + ' · stop ' + fmtNumber(s.stop_loss) })
    );
  }

  function onSignal(msg) {
    lastSignalId = msg.signal_id;
    var item = signalItems[msg.signal_id];
    if (!item) {
      item = signalItems[msg.signal_id] = { li: el('li', { 'data-signal-id': msg.signal_id }), state: {}, updates: 0 };
      var list = $('sig-list');
      list.insertBefore(item.li, list.firstChild);
      while (list.childElementCount > MAX_FEED_ITEMS) {
        var old = list.lastElementChild;
        delete signalItems[old.getAttribute('data-signal-id')];
        old.remove();
      }
      $('sig-empty').hidden = true;
    }
    if (msg.type === 'signal_update') item.updates++;
    renderSignal(item, msg);
  }
  client.on('new_signal', onSignal);
  client.on('signal_update', onSignal);

  // ---- notifications ---------------------------------------------------------

  var notifItems = Object.create(null);

  function updateUnread() {
    $('notif-unread').textContent = String($('notif-list').querySelectorAll('li.unread').length);
  }

  function markRead(id) {
    client.markNotificationRead(id);
    var item = notifItems[id];
    if (item) {
      item.button.disabled = true;
      item.button.textContent = 'Marking…';
    }
  }

  function onNotification(msg) {
    if (!msg.notification_id || notifItems[msg.notification_id]) return;
    var button = el('button', { type: 'button', className: 'small', text: 'Mark read' });
    button.addEventListener('click', function () { markRead(msg.notification_id); });
    var li = el('li', { 'data-notification-id': msg.notification_id, 'data-seq': String(msg.seq), className: msg.read ? 'read' : 'unread' }, [
      el('div', { className: 'line' }, [
        el('b', { className: 'title', text: msg.title || '(no title)' }),
        el('span', { className: 'pill', text: msg.priority || 'normal' }),
        el('span', { className: 'spacer' }),
        msg.read ? null : button
      ]),
      el('div', { text: msg.message || '' }),
      el('div', { className: 'meta mono', text: msg.notification_id + ' · ' + (msg.notification_type || '') + ' · seq ' + msg.seq })
    ]);
    notifItems[msg.notification_id] = { li: li, button: button };
    var list = $('notif-list');
    list.insertBefore(li, list.firstChild);
    while (list.childElementCount > MAX_FEED_ITEMS) {
      var old = list.lastElementChild;
      delete notifItems[old.getAttribute('data-notification-id')];
      old.remove();
    }
    $('notif-empty').hidden = true;
    updateUnread();
  }

  client.on('new_notification', onNotification);
  client.on('unread_notifications', function (msg) {
    (msg.notifications || []).slice().sort(function (a, b) { return (a.seq || 0) - (b.seq || 0); }).forEach(onNotification);
  });
  client.on('notification_read', function (msg) {
    var item = notifItems[msg.notification_id];
    if (!item) return;
    item.li.classList.remove('unread');
    item.li.classList.add('read');
    item.button.remove();
    updateUnread();
  });
  $('notif-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var id = $('notif-id').value.trim();
    if (id) markRead(id);
  });

  client.on('error', function (msg, meta) {
    logLine(meta.kind, 'error', (msg.code || 'error') + ': ' + (msg.message || ''));
  });

  // ---- publishing --------------------------------------------------------------

  var seqForIds = 0;
  function uniqueId(prefix) {
    seqForIds++;
    return prefix + Date.now().toString(36) + '_' + seqForIds;
  }

  function template(type) {
    var symbol = $('md-symbol').value.trim() || 'BTC-USD';
    var claims = currentToken() && decodeClaims(currentToken());
    switch (type) {
      case 'market_update':
        return { type: type, symbol: symbol, price: 45000.5, change: 2.5, volume: 1000000 };
      case 'new_signal':
        return { type: type, signal_id: uniqueId('signal_'), symbol: symbol, signal_type: 'BUY', strength: 'STRONG',
          confidence_score: 85, entry_price: 45000, target_price: 50000, stop_loss: 42000 };
      case 'signal_update':
        return { type: type, signal_id: lastSignalId || 'signal_123', confidence_score: 90 };
      default:
        return { type: 'new_notification', notification_id: uniqueId('notif_'), user_id: (claims && claims.sub) || 'alice',
          title: 'Trade Executed', message: 'BUY 100 ' + symbol + ' @ $45000', notification_type: 'trade', priority: 'high' };
    }
  }

  function fillTemplate() {
    $('publish-body').value = JSON.stringify(template($('publish-type').value), null, 2);
  }
  $('publish-type').addEventListener('change', fillTemplate);
  $('publish-template').addEventListener('click', fillTemplate);
  fillTemplate();

  function variant(base, index, count) {
    var msg = JSON.parse(JSON.stringify(base));
    if (count > 1) {
      if (msg.type === 'market_update' && typeof msg.price === 'number') {
        msg.price = Math.round((msg.price + (Math.random() - 0.5) * msg.price * 0.002) * 100) / 100;
      }
      if (msg.type === 'new_signal' && msg.signal_id) msg.signal_id += '-' + (index + 1);
      if (msg.type === 'new_notification' && msg.notification_id) msg.notification_id += '-' + (index + 1);
    }
    msg.sent_at_ms = Date.now();
    return msg;
  }

  $('publish-send').addEventListener('click', function () {
    var result = $('publish-result');
    result.className = 'result';
    var base;
    try {
      base = JSON.parse($('publish-body').value);
    } catch (err) {
      result.className = 'result err';
      result.textContent = 'Not valid JSON: ' + err.message;
      return;
    }
    var key = $('api-key').value.trim();
    if (!key) {
      result.className = 'result err';
      result.textContent = 'Type the publisher API key first.';
      return;
    }
    var count = Math.max(1, Math.min(1000, parseInt($('publish-count').value, 10) || 1));
    var bases = Array.isArray(base) ? base : [base];
    var batch = [];
    for (var i = 0; i < count; i++) {
      bases.forEach(function (b) { batch.push(variant(b, i, count)); });
    }
    var started = performance.now();
    result.textContent = 'sending ' + batch.length + '…';
    fetch(baseUrlInput.value.replace(/\/+$/, '') + '/api/publish', {
      method: 'POST',
      headers: { Authorization: 'Bearer ' + key, 'Content-Type': 'application/json' },
      body: JSON.stringify(batch.length === 1 ? batch[0] : batch)
    }).then(function (res) {
      return res.text().then(function (text) {
        result.className = 'result ' + (res.ok ? 'ok' : 'err');
        result.setAttribute('data-status', String(res.status));
        result.textContent = res.status + ' ' + text + ' · ' + (performance.now() - started).toFixed(1) + ' ms';
      });
    }, function (err) {
      result.className = 'result err';
      result.textContent = 'request failed: ' + err.message;
    });
    // A new id for the next send, keeping whatever else was edited.
    if (!Array.isArray(base) && (base.type === 'new_signal' || base.type === 'new_notification')) {
      var next = Object.assign({}, base);
      if (base.type === 'new_signal') next.signal_id = uniqueId('signal_');
      else next.notification_id = uniqueId('notif_');
      $('publish-body').value = JSON.stringify(next, null, 2);
    }
  });
})();
