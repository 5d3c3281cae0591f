// The /dashboard/ page: polls GET /api/stats once a second, turns counters
// into rates from the deltas between two samples (on the server's own clock,
// uptime_s), and draws the last five minutes with uPlot (static/vendor/uplot).
(function () {
  'use strict';

  var POLL_MS = 1000;
  var WINDOW_POINTS = 300;
  var ENDPOINTS = ['market-data', 'trading-signals', 'notifications', 'stream', 'ingest'];
  var IN_TYPES = ['market_update', 'new_signal', 'signal_update', 'new_notification'];
  var COLORS = ['#2563eb', '#16a34a', '#d97706', '#9333ea', '#dc2626', '#0891b2'];
  var $ = function (id) { return document.getElementById(id); };

  // ---- formatting ----------------------------------------------------------

  function num(v) { return typeof v === 'number' && isFinite(v) ? v : null; }

  function fmtCount(v) {
    v = num(v);
    if (v === null) return '–';
    var a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(2) + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(2) + 'M';
    if (a >= 1e4) return (v / 1e3).toFixed(1) + 'k';
    return a < 10 && v % 1 ? v.toFixed(1) : String(Math.round(v));
  }

  function fmtBytes(v) {
    v = num(v);
    if (v === null) return '–';
    var units = ['B', 'KB', 'MB', 'GB', 'TB'];
    var i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : String(Math.round(v))) + ' ' + units[i];
  }

  function fmtMicros(v) {
    v = num(v);
    if (v === null) return '–';
    if (v >= 1e6) return (v / 1e6).toFixed(2) + ' s';
    if (v >= 1e3) return (v / 1e3).toFixed(v >= 1e4 ? 0 : 1) + ' ms';
    return Math.round(v) + ' µs';
  }

  function fmtUptime(s) {
    s = num(s);
    if (s === null) return '–';
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), sec = Math.floor(s % 60);
    if (d) return d + 'd ' + h + 'h';
    if (h) return h + 'h ' + String(m).padStart(2, '0') + 'm';
    if (m) return m + 'm ' + String(sec).padStart(2, '0') + 's';
    return sec + 's';
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function row(cells, attrs) {
    var tr = el('tr');
    Object.keys(attrs || {}).forEach(function (k) { tr.setAttribute(k, attrs[k]); });
    cells.forEach(function (c, i) { tr.appendChild(el('td', i ? 'num' : '', c)); });
    return tr;
  }

  // ---- charts ----------------------------------------------------------------

  var times = [];
  var connSeries = ENDPOINTS.map(function () { return []; });
  var inSeries = IN_TYPES.map(function () { return []; });
  var outSeries = [];
  var latSeries = { w50: [], w99: [], w999: [], e99: [] };
  var charts = [];

  function chartHeight() { return window.innerWidth < 560 ? 180 : 220; }

  function makeChart(containerId, series, axes, scales, data) {
    var container = $(containerId);
    var opts = {
      width: Math.max(200, container.clientWidth),
      height: chartHeight(),
      series: [{ value: function (u, v) { return v === null ? '–' : new Date(v * 1000).toTimeString().slice(0, 8); } }].concat(series),
      axes: axes,
      // A window that fills from the right: one minute at first, growing
      // with the data to five.
      scales: Object.assign({ x: { time: true, range: function (u, min, max) {
        var span = Math.min(WINDOW_POINTS * POLL_MS / 1000, Math.max(60, (max - min) || 0));
        return [max - span, max];
      } } }, scales || {}),
      legend: { live: true },
      cursor: { drag: { x: false, y: false } }
    };
    var chart = new uPlot(opts, data(), container);
    charts.push({ chart: chart, container: container, data: data });
    return chart;
  }

  function line(label, color, extra) {
    return Object.assign({ label: label, stroke: color, width: 2, spanGaps: false }, extra || {});
  }

  var gridColor = getComputedStyle(document.documentElement).getPropertyValue('--line').trim() || '#dde3ea';
  var textColor = getComputedStyle(document.documentElement).getPropertyValue('--muted').trim() || '#5d6b7c';
  function axis(extra) {
    return Object.assign({ stroke: textColor, grid: { stroke: gridColor, width: 1 }, ticks: { stroke: gridColor, width: 1 } }, extra || {});
  }

  // Ticks closer than a minute apart carry seconds (14:10:15, 14:10:30),
  // or a minute's ticks would all read the same (14:10, 14:10, 14:10).
  function timeAxis() {
    return axis({
      space: 64,
      values: function (u, vals, axisIdx, foundSpace, foundIncr) {
        var len = foundIncr < 60 ? 8 : 5;
        return vals.map(function (v) { return new Date(v * 1000).toTimeString().slice(0, len); });
      }
    });
  }

  // A log axis with a grid line per power of ten only; uPlot's default adds
  // 2..9 of every decade, a dense band of lines on a chart this small.
  function decadeSplits(u, axisIdx, min, max) {
    var splits = [];
    if (!(min > 0) || !(max > 0)) return splits;
    for (var p = Math.floor(Math.log10(min)); p <= Math.ceil(Math.log10(max)); p++) {
      var v = Math.pow(10, p);
      if (v >= min * 0.999 && v <= max * 1.001) splits.push(v);
    }
    return splits;
  }

  makeChart('chart-conns',
    ENDPOINTS.map(function (name, i) { return line(name, COLORS[i], { value: function (u, v) { return v === null ? '–' : String(v); } }); }),
    [timeAxis(), axis({ size: 50 })],
    { y: { range: function (u, min, max) { return [0, Math.max(4, Math.ceil(max * 1.15))]; } } },
    function () { return [times].concat(connSeries); });

  makeChart('chart-msgs',
    IN_TYPES.map(function (name, i) { return line(name, COLORS[i], { value: function (u, v) { return fmtCount(v); } }); })
      .concat([line('out', COLORS[4], { scale: 'out', dash: [6, 4], value: function (u, v) { return fmtCount(v); } })]),
    [timeAxis(), axis({ size: 50, values: function (u, vals) { return vals.map(fmtCount); } }),
      axis({ scale: 'out', side: 1, size: 50, grid: { show: false }, values: function (u, vals) { return vals.map(fmtCount); } })],
    {
      y: { range: function (u, min, max) { return [0, Math.max(5, max * 1.15)]; } },
      out: { range: function (u, min, max) { return [0, Math.max(5, max * 1.15)]; } }
    },
    function () { return [times].concat(inSeries, [outSeries]); });

  makeChart('chart-lat',
    [
      line('write p50', COLORS[0], { value: function (u, v) { return fmtMicros(v); } }),
      line('write p99', COLORS[2], { value: function (u, v) { return fmtMicros(v); } }),
      line('write p99.9', COLORS[4], { value: function (u, v) { return fmtMicros(v); } }),
      line('enqueue p99', COLORS[3], { dash: [6, 4], value: function (u, v) { return fmtMicros(v); } })
    ],
    [timeAxis(), axis({ size: 60, splits: decadeSplits, values: function (u, vals) { return vals.map(fmtMicros); } })],
    { y: { distr: 3, log: 10, range: function (u, min, max) {
      var lo = Math.pow(10, Math.floor(Math.log10(Math.max(1, min || 1))));
      var hi = Math.pow(10, Math.ceil(Math.log10(Math.max(lo * 10, max || 10))));
      return [lo, hi === lo ? lo * 10 : hi];
    } } },
    function () { return [times, latSeries.w50, latSeries.w99, latSeries.w999, latSeries.e99]; });

  // With the pointer off a chart its legend shows the newest values.
  function redrawCharts() {
    charts.forEach(function (c) {
      c.chart.setData(c.data());
      if (c.chart.cursor.idx === null || c.chart.cursor.idx === undefined || c.chart.cursor.left < 0) {
        c.chart.setLegend({ idx: times.length - 1 });
      }
    });
  }

  var resizeTimer = null;
  function resizeCharts() {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      charts.forEach(function (c) {
        var width = Math.max(200, c.container.clientWidth);
        c.chart.setSize({ width: width, height: chartHeight() });
      });
    }, 50);
  }
  if (window.ResizeObserver) {
    var observer = new ResizeObserver(resizeCharts);
    charts.forEach(function (c) { observer.observe(c.container); });
  } else {
    window.addEventListener('resize', resizeCharts);
  }

  // ---- samples ---------------------------------------------------------------

  var previous = null;
  var paused = false;

  function rate(cur, prev, dt) {
    cur = num(cur); prev = num(prev);
    if (cur === null || prev === null || !(dt > 0) || cur < prev) return null;
    return (cur - prev) / dt;
  }

  function positive(v) {
    v = num(v);
    return v !== null && v > 0 ? v : null;
  }

  function push(arr, v) {
    arr.push(v);
    if (arr.length > WINDOW_POINTS) arr.shift();
  }

  // A histogram with no sample yet reports zeros: shown as "–", not "0 µs".
  function latency(h) {
    return h && num(h.count) !== 0 ? h : {};
  }

  function totalIn(stats) {
    var m = stats.messages_in || {};
    return Object.keys(m).reduce(function (sum, k) { return sum + (num(m[k]) || 0); }, 0);
  }

  function ingest(stats) {
    var dt = previous ? stats.uptime_s - previous.uptime_s : 0;
    var restarted = previous && dt <= 0;
    var prev = restarted ? null : previous;
    var now = Date.now() / 1000;

    var conns = stats.connections || {};
    var msgsIn = stats.messages_in || {};
    push(times, now);
    ENDPOINTS.forEach(function (name, i) { push(connSeries[i], num(conns[name])); });
    var inRates = IN_TYPES.map(function (type, i) {
      var r = prev ? rate(msgsIn[type], (prev.messages_in || {})[type], dt) : null;
      push(inSeries[i], r);
      return r;
    });
    var outRate = prev ? rate(stats.messages_out, prev.messages_out, dt) : null;
    var bytesRate = prev ? rate(stats.bytes_out, prev.bytes_out, dt) : null;
    var inRate = prev ? rate(totalIn(stats), totalIn(prev), dt) : null;
    push(outSeries, outRate);

    var lat = stats.latency_us || {};
    var write = latency(lat.publish_to_write);
    var enqueue = latency(lat.publish_to_enqueue);
    push(latSeries.w50, positive(write.p50));
    push(latSeries.w99, positive(write.p99));
    push(latSeries.w999, positive(write.p999));
    push(latSeries.e99, positive(enqueue.p99));

    renderKpis(stats, prev, { inRate: inRate, outRate: outRate, bytesRate: bytesRate });
    renderTables(stats, inRates, outRate, bytesRate, prev);
    redrawCharts();
    previous = stats;
  }

  function renderKpis(stats, prev, rates) {
    var conns = stats.connections || {};
    var subscribers = ['market-data', 'trading-signals', 'notifications', 'stream'].reduce(function (s, k) { return s + (num(conns[k]) || 0); }, 0);
    $('kpi-uptime').textContent = fmtUptime(stats.uptime_s);
    $('kpi-mode').textContent = 'mode ' + (stats.mode || '–');
    $('kpi-conns').textContent = fmtCount(subscribers);
    $('kpi-conns-sub').textContent = 'subscribers · ' + fmtCount(num(conns.ingest) || 0) + ' ingest';
    $('kpi-in').textContent = rates.inRate === null ? '–' : fmtCount(rates.inRate);
    var refused = (num(stats.rejected_publishes) || 0) + (num(stats.rate_limited_publishes) || 0);
    $('kpi-in-total').textContent = fmtCount(totalIn(stats)) + ' total · ' + fmtCount(refused) + ' refused';
    $('kpi-out').textContent = rates.outRate === null ? '–' : fmtCount(rates.outRate);
    $('kpi-out-total').textContent = fmtCount(stats.messages_out) + ' total';
    $('kpi-bytes').textContent = rates.bytesRate === null ? '–' : fmtBytes(rates.bytesRate);
    $('kpi-bytes-total').textContent = fmtBytes(stats.bytes_out) + ' total';
    var write = latency((stats.latency_us || {}).publish_to_write);
    $('kpi-p99').textContent = fmtMicros(write.p99);
    $('kpi-p50').textContent = write.p50 === undefined ? 'no socket writes yet' : 'p50 ' + fmtMicros(write.p50) + ' · max ' + fmtMicros(write.max);
    // A lagging market-data subscriber is first conflated (its queued ticks
    // of a symbol merged into the newest), and cut (4002) only if that is
    // not enough: the two counters belong side by side.
    $('kpi-slow').textContent = fmtCount(stats.slow_consumer_cuts);
    $('kpi-conflated').textContent = fmtCount(stats.conflated_frames);
    var delta = function (key) { return prev ? Math.max(0, (num(stats[key]) || 0) - (num(prev[key]) || 0)) : 0; };
    var cutsDelta = delta('slow_consumer_cuts');
    var conflatedDelta = delta('conflated_frames');
    var slowCard = $('kpi-slow-card');
    slowCard.classList.toggle('alert', cutsDelta > 0);
    slowCard.classList.toggle('warn', cutsDelta === 0 && conflatedDelta > 0);
    $('kpi-slow-sub').textContent = cutsDelta > 0 || conflatedDelta > 0
      ? 'last second: +' + fmtCount(cutsDelta) + ' cut · +' + fmtCount(conflatedDelta) + ' conflated'
      : 'none in the last second';

    var redis = stats.redis || {};
    var redisText = !redis.configured ? 'off' : redis.connected ? 'connected' : 'down';
    $('kpi-redis').textContent = redisText;
    $('kpi-redis').className = 'value ' + (!redis.configured ? '' : redis.connected ? 'up' : 'down');
    var pill = $('redis-pill');
    pill.textContent = redisText;
    pill.className = 'pill ' + (!redis.configured ? '' : redis.connected ? 'good' : 'bad');
    renderNodes(redis);
  }

  // The cluster's nodes as Redis heartbeats report them, this node first and
  // marked. This node is shown even while its own heartbeat is not heard
  // (Redis down), flagged so.
  var nodesKey = null;
  function renderNodes(redis) {
    var heard = Array.isArray(redis.nodes) ? redis.nodes.map(String) : [];
    var self = typeof redis.node_id === 'string' ? redis.node_id : null;
    var others = heard.filter(function (n) { return n !== self; }).sort();
    var count = heard.length + (self && heard.indexOf(self) < 0 ? 1 : 0);
    $('kpi-redis-sub').textContent = redis.configured ? count + ' node' + (count === 1 ? '' : 's') + ' in the cluster' : 'embedded mode';
    var rows = (self ? [{ id: self, self: true, heard: heard.indexOf(self) >= 0 }] : [])
      .concat(others.map(function (n) { return { id: n, self: false, heard: true }; }));
    var key = JSON.stringify(rows);
    if (key !== nodesKey) {
      nodesKey = key;
      var list = $('redis-nodes');
      list.replaceChildren.apply(list, rows.map(function (n) {
        var li = el('li');
        li.setAttribute('data-node-id', n.id);
        if (n.self) li.setAttribute('data-self', '');
        li.appendChild(el('span', 'dot ' + (n.heard ? 'up' : 'down')));
        li.appendChild(el('span', 'mono id', n.id));
        if (n.self) li.appendChild(el('span', 'pill info', 'this node'));
        if (!n.heard) li.appendChild(el('span', 'pill bad', 'no heartbeat'));
        return li;
      }));
    }
    $('redis-empty').hidden = rows.length > 0;
    $('redis-hint').hidden = !redis.configured;
    $('redis-empty').textContent = redis.configured ? 'No nodes heard from yet.' : 'Embedded mode: no Redis configured.';
  }

  function renderTables(stats, inRates, outRate, bytesRate, prev) {
    var conns = stats.connections || {};
    var connRows = $('conn-rows');
    connRows.replaceChildren.apply(connRows, ENDPOINTS.map(function (name) {
      var label = name === 'ingest' ? 'ingest (publishers)' : name === 'stream' ? '/ws/stream/ (one socket for all)' : '/ws/' + name + '/';
      return row([label, fmtCount(num(conns[name]) || 0)],
        { 'data-endpoint': name, 'data-value': String(num(conns[name]) || 0) });
    }));

    var lat = stats.latency_us || {};
    var latRows = $('lat-rows');
    var enqueue = latency(lat.publish_to_enqueue);
    var write = latency(lat.publish_to_write);
    latRows.replaceChildren.apply(latRows, [['p50', 'p50'], ['p90', 'p90'], ['p99', 'p99'], ['p999', 'p99.9'], ['max', 'max']].map(function (pair) {
      return row([pair[1], fmtMicros(enqueue[pair[0]]), fmtMicros(write[pair[0]])], { 'data-percentile': pair[0] });
    }));

    var msgsIn = stats.messages_in || {};
    var rateText = function (r) { return r === null ? '–' : fmtCount(r); };
    var rows = IN_TYPES.map(function (type, i) {
      return row(['in: ' + type, fmtCount(num(msgsIn[type]) || 0), rateText(inRates[i])], { 'data-counter': type });
    });
    rows.push(row(['out: messages', fmtCount(stats.messages_out), rateText(outRate)], { 'data-counter': 'messages_out' }));
    rows.push(row(['out: bytes', fmtBytes(stats.bytes_out), bytesRate === null ? '–' : fmtBytes(bytesRate)], { 'data-counter': 'bytes_out' }));
    // Version 1.1: frames by format, and what permessage-deflate saved.
    var byFormat = stats.messages_out_by_format || {};
    ['json', 'msgpack'].forEach(function (format) {
      var prevFormat = prev && prev.messages_out_by_format ? prev.messages_out_by_format[format] : undefined;
      var perSecond = prev ? rate(byFormat[format], prevFormat, stats.uptime_s - prev.uptime_s) : null;
      rows.push(row(['out: ' + (format === 'json' ? 'JSON' : 'MessagePack') + ' frames', fmtCount(num(byFormat[format]) || 0), rateText(perSecond)],
        { 'data-counter': 'messages_out_' + format }));
    });
    var plainBytes = num(stats.bytes_out_uncompressed) || 0;
    var saved = plainBytes > 0 ? Math.round(100 * (1 - (num(stats.bytes_out) || 0) / plainBytes)) + '% saved' : '–';
    rows.push(row(['out: bytes before compression', fmtBytes(plainBytes), saved], { 'data-counter': 'bytes_out_uncompressed' }));
    rows.push(row(['frames compressed (once each)', fmtCount(num(stats.frames_compressed) || 0), '–'], { 'data-counter': 'frames_compressed' }));
    [
      ['slow-consumer cuts', 'slow_consumer_cuts'],
      ['conflated frames', 'conflated_frames'],
      ['rejected publishes', 'rejected_publishes'],
      ['rate-limited publishes', 'rate_limited_publishes'],
      ['rate-limited commands', 'rate_limited_commands']
    ].forEach(function (pair) {
      var key = pair[1];
      var perSecond = prev ? rate(stats[key], prev[key], stats.uptime_s - prev.uptime_s) : null;
      rows.push(row([pair[0], fmtCount(num(stats[key]) || 0), rateText(perSecond)], { 'data-counter': key }));
    });
    var msgRows = $('msg-rows');
    msgRows.replaceChildren.apply(msgRows, rows);
  }

  // ---- polling ---------------------------------------------------------------

  function setFeed(status, text) {
    var pill = $('feed-status');
    pill.setAttribute('data-status', status);
    pill.textContent = text;
  }

  function showError(text) {
    var banner = $('banner');
    banner.hidden = !text;
    banner.textContent = text || '';
  }

  var chain = 0;
  var samples = 0;
  function poll(generation) {
    if (paused || generation !== chain) return;
    var started = Date.now();
    fetch('/api/stats', { cache: 'no-store', headers: { Accept: 'application/json' } }).then(function (res) {
      if (!res.ok) throw new Error('GET /api/stats answered HTTP ' + res.status);
      return res.json();
    }).then(function (stats) {
      ingest(stats);
      setFeed('open', 'live');
      $('feed-status').setAttribute('data-samples', String(++samples));
      showError(null);
      $('last-update').textContent = 'updated ' + new Date().toTimeString().slice(0, 8);
    }).catch(function (err) {
      setFeed('closed', 'offline');
      showError('Stats unavailable: ' + (err && err.message || err) + '. Retrying every second.');
      // A gap in the charts rather than a line drawn across the outage.
      previous = null;
    }).then(function () {
      setTimeout(function () { poll(generation); }, Math.max(0, POLL_MS - (Date.now() - started)));
    });
  }

  // Hidden tabs skip polls; on return the first sample is a new baseline.
  document.addEventListener('visibilitychange', function () {
    paused = document.hidden;
    if (!paused) { previous = null; chain++; poll(chain); }
  });

  poll(chain);
})();
