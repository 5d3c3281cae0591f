/*!
 * tickwire browser client: market data, trading signals and notifications
 * over WebSockets, with resume-by-seq, reconnect and a polling fallback.
 * No dependencies. Wire contract: PROTOCOL.md (version 1.1).
 *
 * Loading
 *   <script src="/static/js/websocket_client.js"></script>
 *       sets window.websocketClient (a ready instance) and window.TickwireClient
 *       (the class, for a second independent instance).
 *   import { websocketClient, TickwireClient } from '/static/js/websocket_client.mjs';
 *       the .mjs wrapper imports this file for its side effect and re-exports
 *       the same two globals. Loading both ways on one page gives one instance:
 *       a second evaluation of this file keeps the globals it finds.
 *
 * Configuration (all optional; configure() may be called again at any time,
 * a new token or URL is used from the next connection attempt on)
 *   websocketClient.configure({
 *     baseUrl: location.origin,   // http(s)://host:port of the server, for HTTP
 *     wsBaseUrl: null,            // ws(s)://host:port; null derives it from baseUrl
 *     token: null,                // string, or () => string | Promise<string>;
 *                                 // asked before every connection attempt and
 *                                 // every poll, so it can be renewed (return a
 *                                 // cached token while it is valid). Sent as the
 *                                 // `token` query parameter of the socket and
 *                                 // as `Authorization: Bearer` when polling.
 *     maxReconnectAttempts: 5,    // failed attempts in a row before `fallback`
 *     reconnectBaseMs: 500,       // backoff: min(max, base * 2^n), equal jitter
 *     reconnectMaxMs: 10000,
 *     connectTimeoutMs: 10000,    // an attempt still not open by then has failed
 *     stableMs: 5000,             // a socket open this long resets the attempt count
 *     pollIntervalMs: 2000,       // HTTP polling period while in fallback
 *     socketRetryMs: 15000,       // while polling, try the socket again this often
 *     heartbeatMs: 25000,         // send {"type":"ping"} after this much silence (0: off)
 *     pongTimeoutMs: 10000,       // no answer to that ping by then: reconnect
 *     maxFrequency: null,         // market data: ask the server to conflate (updates/s)
 *     multiplex: false,           // true: one socket (/ws/stream/) for every kind
 *                                 // connected, each behaving as on its own socket;
 *                                 // kinds connected in the same tick share the
 *                                 // first attempt, a kind connected later reopens it
 *                                 // (resuming with since, so nothing is lost)
 *     format: 'json',             // 'msgpack': binary MessagePack frames, decoded
 *                                 // with the vendored /static/vendor/msgpack/
 *                                 // (loaded on first use; JSON if it cannot load)
 *     msgpack: null,              // { encode, decode } to use instead of that
 *     WebSocket: globalThis.WebSocket, fetch: globalThis.fetch  // for tests
 *   });
 *
 * Connections: connect(kind) / disconnect(kind), kind one of 'market-data',
 * 'trading-signals', 'notifications'. transport(kind) says how a kind is
 * carried now: { transport: 'socket' | 'multiplex' | 'polling' | 'none',
 * path, format: 'json' | 'msgpack', compression: the socket's negotiated
 * extensions ('' when none) }. State set through subscribeToSymbol,
 * unsubscribeFromSymbol and filterSignals is kept by the client and sent
 * again, with `since`, on every (re)connection, so calls may come before
 * connect(). markNotificationRead is queued while the socket is down.
 *
 * Events: on(type, handler) returns a function that removes the handler;
 * off(type, handler) does the same. handler(message, meta), where meta is
 * { kind, via: 'socket' | 'poll' }. Types: every server message type
 * (market_update, subscribed, unsubscribed, new_signal, signal_update,
 * filtered, new_notification, notification_read, unread_notifications, pong,
 * error, reset), '*' for all of them, and the client's own:
 *   open         { kind, resumed, fromFallback }
 *   close        { kind, code, reason, wasClean, willReconnect, delayMs }
 *   reconnecting { kind, attempt, delayMs, polling }
 *   fallback     { kind, attempts }   sockets failed; polling HTTP from now on
 *   status       { kind, status, previous }  idle | connecting | open |
 *                                     reconnecting | polling | closed
 *
 * Ordering: every stream message carries `seq` (one stream per symbol, one
 * for all signals, one per user's notifications). The client remembers the
 * last seq of each stream and drops any message at or below it, so a page
 * never shows a message twice, whether it came by socket, by replay after a
 * reconnect, or by polling. A `reset` message moves the stream's base to the
 * oldest seq the server still has; it is emitted so the page can reload.
 *
 * Close codes: 1000 closed by us (no reconnect); 1001 server going away and
 * abnormal closes (backoff); 4001 token expired (ask the token function,
 * reconnect at once); 4002 too slow a consumer (reconnect at once, resume with
 * since); 1008 policy / rate limit (backoff from a longer first delay);
 * 1003 / 1007 / 1009 protocol errors (a warning, then backoff).
 */
(function (root, factory) {
  'use strict';
  if (root && root.TickwireClient && root.websocketClient) return;
  var api = factory(root);
  if (root) {
    root.TickwireClient = api.TickwireClient;
    root.websocketClient = api.websocketClient;
  }
  if (typeof module === 'object' && module && module.exports) module.exports = api;
})(typeof globalThis !== 'undefined' ? globalThis : this, function (root) {
  'use strict';

  var KINDS = {
    'market-data': '/ws/market-data/',
    'trading-signals': '/ws/trading-signals/',
    'notifications': '/ws/notifications/'
  };

  var STREAM_PATH = '/ws/stream/';
  var MSGPACK_PATH = '/static/vendor/msgpack/msgpack.min.js';

  // Which kind a message of the one socket belongs to (PROTOCOL.md 5.1:
  // `type` says it; `reset` names its stream).
  function kindOfMessage(msg) {
    switch (msg.type) {
      case 'market_update': case 'subscribed': case 'unsubscribed': return 'market-data';
      case 'new_signal': case 'signal_update': case 'filtered': return 'trading-signals';
      case 'new_notification': case 'notification_read': case 'unread_notifications': return 'notifications';
      case 'reset':
        if (msg.stream === SIGNALS_STREAM) return 'trading-signals';
        if (msg.stream === NOTIFICATIONS_STREAM) return 'notifications';
        return 'market-data';
      default: return null;
    }
  }

  var DEFAULTS = {
    baseUrl: null,
    wsBaseUrl: null,
    token: null,
    maxReconnectAttempts: 5,
    reconnectBaseMs: 500,
    reconnectMaxMs: 10000,
    connectTimeoutMs: 10000,
    stableMs: 5000,
    pollIntervalMs: 2000,
    socketRetryMs: 15000,
    heartbeatMs: 25000,
    pongTimeoutMs: 10000,
    maxFrequency: null,
    multiplex: false,
    format: 'json',
    msgpack: null,
    WebSocket: null,
    fetch: null
  };

  var CLOSE_NORMAL = 1000;
  var CLOSE_GOING_AWAY = 1001;
  var CLOSE_UNSUPPORTED = 1003;
  var CLOSE_INVALID_DATA = 1007;
  var CLOSE_POLICY = 1008;
  var CLOSE_TOO_BIG = 1009;
  var CLOSE_TOKEN_EXPIRED = 4001;
  var CLOSE_SLOW_CONSUMER = 4002;

  var SIGNALS_STREAM = 'signals';
  var NOTIFICATIONS_STREAM = 'notifications';

  function streamOf(msg) {
    switch (msg.type) {
      case 'market_update': return typeof msg.symbol === 'string' ? 'symbol:' + msg.symbol : null;
      case 'new_signal':
      case 'signal_update': return SIGNALS_STREAM;
      case 'new_notification': return NOTIFICATIONS_STREAM;
      default: return null;
    }
  }

  // The stream a `reset` names: on the market-data socket always a symbol
  // (even one called "signals"); elsewhere that endpoint's one stream.
  function resetStreamKey(name, kind) {
    if (kind === 'trading-signals') return SIGNALS_STREAM;
    if (kind === 'notifications') return NOTIFICATIONS_STREAM;
    if (kind === undefined && (name === SIGNALS_STREAM || name === NOTIFICATIONS_STREAM)) return name;
    return 'symbol:' + name;
  }

  function nullable(value) {
    return value === undefined || value === null || value === '' ? null : value;
  }

  function TickwireClient(options) {
    this._options = {};
    this._handlers = Object.create(null);
    this._lastSeq = new Map();
    this._symbols = new Set();
    this._signalFilter = null;
    this._pendingReads = [];
    this._stats = { received: 0, duplicatesDropped: 0, resets: 0, polls: 0, lastPollError: null };
    this._conns = Object.create(null);
    for (var kind in KINDS) this._conns[kind] = this._newConn(kind);
    // The one socket of multiplex mode; `carried` are the kinds in its URL.
    this._mux = this._newConn('stream');
    this._mux.path = STREAM_PATH;
    this._mux.carried = [];
    this._muxSyncQueued = false;
    this._codecLoading = null;
    this.configure(Object.assign({}, DEFAULTS, options || {}));
  }

  TickwireClient.KINDS = Object.keys(KINDS);
  TickwireClient.prototype.KINDS = TickwireClient.KINDS;

  TickwireClient.prototype._newConn = function (kind) {
    return {
      kind: kind,
      path: KINDS[kind],
      wanted: false,
      status: 'idle',
      ws: null,
      attempts: 0,
      openedAt: 0,
      everOpened: false,
      polling: false,
      reconnectTimer: null,
      connectTimer: null,
      pollTimer: null,
      retryTimer: null,
      heartbeatTimer: null,
      pongTimer: null,
      lastTrafficAt: 0,
      nextDelayOverride: null
    };
  };

  TickwireClient.prototype.configure = function (options) {
    var opts = this._options;
    for (var key in options) {
      if (Object.prototype.hasOwnProperty.call(options, key)) opts[key] = options[key];
    }
    return this;
  };

  TickwireClient.prototype.options = function () {
    return Object.assign({}, this._options);
  };

  // ---- events -------------------------------------------------------------

  TickwireClient.prototype.on = function (type, handler) {
    var set = this._handlers[type] || (this._handlers[type] = new Set());
    set.add(handler);
    var self = this;
    return function () { self.off(type, handler); };
  };

  TickwireClient.prototype.off = function (type, handler) {
    var set = this._handlers[type];
    if (!set) return;
    if (handler === undefined) set.clear(); else set.delete(handler);
  };

  TickwireClient.prototype._emit = function (type, payload, meta) {
    var lists = [this._handlers[type]];
    if (meta && meta.via) lists.push(this._handlers['*']);
    for (var i = 0; i < lists.length; i++) {
      if (!lists[i]) continue;
      Array.from(lists[i]).forEach(function (handler) {
        try {
          handler(payload, meta);
        } catch (err) {
          // A page's handler bug must not break delivery to the other handlers.
          setTimeout(function () { throw err; }, 0);
        }
      });
    }
  };

  // ---- public commands ----------------------------------------------------

  TickwireClient.prototype.connect = function (kind) {
    var conn = this._conn(kind);
    if (conn.wanted && conn.status !== 'closed') return;
    conn.wanted = true;
    conn.attempts = 0;
    if (this._options.multiplex) {
      this._setStatus(conn, 'connecting');
      this._queueMuxSync();
      return;
    }
    this._open(conn, false);
  };

  // ---- the one socket (multiplex) ------------------------------------------

  // The kinds a socket serves: its own, or the wanted kinds the one socket carries.
  TickwireClient.prototype._kindConns = function (conn) {
    if (conn !== this._mux) return [conn];
    var self = this;
    return conn.carried.map(function (k) { return self._conns[k]; }).filter(function (c) { return c.wanted; });
  };

  // Kinds connected in one tick share one socket: the sync runs after them.
  TickwireClient.prototype._queueMuxSync = function () {
    if (this._muxSyncQueued) return;
    this._muxSyncQueued = true;
    var self = this;
    setTimeout(function () { self._muxSyncQueued = false; self._muxSync(); }, 0);
  };

  // Opens the one socket for the wanted kinds, or reopens it when a kind it
  // does not carry is wanted (the kinds it carries resume with since).
  TickwireClient.prototype._muxSync = function () {
    var self = this;
    var mux = this._mux;
    var wanted = TickwireClient.KINDS.filter(function (k) { return self._conns[k].wanted; });
    if (!wanted.length) { this._closeMux(); return; }
    var missing = wanted.filter(function (k) { return mux.carried.indexOf(k) < 0; });
    if (mux.wanted && !missing.length) return;
    mux.carried = wanted;
    mux.wanted = true;
    if (mux.polling) {
      // Falling back already: the new kinds poll too; the socket retry carries them.
      missing.forEach(function (k) { var c = self._conns[k]; c.polling = true; self._setStatus(c, 'polling'); self._pollNow(c); });
      return;
    }
    var ws = mux.ws;
    mux.ws = null;
    this._clearTimers(mux);
    if (ws) {
      this._detach(ws);
      try { ws.close(CLOSE_NORMAL, 'streams changed'); } catch (_) { /* already closed */ }
    }
    mux.attempts = 0;
    this._open(mux, false);
  };

  TickwireClient.prototype._closeMux = function () {
    var mux = this._mux;
    mux.wanted = false;
    mux.carried = [];
    this._clearTimers(mux);
    this._stopPolling(mux);
    var ws = mux.ws;
    mux.ws = null;
    if (ws) {
      this._detach(ws);
      try { ws.close(CLOSE_NORMAL, 'client disconnect'); } catch (_) { /* already closed */ }
    }
    mux.status = 'closed';
  };

  // How a kind is carried now (for pages that show it).
  TickwireClient.prototype.transport = function (kind) {
    var conn = this._conn(kind);
    var sock = this._options.multiplex ? this._mux : conn;
    var carried = sock === conn || sock.carried.indexOf(kind) >= 0;
    var open = conn.wanted && carried && sock.status === 'open' && sock.ws;
    return {
      transport: conn.polling ? 'polling' : open ? (sock === conn ? 'socket' : 'multiplex') : 'none',
      path: open ? sock.path + (sock === conn ? '' : '?streams=' + sock.carried.join(',')) : null,
      format: open ? (sock.codec ? 'msgpack' : 'json') : null,
      compression: open ? String(sock.ws.extensions || '') : null
    };
  };

  TickwireClient.prototype.disconnect = function (kind) {
    var conn = this._conn(kind);
    var wasActive = conn.wanted;
    conn.wanted = false;
    if (this._options.multiplex) {
      // The one socket stays for the other kinds (what it still sends of this
      // one is dropped); with none left it closes.
      this._stopPolling(conn);
      if (!TickwireClient.KINDS.some(function (k) { return this._conns[k].wanted; }, this)) this._closeMux();
      this._setStatus(conn, 'closed');
      if (wasActive) {
        this._emit('close', { kind: kind, code: CLOSE_NORMAL, reason: 'client disconnect',
          wasClean: true, willReconnect: false, delayMs: null });
      }
      return;
    }
    this._clearTimers(conn);
    this._stopPolling(conn);
    var ws = conn.ws;
    conn.ws = null;
    if (ws) {
      this._detach(ws);
      try { ws.close(CLOSE_NORMAL, 'client disconnect'); } catch (_) { /* already closed */ }
    }
    this._setStatus(conn, 'closed');
    if (wasActive) {
      this._emit('close', { kind: kind, code: CLOSE_NORMAL, reason: 'client disconnect',
        wasClean: true, willReconnect: false, delayMs: null });
    }
  };

  TickwireClient.prototype.status = function (kind) {
    return this._conn(kind).status;
  };

  TickwireClient.prototype.isPolling = function (kind) {
    return this._conn(kind).polling;
  };

  TickwireClient.prototype.subscribeToSymbol = function (symbol) {
    if (typeof symbol !== 'string' || symbol === '') throw new TypeError('symbol must be a non-empty string');
    this._symbols.add(symbol);
    var cmd = { type: 'subscribe', symbols: [symbol] };
    var since = this._lastSeq.get('symbol:' + symbol);
    if (since) cmd.since = {}, cmd.since[symbol] = since;
    if (this._options.maxFrequency) cmd.max_frequency = this._options.maxFrequency;
    var sent = this._sendIfOpen('market-data', cmd);
    if (!sent && this._conn('market-data').polling) this._pollNow(this._conn('market-data'));
    return sent;
  };

  TickwireClient.prototype.unsubscribeFromSymbol = function (symbol) {
    this._symbols.delete(symbol);
    // Forget its position: a later subscribe starts from the latest update,
    // not from a replay of everything missed in between.
    this._lastSeq.delete('symbol:' + symbol);
    return this._sendIfOpen('market-data', { type: 'unsubscribe', symbols: [symbol] });
  };

  TickwireClient.prototype.subscriptions = function () {
    return Array.from(this._symbols);
  };

  TickwireClient.prototype.filterSignals = function (symbol, signalType) {
    this._signalFilter = { symbol: nullable(symbol), signal_type: nullable(signalType) };
    var sent = this._sendIfOpen('trading-signals', {
      type: 'filter', symbol: this._signalFilter.symbol, signal_type: this._signalFilter.signal_type
    });
    if (!sent) {
      var conn = this._conn('trading-signals');
      if (conn.polling) this._pollNow(conn);
    }
    return sent;
  };

  TickwireClient.prototype.signalFilter = function () {
    return this._signalFilter ? Object.assign({}, this._signalFilter) : { symbol: null, signal_type: null };
  };

  TickwireClient.prototype.markNotificationRead = function (notificationId) {
    var cmd = { type: 'mark_read', notification_id: String(notificationId) };
    if (this._sendIfOpen('notifications', cmd)) return true;
    this._pendingReads.push(cmd);
    return false;
  };

  TickwireClient.prototype.ping = function (kind) {
    return this._sendIfOpen(kind, { type: 'ping' });
  };

  TickwireClient.prototype.send = function (kind, command) {
    return this._sendIfOpen(kind, command);
  };

  TickwireClient.prototype.lastSeq = function (stream) {
    if (stream === undefined) {
      var out = {};
      this._lastSeq.forEach(function (seq, key) {
        out[key.indexOf('symbol:') === 0 ? key.slice(7) : key] = seq;
      });
      return out;
    }
    return this._lastSeq.get(resetStreamKey(stream)) || 0;
  };

  TickwireClient.prototype.stats = function () {
    return Object.assign({}, this._stats);
  };

  // ---- sockets ------------------------------------------------------------

  TickwireClient.prototype._conn = function (kind) {
    var conn = this._conns[kind];
    if (!conn) throw new Error('unknown endpoint kind: ' + kind + ' (expected one of ' + TickwireClient.KINDS.join(', ') + ')');
    return conn;
  };

  TickwireClient.prototype._baseUrl = function () {
    if (this._options.baseUrl) return String(this._options.baseUrl).replace(/\/+$/, '');
    if (root && root.location && root.location.origin && root.location.origin !== 'null') return root.location.origin;
    return 'http://127.0.0.1:8000';
  };

  TickwireClient.prototype._wsBaseUrl = function () {
    if (this._options.wsBaseUrl) return String(this._options.wsBaseUrl).replace(/\/+$/, '');
    return this._baseUrl().replace(/^http/, 'ws');
  };

  TickwireClient.prototype._token = function () {
    var token = this._options.token;
    try {
      return Promise.resolve(typeof token === 'function' ? token() : token);
    } catch (err) {
      return Promise.reject(err);
    }
  };

  TickwireClient.prototype._open = function (conn, fromFallback) {
    var self = this;
    var WS = this._options.WebSocket || (root && root.WebSocket);
    if (!WS) {
      this._enterFallback(conn);
      return;
    }
    this._setStatus(conn, conn.polling ? 'polling' : (conn.everOpened || conn.attempts > 0 ? 'reconnecting' : 'connecting'));
    var attemptId = {};
    conn.attemptId = attemptId;
    Promise.all([this._token(), this._ensureCodec()]).then(function (got) {
      var token = got[0];
      var codec = got[1];
      if (!conn.wanted || conn.attemptId !== attemptId) return;
      var query = [];
      if (token) query.push('token=' + encodeURIComponent(token));
      if (conn === self._mux) query.push('streams=' + conn.carried.join(','));
      if (codec) query.push('format=msgpack');
      var url = self._wsBaseUrl() + conn.path + (query.length ? '?' + query.join('&') : '');
      var ws;
      try {
        ws = new WS(url);
        if (codec) ws.binaryType = 'arraybuffer';
        conn.codec = codec;
      } catch (err) {
        self._onSocketGone(conn, null, { code: 1006, reason: String(err && err.message || err), wasClean: false });
        return;
      }
      conn.ws = ws;
      conn.openedAt = 0;
      conn.connectTimer = setTimeout(function () {
        if (conn.ws === ws && !conn.openedAt) {
          self._detach(ws);
          try { ws.close(); } catch (_) { /* never opened */ }
          self._onSocketGone(conn, ws, { code: 1006, reason: 'connect timeout', wasClean: false });
        }
      }, self._options.connectTimeoutMs);
      ws.onopen = function () { if (conn.ws === ws) self._onSocketOpen(conn, fromFallback); };
      ws.onmessage = function (ev) { if (conn.ws === ws) self._onSocketMessage(conn, ev.data); };
      ws.onclose = function (ev) {
        if (conn.ws === ws) self._onSocketGone(conn, ws, { code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
      };
      ws.onerror = function () { /* always followed by close */ };
    }, function (err) {
      if (!conn.wanted || conn.attemptId !== attemptId) return;
      self._onSocketGone(conn, null, { code: 1006, reason: 'token: ' + (err && err.message || err), wasClean: false });
    });
  };

  // The MessagePack codec when format is 'msgpack': the configured one, the
  // page's MessagePack global, or the vendored build loaded once from the
  // server. Resolves null for JSON (and, with a warning, when none loads).
  TickwireClient.prototype._codec = function () {
    var c = this._options.msgpack || (root && root.MessagePack);
    return c && typeof c.decode === 'function' && typeof c.encode === 'function' ? c : null;
  };

  TickwireClient.prototype._ensureCodec = function () {
    if (this._options.format !== 'msgpack') return Promise.resolve(null);
    var codec = this._codec();
    if (codec) return Promise.resolve(codec);
    var self = this;
    var doc = root && root.document;
    if (!this._codecLoading) {
      this._codecLoading = new Promise(function (resolve) {
        if (!doc || !doc.createElement) { resolve(null); return; }
        var script = doc.createElement('script');
        script.src = self._baseUrl() + MSGPACK_PATH;
        script.onload = function () { resolve(self._codec()); };
        script.onerror = function () { resolve(null); };
        (doc.head || doc.documentElement).appendChild(script);
      }).then(function (c) {
        if (!c) {
          self._codecLoading = null;
          if (root && root.console) root.console.warn('tickwire: no MessagePack codec (' + MSGPACK_PATH + '); using JSON');
        }
        return c;
      });
    }
    return this._codecLoading;
  };

  TickwireClient.prototype._detach = function (ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  };

  TickwireClient.prototype._onSocketOpen = function (conn, fromFallback) {
    clearTimeout(conn.connectTimer);
    conn.connectTimer = null;
    var kinds = this._kindConns(conn);
    var resumed = kinds.map(function (c) { return c.everOpened; });
    var wasPolling = conn.polling;
    conn.openedAt = Date.now();
    conn.everOpened = true;
    kinds.forEach(function (c) { c.everOpened = true; });
    this._stopPolling(conn);
    this._setStatus(conn, 'open');
    this._resendState(conn);
    this._startHeartbeat(conn);
    for (var i = 0; i < kinds.length; i++) {
      this._emit('open', { kind: kinds[i].kind, resumed: resumed[i], fromFallback: !!(fromFallback || wasPolling),
        multiplexed: conn === this._mux });
    }
  };

  // Sends a socket's state again, for each kind it serves.
  TickwireClient.prototype._resendState = function (conn) {
    var kinds = this._kindConns(conn);
    for (var i = 0; i < kinds.length; i++) this._resendKind(kinds[i].kind, conn);
  };

  TickwireClient.prototype._resendKind = function (kind, conn) {
    if (kind === 'market-data' && this._symbols.size) {
      var symbols = Array.from(this._symbols);
      var cmd = { type: 'subscribe', symbols: symbols };
      var since = {};
      var any = false;
      for (var i = 0; i < symbols.length; i++) {
        var seq = this._lastSeq.get('symbol:' + symbols[i]);
        if (seq) { since[symbols[i]] = seq; any = true; }
      }
      if (any) cmd.since = since;
      if (this._options.maxFrequency) cmd.max_frequency = this._options.maxFrequency;
      this._sendRaw(conn, cmd);
    } else if (kind === 'trading-signals') {
      var seqSignals = this._lastSeq.get(SIGNALS_STREAM);
      if (this._signalFilter || seqSignals) {
        var filter = this._signalFilter || { symbol: null, signal_type: null };
        var fcmd = { type: 'filter', symbol: filter.symbol, signal_type: filter.signal_type };
        if (seqSignals) fcmd.since = seqSignals;
        this._sendRaw(conn, fcmd);
      }
    } else if (kind === 'notifications') {
      var pending = this._pendingReads;
      this._pendingReads = [];
      for (var j = 0; j < pending.length; j++) this._sendRaw(conn, pending[j]);
    }
  };

  TickwireClient.prototype._sendIfOpen = function (kind, cmd) {
    var conn = this._conn(kind);
    if (this._options.multiplex) {
      var mux = this._mux;
      if (!conn.wanted || mux.carried.indexOf(kind) < 0 || mux.status !== 'open' || !mux.ws) return false;
      // Answers without a kind of their own (pong, error) go to the asker.
      mux.lastAsker = kind;
      return this._sendRaw(mux, cmd);
    }
    if (conn.status !== 'open' || !conn.ws) return false;
    return this._sendRaw(conn, cmd);
  };

  TickwireClient.prototype._sendRaw = function (conn, cmd) {
    try {
      conn.ws.send(conn.codec ? conn.codec.encode(cmd) : JSON.stringify(cmd));
      return true;
    } catch (_) {
      return false;
    }
  };

  TickwireClient.prototype._onSocketMessage = function (conn, data) {
    conn.lastTrafficAt = Date.now();
    if (conn.pongTimer) { clearTimeout(conn.pongTimer); conn.pongTimer = null; }
    var parsed;
    try {
      if (typeof data === 'string') parsed = JSON.parse(data);
      else if (conn.codec) parsed = conn.codec.decode(new Uint8Array(data));
      else return;
    } catch (_) {
      return;
    }
    var list = Array.isArray(parsed) ? parsed : [parsed];
    for (var i = 0; i < list.length; i++) {
      var msg = list[i];
      if (!msg || typeof msg !== 'object') continue;
      var kind = conn.kind;
      if (conn === this._mux) {
        kind = kindOfMessage(msg) || conn.lastAsker || conn.carried[0];
        // A kind disconnected while the socket stays for the others.
        if (!this._conns[kind] || !this._conns[kind].wanted) continue;
      }
      this._deliver(msg, { kind: kind, via: 'socket', multiplexed: conn === this._mux });
    }
  };

  TickwireClient.prototype._deliver = function (msg, meta) {
    var type = msg.type;
    if (typeof type !== 'string') return;
    if (type === 'reset') {
      var key = resetStreamKey(String(msg.stream), meta.kind);
      var base = typeof msg.seq === 'number' ? Math.max(0, msg.seq - 1) : 0;
      this._lastSeq.set(key, base);
      this._stats.resets++;
      this._emit('reset', msg, meta);
      return;
    }
    if (type === 'unread_notifications') {
      var fresh = [];
      var notes = Array.isArray(msg.notifications) ? msg.notifications : [];
      for (var i = 0; i < notes.length; i++) {
        if (this._accept(notes[i], meta.via)) fresh.push(notes[i]);
      }
      this._emit(type, Object.assign({}, msg, { notifications: fresh }), meta);
      return;
    }
    if (!this._accept(msg, meta.via)) return;
    this._emit(type, msg, meta);
  };

  // True when msg is new for its stream (and records its seq), false for a duplicate.
  TickwireClient.prototype._accept = function (msg, via) {
    if (!msg || typeof msg !== 'object') return false;
    var key = streamOf(msg);
    if (key === null || typeof msg.seq !== 'number') {
      this._stats.received++;
      return true;
    }
    var last = this._lastSeq.get(key) || 0;
    if (msg.seq <= last) {
      // Polling re-reads the latest state on purpose; only a repeat on the
      // socket (a replay overlapping what was seen) is worth counting.
      if (via !== 'poll') this._stats.duplicatesDropped++;
      return false;
    }
    this._lastSeq.set(key, msg.seq);
    this._stats.received++;
    return true;
  };

  TickwireClient.prototype._onSocketGone = function (conn, ws, info) {
    if (ws) this._detach(ws);
    if (conn.ws === ws) conn.ws = null;
    this._clearTimers(conn);
    var code = info.code;
    var openedFor = conn.openedAt ? Date.now() - conn.openedAt : -1;
    var opts = this._options;
    if (openedFor >= opts.stableMs) conn.attempts = 0;
    if (!conn.wanted) return;

    var delay;
    if (code === CLOSE_TOKEN_EXPIRED || code === CLOSE_SLOW_CONSUMER) {
      // Known cause, fixed by reconnecting: with a fresh token, or with
      // `since` after the queue we could not keep up with was dropped.
      delay = openedFor >= 0 && conn.attempts === 0 ? 0 : this._backoff(conn.attempts);
    } else if (code === CLOSE_POLICY) {
      delay = this._backoff(conn.attempts + 2);
    } else {
      if (code === CLOSE_UNSUPPORTED || code === CLOSE_INVALID_DATA || code === CLOSE_TOO_BIG) {
        if (root && root.console) root.console.warn('tickwire: ' + conn.kind + ' closed by the server for a protocol error (' + code + ' ' + (info.reason || '') + ')');
      }
      delay = this._backoff(conn.attempts);
    }

    if (conn.polling) {
      // A socket probe from fallback mode failed; keep polling, try later.
      this._setStatus(conn, 'polling');
      this._emitKinds(conn, 'close', { code: code, reason: info.reason || '', wasClean: !!info.wasClean,
        willReconnect: true, delayMs: opts.socketRetryMs });
      this._scheduleSocketRetry(conn);
      return;
    }

    conn.attempts++;
    if (conn.attempts > opts.maxReconnectAttempts) {
      this._emitKinds(conn, 'close', { code: code, reason: info.reason || '', wasClean: !!info.wasClean,
        willReconnect: false, delayMs: null });
      this._enterFallback(conn);
      return;
    }
    this._emitKinds(conn, 'close', { code: code, reason: info.reason || '', wasClean: !!info.wasClean,
      willReconnect: true, delayMs: delay });
    this._setStatus(conn, 'reconnecting');
    this._emitKinds(conn, 'reconnecting', { attempt: conn.attempts, delayMs: delay, polling: false });
    var self = this;
    conn.reconnectTimer = setTimeout(function () {
      conn.reconnectTimer = null;
      if (conn.wanted && !conn.polling) self._open(conn, false);
    }, delay);
  };

  TickwireClient.prototype._backoff = function (attempt) {
    var opts = this._options;
    var ceiling = Math.min(opts.reconnectMaxMs, opts.reconnectBaseMs * Math.pow(2, attempt));
    return Math.round(ceiling / 2 + Math.random() * ceiling / 2);
  };

  TickwireClient.prototype._startHeartbeat = function (conn) {
    var self = this;
    var every = this._options.heartbeatMs;
    if (!every) return;
    conn.lastTrafficAt = Date.now();
    conn.heartbeatTimer = setInterval(function () {
      if (conn.status !== 'open' || !conn.ws || conn.pongTimer) return;
      if (Date.now() - conn.lastTrafficAt < every) return;
      self._sendRaw(conn, { type: 'ping' });
      var ws = conn.ws;
      conn.pongTimer = setTimeout(function () {
        conn.pongTimer = null;
        if (conn.ws !== ws) return;
        try { ws.close(4000, 'heartbeat timeout'); } catch (_) { /* gone */ }
        self._onSocketGone(conn, ws, { code: 1006, reason: 'heartbeat timeout', wasClean: false });
      }, self._options.pongTimeoutMs);
    }, Math.max(250, Math.floor(every / 2)));
  };

  TickwireClient.prototype._clearTimers = function (conn) {
    clearTimeout(conn.reconnectTimer);
    clearTimeout(conn.connectTimer);
    clearTimeout(conn.retryTimer);
    clearInterval(conn.heartbeatTimer);
    clearTimeout(conn.pongTimer);
    conn.reconnectTimer = conn.connectTimer = conn.retryTimer = conn.heartbeatTimer = conn.pongTimer = null;
  };

  // Emits a socket's event once for each kind it serves.
  TickwireClient.prototype._emitKinds = function (conn, type, payload) {
    var kinds = this._kindConns(conn);
    for (var i = 0; i < kinds.length; i++) this._emit(type, Object.assign({ kind: kinds[i].kind }, payload));
  };

  TickwireClient.prototype._setStatus = function (conn, status) {
    if (conn === this._mux) {
      // The one socket's status is each of its kinds' status.
      conn.status = status;
      var kinds = this._kindConns(conn);
      for (var i = 0; i < kinds.length; i++) this._setStatus(kinds[i], status);
      return;
    }
    if (conn.status === status) return;
    var previous = conn.status;
    conn.status = status;
    this._emit('status', { kind: conn.kind, status: status, previous: previous });
  };

  // ---- polling fallback ---------------------------------------------------

  TickwireClient.prototype._enterFallback = function (conn) {
    var attempts = conn.attempts;
    conn.polling = true;
    conn.attempts = 0;
    var kinds = this._kindConns(conn);
    kinds.forEach(function (c) { c.polling = true; });
    this._setStatus(conn, 'polling');
    this._emitKinds(conn, 'fallback', { attempts: attempts });
    for (var i = 0; i < kinds.length; i++) this._pollNow(kinds[i]);
    if (this._options.WebSocket || (root && root.WebSocket)) this._scheduleSocketRetry(conn);
  };

  TickwireClient.prototype._stopPolling = function (conn) {
    conn.polling = false;
    clearTimeout(conn.pollTimer);
    conn.pollTimer = null;
    if (conn === this._mux) this._kindConns(conn).forEach(this._stopPolling, this);
  };

  TickwireClient.prototype._scheduleSocketRetry = function (conn) {
    var self = this;
    clearTimeout(conn.retryTimer);
    conn.retryTimer = setTimeout(function () {
      conn.retryTimer = null;
      if (!conn.wanted || !conn.polling) return;
      self._emitKinds(conn, 'reconnecting', { attempt: 1, delayMs: 0, polling: true });
      self._open(conn, true);
    }, this._options.socketRetryMs);
  };

  TickwireClient.prototype._pollNow = function (conn) {
    var self = this;
    clearTimeout(conn.pollTimer);
    conn.pollTimer = null;
    var generation = conn.pollGeneration = (conn.pollGeneration || 0) + 1;
    this._pollOnce(conn).then(function () {
      self._stats.lastPollError = null;
    }, function (err) {
      // A failed poll is retried at the next tick; the status already says polling.
      self._stats.lastPollError = String(err && err.message || err);
    }).then(function () {
      if (conn.polling && conn.wanted && conn.pollGeneration === generation) {
        conn.pollTimer = setTimeout(function () { self._pollNow(conn); }, self._options.pollIntervalMs);
      }
    });
  };

  TickwireClient.prototype._fetchJson = function (path, token) {
    var fetchImpl = this._options.fetch || (root && root.fetch && root.fetch.bind(root));
    if (!fetchImpl) return Promise.reject(new Error('no fetch'));
    var headers = { Accept: 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    return fetchImpl(this._baseUrl() + path, { headers: headers, cache: 'no-store' }).then(function (res) {
      if (res.status === 404) return null;
      if (!res.ok) throw new Error('HTTP ' + res.status + ' for ' + path);
      return res.json();
    });
  };

  TickwireClient.prototype._pollOnce = function (conn) {
    var self = this;
    var meta = { kind: conn.kind, via: 'poll' };
    this._stats.polls++;
    return this._token().then(function (token) {
      if (conn.kind === 'market-data') {
        var symbols = Array.from(self._symbols);
        if (!symbols.length) return null;
        if (symbols.length > 4) {
          return self._fetchJson('/api/market', token).then(function (all) {
            (Array.isArray(all) ? all : []).forEach(function (msg) {
              if (msg && self._symbols.has(msg.symbol)) self._deliver(withType(msg, 'market_update'), meta);
            });
          });
        }
        return Promise.all(symbols.map(function (symbol) {
          return self._fetchJson('/api/market/' + encodeURIComponent(symbol), token).then(function (msg) {
            if (msg && self._symbols.has(symbol)) self._deliver(withType(msg, 'market_update'), meta);
          });
        }));
      }
      if (conn.kind === 'trading-signals') {
        var filter = self._signalFilter || { symbol: null, signal_type: null };
        var query = [];
        if (filter.symbol) query.push('symbol=' + encodeURIComponent(filter.symbol));
        if (filter.signal_type) query.push('signal_type=' + encodeURIComponent(filter.signal_type));
        query.push('since=' + (self._lastSeq.get(SIGNALS_STREAM) || 0));
        return self._fetchJson('/api/signals?' + query.join('&'), token).then(function (list) {
          sortBySeq(list).forEach(function (msg) { self._deliver(msg, meta); });
        });
      }
      var since = self._lastSeq.get(NOTIFICATIONS_STREAM) || 0;
      return self._fetchJson('/api/notifications?since=' + since, token).then(function (list) {
        sortBySeq(list).forEach(function (msg) { self._deliver(withType(msg, 'new_notification'), meta); });
      });
    });
  };

  function withType(msg, type) {
    return msg.type ? msg : Object.assign({ type: type }, msg);
  }

  function sortBySeq(list) {
    return (Array.isArray(list) ? list : []).filter(function (m) { return m && typeof m === 'object'; })
      .sort(function (a, b) { return (a.seq || 0) - (b.seq || 0); });
  }

  return {
    TickwireClient: TickwireClient,
    websocketClient: new TickwireClient()
  };
});
