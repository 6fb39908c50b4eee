/*! hubbub.js __HUBBUB_VERSION__ — the browser client of the Hubbub real-time hub. MIT licence.
 *
 * No build step and no dependency. The hub serves this one source twice:
 *   <script src="http://HUB/hubbub.js"></script>      classic script, defines the global `hubbub`
 *   import hubbub from "http://HUB/hubbub.mjs";         ES module (same text plus `export` lines)
 *
 *   const client = hubbub.connect("http://127.0.0.1:8000", {
 *     topics: ["public.chat.lobby"],   // subscribed on every (re)connect
 *     token: "<jwt>",                  // or a function returning one (or a Promise of one)
 *     // getToken: async () => jwt,    // short-lived tokens: asked at every (re)connect, and a
 *                                      // WS is refreshed ahead of exp (SPEC 10, connection lifetime)
 *     transport: "auto",               // "auto" | "ws" | "sse" | "poll"
 *     fastUrl: "http://127.0.0.1:8001" // optional: the native fast port, used for ws and sse
 *   });
 *   client.on("message", (m) => console.log(m.topic, m.id, m.event, m.data));
 *   await client.publish("public.chat.lobby", {text: "hi"});   // resolves with the event id
 *
 * Events: message, reset, dropped, join, leave, notification, notification_deleted,
 * unread_count, connected, disconnected, error, state.
 *
 * The client reconnects by itself after anything but close(), a refused token
 * (4401, unless a token function can hand out a fresh one) and a server-side
 * disconnect (POST /disconnect: a WS close 4000-4999 other than 4408 and 4410,
 * an SSE `disconnect` event, a poll's 410). Those end it: `disconnected` says
 * {code, reason, willReconnect: false} and the state becomes "closed".
 *
 * Delivery guarantees come from the hub (SPEC 5, 6, 10): the client remembers
 * the id of the last message it saw and hands it back on every reconnect, on
 * every transport, so nothing kept in the hub's history is missed or repeated.
 * When the history no longer reaches back that far the hub says `reset` and
 * the page should reload its state. Ids are handed back, never compared: after
 * Redis lost its data a new epoch's ids may sort below the old ones
 * (docs/protocol.md).
 */
var hubbub = (function () {
  "use strict";

  var VERSION = "__HUBBUB_VERSION__";
  var TIERS = ["ws", "sse", "poll"]; // best first: what "auto" falls back through
  // Hub events that are not publications. Over SSE they share the event-name
  // space with publications, so a publication is recognised by its envelope.
  var HUB_EVENTS = ["reset", "dropped", "join", "leave", "notification",
                    "notification_deleted", "unread_count"];
  // A user's inbox events (SPEC 8): they come on every connection of the user,
  // subscribed to anything or not.
  var INBOX_EVENTS = ["notification", "notification_deleted", "unread_count"];

  var TOKEN_EXPIRED = "token expired";  // the hub's reason when a token's exp passed (SPEC 10)
  // A WS is refreshed when this much of its token's lifetime has passed; the
  // rest (and the hub's leeway) covers a slow getToken and the round trip.
  var REFRESH_AT = 0.8;
  var REFRESH_RETRY_MS = 1000;
  // Application close codes (4000-4999) end the client: a backend that
  // disconnects a user (POST /disconnect, 4403 by default) means it to stay
  // away. These ask for a reconnect and resume instead: 4408 slow consumer,
  // 4410 no pong. 4401 has its own rule (see _linkLost).
  var RECONNECT_CODES = [4408, 4410];

  var DEFAULTS = {
    transport: "auto",
    backoffBaseMs: 500,      // first retry waits up to this long...
    backoffMaxMs: 15000,     // ...doubling per failed attempt up to this cap (full jitter below it)
    openTimeoutMs: 8000,     // a transport that has not said hello by then failed to open
    idleTimeoutMs: 45000,    // silence this long means a dead link (the hub pings every HEARTBEAT s)
    pingEveryMs: 20000,      // over WS, ask for a pong after this much silence
    pollTimeoutS: 25,        // long-poll wait, below common proxy timeouts
    upgradeAfterMs: 60000,   // after falling back, try the better transport again this often
    requestTimeoutMs: 10000  // publish / presence answers
  };

  function connect(url, options) {
    return new Client(url, options || {});
  }

  // -- small helpers ---------------------------------------------------------

  function trimSlash(url) {
    return String(url).replace(/\/+$/, "");
  }

  // The exp claim of a JWT (seconds), read without verifying it (the hub
  // verifies); null when it has none or cannot be read.
  function tokenExpiry(token) {
    try {
      var part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      var claims = JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
      return typeof claims.exp === "number" ? claims.exp : null;
    } catch (error) {
      return null;
    }
  }

  // A base URL may be given relative to the page ("" or "/rt"): resolve it.
  function absolute(url) {
    var base = (typeof location !== "undefined") ? location.href : undefined;
    return trimSlash(new URL(url || "/", base).href);
  }

  function wsUrlOf(httpUrl) {
    return httpUrl.replace(/^http(s?):/i, "ws$1:");
  }

  // Filters: an object {"region": "eu", "level": ["high", "critical"]} for WS,
  // the query form "region:eu,level:high|critical" for SSE and poll (SPEC 7).
  function filterQuery(filter) {
    if (filter == null || filter === "") return null;
    if (typeof filter === "string") return filter;
    return Object.keys(filter).map(function (key) {
      var value = filter[key];
      return key + ":" + (Array.isArray(value) ? value.join("|") : value);
    }).join(",");
  }

  function query(params) {
    var parts = [];
    params.forEach(function (pair) {
      if (pair[1] != null && pair[1] !== "") {
        parts.push(encodeURIComponent(pair[0]) + "=" + encodeURIComponent(pair[1]));
      }
    });
    return parts.length ? "?" + parts.join("&") : "";
  }

  // Full jitter (a uniform draw below the exponential cap) spreads a crowd of
  // clients that lost the same hub, so they do not all come back at once.
  function backoffDelay(attempt, baseMs, maxMs) {
    var cap = Math.min(maxMs, baseMs * Math.pow(2, attempt));
    return Math.random() * cap;
  }

  // NATS-style topic match (SPEC 3): "*" one segment, ">" one or more trailing.
  function matches(pattern, topic) {
    var p = pattern.split("."), t = topic.split(".");
    for (var i = 0; i < p.length; i++) {
      if (p[i] === ">") return t.length > i && !(i === 0 && t[0].charAt(0) === "$");
      if (i >= t.length) return false;
      if (p[i] === "*") {
        if (i === 0 && t[0].charAt(0) === "$") return false;
        continue;
      }
      if (p[i] !== t[i]) return false;
    }
    return p.length === t.length;
  }

  // A subscription without its own filter or presence rides in the URL.
  function isPlain(entry) {
    return entry.filter == null && !entry.presence;
  }

  function sameSubscription(a, b) {
    return !!a && !!a.presence === !!b.presence &&
      JSON.stringify(a.filter == null ? null : a.filter) === JSON.stringify(b.filter == null ? null : b.filter);
  }

  function isEnvelope(value, eventName) {
    return value !== null && typeof value === "object" && typeof value.topic === "string" &&
      "ts" in value && (eventName === undefined || value.event === eventName);
  }

  // A WS hub event's payload, the same object SSE carries as `data`. Inbox
  // events put it under "data" (so a record's own `id` is never read as a
  // request id): {"op":"notification","data":{record}}. The others are the
  // frame without its "op": {"op":"join","topic":..,"user":..,"info":..}.
  function payloadOf(frame) {
    if (INBOX_EVENTS.indexOf(frame.op) >= 0) return frame.data || {};
    var out = {};
    Object.keys(frame).forEach(function (key) { if (key !== "op") out[key] = frame[key]; });
    return out;
  }

  // Whether a link that ended with `info` was ended by the hub for good: a
  // server-side disconnect (WS close code, SSE `disconnect` event, poll 410).
  function endsClient(info) {
    return typeof info.code === "number" && info.code >= 4000 && info.code <= 4999 &&
      info.code !== 4401 && RECONNECT_CODES.indexOf(info.code) < 0;
  }

  function HubbubError(code, reason, id) {
    var error = new Error(reason + (code ? " (" + code + ")" : ""));
    error.name = "HubbubError";
    error.code = code;
    error.reason = reason;
    if (id !== undefined) error.id = id;
    return error;
  }

  // -- the client --------------------------------------------------------------

  function Client(url, options) {
    var self = this;
    this.options = {};
    Object.keys(DEFAULTS).forEach(function (k) { self.options[k] = DEFAULTS[k]; });
    Object.keys(options).forEach(function (k) { self.options[k] = options[k]; });
    var transport = this.options.transport;
    if (transport !== "auto" && TIERS.indexOf(transport) < 0) {
      throw new TypeError("hubbub.connect: transport must be auto, ws, sse or poll, not " + transport);
    }
    this.url = absolute(url);
    this.fastUrl = options.fastUrl ? absolute(options.fastUrl) : this.url;
    this.tiers = transport === "auto" ? TIERS.slice() : [transport];
    this.tier = 0;                  // index in this.tiers of the transport in use or being tried
    this.topics = new Map();        // pattern -> {filter, presence}
    (options.topics || []).forEach(function (t) { self.topics.set(t, {}); });
    this.lastEventId = options.since || null;
    this.state = "idle";
    this.transport = null;          // the kind of the open link, once connected
    this.link = null;
    this.attempt = 0;               // failed rounds since the last good connection
    this.failedInRound = 0;         // tiers that failed to open in this round
    this.upgradeEvery = this.options.upgradeAfterMs;
    this.listeners = new Map();
    this.waiting = [];              // {resolve, reject} for operations waiting to be connected
    this.timers = {};
    this.closed = false;

    // The browser knows before any socket does when the machine went offline:
    // cut the link at once and come back as soon as it is online again.
    if (typeof window !== "undefined" && window.addEventListener) {
      this._onOffline = function () { self._linkLost(self.link, {reason: "offline"}); };
      this._onOnline = function () {
        if (self.closed || (self.link && self.link.ready)) return;
        // Whatever was being tried while offline failed for that reason only:
        // start afresh from the best transport, without waiting.
        if (self.link) { var stale = self.link; self.link = null; stale.close(); }
        self.attempt = 0;
        self.tier = 0;
        self.failedInRound = 0;
        self._open();
      };
      window.addEventListener("offline", this._onOffline);
      window.addEventListener("online", this._onOnline);
    }
    // Listeners are added right after connect() returns: open on the next tick.
    setTimeout(function () { if (!self.closed) self._open(); }, 0);
  }

  Client.prototype.on = function (event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return this;
  };

  Client.prototype.off = function (event, fn) {
    var set = this.listeners.get(event);
    if (set) { if (fn) set.delete(fn); else set.clear(); }
    return this;
  };

  Client.prototype._emit = function (event, payload) {
    var set = this.listeners.get(event);
    if (!set) return;
    Array.from(set).forEach(function (fn) {
      // One page handler that throws must not break delivery to the others.
      try { fn(payload); } catch (error) { setTimeout(function () { throw error; }, 0); }
    });
  };

  Client.prototype._setState = function (state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", {state: state, transport: this.transport});
  };

  Client.prototype._token = function () {
    var token = this.options.getToken || this.options.token;
    return Promise.resolve(typeof token === "function" ? token() : token || null);
  };

  // -- subscriptions -------------------------------------------------------------

  /** Subscribe to a topic or pattern; kept across reconnects. Resolves when the hub acknowledged. */
  Client.prototype.subscribe = function (topic, opts) {
    opts = opts || {};
    var entry = {filter: opts.filter, presence: !!opts.presence};
    this.topics.set(topic, entry);
    var self = this;
    return this._whenConnected().then(function () {
      // The link was opened with this very subscription (topic, filter,
      // presence): subscribing again would only repeat it.
      if (opts.since == null && sameSubscription(self.link.opened.get(topic), entry)) return;
      if (self.link.kind === "ws") {
        var op = {op: "subscribe", topic: topic};
        if (opts.since != null) op.since = opts.since;
        if (entry.filter != null) op.filter = entry.filter;
        if (entry.presence) op.presence = true;
        var link = self.link;
        return link.request(op).then(function () { link.opened.set(topic, entry); });
      }
      // SSE and poll carry their subscriptions in the URL: reopen with the new
      // set, resuming from the last id, so nothing already flowing is missed.
      return self._reopen();
    });
  };

  Client.prototype._wantsPresence = function () {
    var wants = false;
    this.topics.forEach(function (entry) { if (entry.presence) wants = true; });
    return wants;
  };

  Client.prototype.unsubscribe = function (topic) {
    if (!this.topics.delete(topic)) return Promise.resolve();
    var self = this;
    // The open link no longer has it, whatever the hub answers: a later
    // subscribe to the same topic must reach the hub again.
    if (this.link) this.link.opened.delete(topic);
    return this._whenConnected().then(function () {
      if (self.link.kind === "ws") {
        self.link.opened.delete(topic);
        return self.link.request({op: "unsubscribe", topic: topic}).then(function () {});
      }
      return self._reopen();
    });
  };

  /**
   * Publish as this client. Over WS the promise resolves with the event id
   * (null for an ephemeral publication) once the hub acknowledged it; while on
   * SSE or poll it goes through POST /publish, which a hub allows only to
   * trusted callers (dev mode from loopback). A publication is never re-sent
   * by the client: if the link drops before the ack, the promise rejects.
   */
  Client.prototype.publish = function (topic, data, opts) {
    opts = opts || {};
    var op = {op: "publish", topic: topic, data: data === undefined ? null : data};
    if (opts.event) op.event = opts.event;
    if (opts.ephemeral) op.ephemeral = true;
    var self = this;
    return this._whenConnected().then(function () {
      if (self.link.kind === "ws") {
        return self.link.request(op).then(function (reply) { return reply.event_id == null ? null : reply.event_id; });
      }
      var body = {topic: topic, data: op.data};
      if (opts.event) body.event = opts.event;
      if (opts.ephemeral) body.ephemeral = true;
      return self._http("POST", "/publish", body).then(function (answer) { return answer.ids[0]; });
    });
  };

  /** Who is present on a topic: the hub's list of users (with info and connection counts). */
  Client.prototype.presence = function (topic) {
    var self = this;
    return this._whenConnected().then(function () {
      if (self.link.kind === "ws") {
        return self.link.request({op: "presence", topic: topic}).then(function (reply) { return reply.users || []; });
      }
      return self._http("GET", "/presence/" + encodeURIComponent(topic)).then(function (answer) {
        return answer.users || [];
      });
    });
  };

  Client.prototype._http = function (method, path, body) {
    var self = this;
    return this._token().then(function (token) {
      var headers = {};
      if (body !== undefined) headers["Content-Type"] = "application/json";
      if (token) headers.Authorization = "Bearer " + token;
      return fetch(self.url + path, {
        method: method, headers: headers,
        body: body === undefined ? undefined : JSON.stringify(body)
      });
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (answer) {
        if (!response.ok) throw HubbubError(response.status, answer.reason || response.statusText);
        return answer;
      });
    });
  };

  /** Stop for good: no reconnect; pending operations reject. */
  Client.prototype.close = function () {
    if (this.closed) return;
    this.closed = true;
    this._clearTimers();
    if (typeof window !== "undefined" && window.removeEventListener) {
      window.removeEventListener("offline", this._onOffline);
      window.removeEventListener("online", this._onOnline);
    }
    var link = this.link;
    this.link = null;
    if (link) link.close();
    this._failWaiting(HubbubError(0, "client closed"));
    if (this.transport) this._emit("disconnected", {transport: this.transport, reason: "closed", willReconnect: false});
    this._setState("closed");
  };

  Client.prototype._whenConnected = function () {
    if (this.closed) return Promise.reject(HubbubError(0, "client closed"));
    if (this.link && this.link.ready) return Promise.resolve();
    var self = this;
    return new Promise(function (resolve, reject) {
      var waiter = {resolve: resolve, reject: reject};
      self.waiting.push(waiter);
      // Do not hang forever while the hub is unreachable.
      setTimeout(function () {
        var i = self.waiting.indexOf(waiter);
        if (i >= 0) {
          self.waiting.splice(i, 1);
          reject(HubbubError(0, "not connected to the hub"));
        }
      }, self.options.requestTimeoutMs);
    });
  };

  Client.prototype._failWaiting = function (error) {
    var waiting = this.waiting;
    this.waiting = [];
    waiting.forEach(function (w) { w.reject(error); });
  };

  Client.prototype._clearTimers = function () {
    var timers = this.timers;
    Object.keys(timers).forEach(function (k) { clearTimeout(timers[k]); });
    this.timers = {};
  };

  Client.prototype._later = function (name, ms, fn) {
    clearTimeout(this.timers[name]);
    this.timers[name] = setTimeout(fn, ms);
  };

  // -- the connection life cycle -------------------------------------------------

  Client.prototype._open = function () {
    if (this.closed || this.link) return;
    clearTimeout(this.timers.reconnect);
    var kind = this.tiers[this.tier];
    this._setState(this.attempt || this.failedInRound || this.everConnected ? "reconnecting" : "connecting");
    this.link = makeLink(this, kind, {probe: false});
  };

  // Called by a link once the hub said hello on it.
  Client.prototype._linkReady = function (link, hello) {
    if (link !== this.link) return;
    this.attempt = 0;
    this.failedInRound = 0;
    this.everConnected = true;
    this.transport = link.kind;
    this._setState("open");
    this._emit("connected", Object.assign({transport: link.kind}, hello || {}));
    var waiting = this.waiting;
    this.waiting = [];
    waiting.forEach(function (w) { w.resolve(); });
    if (this.tier > 0 && this.tiers.length > 1) this._scheduleUpgrade();
  };

  // Called by a link when it ended (or failed to open); `info` says why.
  Client.prototype._linkLost = function (link, info) {
    if (!link || link !== this.link) return;
    this.link = null;
    link.close();
    var wasReady = link.ready;
    clearTimeout(this.timers.upgrade);
    if (endsClient(info)) {
      // SPEC 10: the backend disconnected this user. Say so with its code and
      // reason, and stay away rather than come back a moment later.
      this._stop(link.kind, info.code, info.reason || "disconnected by the server");
      return;
    }
    if (info.code === 4401 && info.reason === TOKEN_EXPIRED && wasReady && this._renewsTokens()) {
      // SPEC 10: the connection outlived its token (WS 4401, SSE `expired`, a
      // poll's 401). Not an error: reconnect now, on the same transport, with
      // a fresh token, resuming from the last id, so nothing is missed.
      this._emit("disconnected", {transport: link.kind, code: 4401, reason: info.reason,
                                  willReconnect: !this.closed});
      this.transport = null;
      if (this.closed) return;
      this._setState("reconnecting");
      var client = this;
      this._later("reconnect", 0, function () { client._open(); });
      return;
    }
    if (info.code === 4401) {
      // SPEC 6: a refused token is not retried as is. A token function may
      // hand out a fresh one, so then (and only then) the client tries again.
      this._emit("error", {code: 4401, reason: info.reason || "authentication failed"});
      if (!this._renewsTokens()) {
        this._stop(link.kind, 4401, info.reason || "authentication failed");
        return;
      }
    }
    if (wasReady) {
      this._emit("disconnected", {transport: link.kind, code: info.code, reason: info.reason, willReconnect: !this.closed});
      this.transport = null;
    }
    if (this.closed) return;
    var delay;
    if (!wasReady && info.code !== 4401 && this.tier < this.tiers.length - 1) {
      // It never opened: the network or a proxy may block this transport.
      // Try the next one now; the round's backoff comes once all have failed.
      this.tier += 1;
      this.failedInRound += 1;
      delay = 0;
    } else {
      // A working link dropped, or every transport failed: start again from
      // the best transport after a jittered, growing wait.
      this.tier = 0;
      this.failedInRound = 0;
      delay = backoffDelay(this.attempt, this.options.backoffBaseMs, this.options.backoffMaxMs);
      this.attempt += 1;
    }
    this._setState("reconnecting");
    var self = this;
    this._later("reconnect", delay, function () { self._open(); });
  };

  // The hub ended this client for good (a refused token, a server-side
  // disconnect): `disconnected` with willReconnect false, then state closed.
  Client.prototype._stop = function (kind, code, reason) {
    this.closed = true;
    this._clearTimers();
    if (typeof window !== "undefined" && window.removeEventListener) {
      window.removeEventListener("offline", this._onOffline);
      window.removeEventListener("online", this._onOnline);
    }
    this._emit("disconnected", {transport: kind, code: code, reason: reason, willReconnect: false});
    this.transport = null;
    this._failWaiting(HubbubError(code, reason));
    this._setState("closed");
  };

  // A token function (getToken, or token given as a function) can hand out fresh tokens.
  Client.prototype._renewsTokens = function () {
    return typeof (this.options.getToken || this.options.token) === "function";
  };

  // Reopen the current transport at once (new subscription set on SSE/poll).
  Client.prototype._reopen = function () {
    var link = this.link;
    if (!link) return Promise.resolve();
    this.link = null;
    link.close();
    this.transport = null;
    var self = this;
    var ready = new Promise(function (resolve, reject) { self.waiting.push({resolve: resolve, reject: reject}); });
    this._open();
    return ready;
  };

  // After a fallback, now and then check whether the better transport opens
  // again (a proxy was fixed, the network changed). The check is a separate
  // short-lived link; only when it said hello does the client switch, by a
  // normal resume on the better transport, so nothing is missed or doubled.
  Client.prototype._scheduleUpgrade = function () {
    var self = this;
    var wait = this.upgradeEvery * (0.5 + Math.random() / 2);
    this._later("upgrade", wait, function () {
      if (self.closed || !self.link || !self.link.ready || self.tier === 0) return;
      var better = self.tiers[0];
      var probe = makeLink(self, better, {
        probe: true,
        onReady: function () {
          probe.close();
          if (self.closed || !self.link) return;
          self.upgradeEvery = self.options.upgradeAfterMs;
          var old = self.link;
          self.link = null;
          old.close();
          self._emit("disconnected", {transport: old.kind, reason: "upgrade", willReconnect: true});
          self.transport = null;
          self.tier = 0;
          self._open();
        },
        onFail: function () {
          probe.close();
          self.upgradeEvery = Math.min(self.upgradeEvery * 2, 10 * self.options.upgradeAfterMs);
          if (self.link && self.link.ready) self._scheduleUpgrade();
        }
      });
    });
  };

  // -- what arrives, whatever the transport ---------------------------------------

  Client.prototype._deliver = function (envelope) {
    // Ephemeral publications have no id and are not a resume point.
    if (envelope.id != null) this.lastEventId = envelope.id;
    this._emit("message", envelope);
  };

  Client.prototype._hubEvent = function (name, payload, eventId) {
    if (name === "reset") {
      // The hub's history no longer covers our last id. It says where "now"
      // is (WS position, SSE id, poll last_id): resume from there. After
      // Redis lost its data that is the start of a new epoch, whose ids may
      // sort below the old ones: ids are never ordered, only handed back
      // (docs/protocol.md). Without one, keep the old id, so a later
      // reconnect asks again and gets another reset rather than a silent gap.
      if (eventId) this.lastEventId = eventId;
      var topics = payload.topics || (payload.topic ? [payload.topic] : []);
      this._emit("reset", {topics: topics, reason: payload.reason});
      return;
    }
    this._emit(name, payload);
  };

  // -- links: one open transport ----------------------------------------------------

  function makeLink(client, kind, opts) {
    if (kind === "ws") return new WSLink(client, opts);
    if (kind === "sse") return new SSELink(client, opts);
    return new PollLink(client, opts);
  }

  // Common parts: the open timeout, the idle watchdog and reporting back.
  function LinkBase(client, kind, opts) {
    this.client = client;
    this.opened = new Map();     // topic -> the subscription entry this link was opened with
    this.kind = kind;
    this.probe = !!opts.probe;
    this.opts = opts;
    this.ready = false;
    this.done = false;
    var self = this;
    this.openTimer = setTimeout(function () { self.fail({reason: "did not open in time"}); },
                                client.options.openTimeoutMs);
  }

  LinkBase.prototype.becomeReady = function (hello) {
    if (this.done || this.ready) return;
    this.ready = true;
    clearTimeout(this.openTimer);
    this.touch();
    if (this.probe) { this.opts.onReady(); return; }
    this.client._linkReady(this, hello);
  };

  LinkBase.prototype.fail = function (info) {
    if (this.done) return;
    if (this.probe) { this.close(); this.opts.onFail(info); return; }
    this.client._linkLost(this, info);  // calls close()
  };

  // Any byte from the hub proves the link alive; silence past the idle
  // timeout means a dead path that TCP has not noticed (a sleeping laptop,
  // a NAT that forgot us).
  LinkBase.prototype.touch = function () {
    var self = this;
    clearTimeout(this.idleTimer);
    if (this.done) return;
    this.idleTimer = setTimeout(function () { self.fail({reason: "no data from the hub"}); },
                                this.client.options.idleTimeoutMs);
    if (this.onIdle) {
      clearTimeout(this.pingTimer);
      this.pingTimer = setTimeout(function () { self.onIdle(); }, this.client.options.pingEveryMs);
    }
  };

  LinkBase.prototype.stopTimers = function () {
    this.done = true;
    clearTimeout(this.openTimer);
    clearTimeout(this.idleTimer);
    clearTimeout(this.pingTimer);
  };

  // Subscriptions as URL parameters (SSE, poll, and the WS handshake, which
  // takes only the plain ones: see WSLink). SSE and poll have one filter per
  // connection, the `filter` option; per-topic filters need WS.
  LinkBase.prototype.subscriptionParams = function (token, plainOnly) {
    var client = this.client;
    var params = [];
    var opened = this.opened;
    client.topics.forEach(function (entry, topic) {
      if (plainOnly && !isPlain(entry)) return;
      opened.set(topic, entry);
      params.push(["topic", topic]);
    });
    params.push(["filter", filterQuery(client.options.filter)]);
    if (!this.probe) params.push(["since", client.lastEventId]);
    if (token) params.push(["token", token]);
    return params;
  };

  // ---- WebSocket (SPEC 6) ----
  function WSLink(client, opts) {
    LinkBase.call(this, client, "ws", opts);
    this.nextId = 1;
    this.pending = new Map();   // request id -> {resolve, reject, timer}
    var self = this;
    client._token().then(function (token) {
      if (self.done) return;
      // Subscriptions (and the resume point) go in the handshake URL: the hub
      // subscribes them all in one step after auth, and replays what they
      // missed as one ordered, duplicate-free run.
      var since = client.lastEventId;
      var url = wsUrlOf(client.fastUrl) + "/ws" + query(self.subscriptionParams(null, true));
      var socket;
      try {
        socket = self.socket = new WebSocket(url);
      } catch (error) {
        self.fail({reason: String(error)});
        return;
      }
      socket.onopen = function () {
        // The token travels in the first frame, not in the URL, so it stays
        // out of proxy and server logs. The answer (ack or pong) is the hub's
        // hello: by then the handshake's subscriptions are in place.
        var hello = token ? {op: "auth", token: token} : {op: "ping"};
        self.request(hello).then(function () {
          // Unasked, this tells the hub that this client answers its pings
          // (onMessage): on the ASGI port, where the hub cannot see protocol
          // pongs, a page that freezes is then dropped within PRESENCE_TTL.
          self.send({op: "pong"});
          return self.subscribeWithOptions(since);
        }).then(function () {
          self.becomeReady({});
          if (token && client._renewsTokens()) self.scheduleRefresh(token);
        }, function (error) {
          self.fail({code: error.code, reason: error.reason});
        });
      };
      socket.onmessage = function (event) { self.onFrame(event.data); };
      socket.onclose = function (event) {
        self.fail({code: event.code, reason: event.reason || "connection closed"});
      };
      socket.onerror = function () { /* onclose follows and says why */ };
    }, function (error) { self.fail({reason: "token: " + error}); });
  }
  WSLink.prototype = Object.create(LinkBase.prototype);

  // Extend the connection with {"op":"refresh"} before the token's exp (SPEC 10).
  // A refused or failed refresh is tried again; should the token expire anyway,
  // the hub closes 4401 and the client reconnects with a fresh token.
  WSLink.prototype.scheduleRefresh = function (token) {
    var exp = tokenExpiry(token);
    if (exp == null || this.done) return;
    var self = this;
    var client = this.client;
    var now = Date.now();
    this.refreshIn(Math.max(0, (exp * 1000 - now) * REFRESH_AT), function () {
      var fresh;
      client._token().then(function (t) {
        fresh = t;
        return self.request({op: "refresh", token: t});
      }).then(function () { self.scheduleRefresh(fresh); }, function () {
        if (!self.done) self.refreshIn(REFRESH_RETRY_MS, function () { self.scheduleRefresh(token); });
      });
    });
  };

  WSLink.prototype.refreshIn = function (ms, fn) {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(fn, ms);
  };

  WSLink.prototype.send = function (op) {
    if (this.socket && this.socket.readyState === 1) this.socket.send(JSON.stringify(op));
  };

  // Send an op with an id; the promise settles with the hub's reply to that id.
  WSLink.prototype.request = function (op) {
    var self = this;
    var id = this.nextId++;
    op.id = id;
    return new Promise(function (resolve, reject) {
      if (self.done || !self.socket || self.socket.readyState !== 1) {
        reject(HubbubError(0, "not connected to the hub"));
        return;
      }
      var timer = setTimeout(function () {
        self.pending.delete(id);
        reject(HubbubError(0, op.op + " got no answer in time"));
      }, self.client.options.requestTimeoutMs);
      self.pending.set(id, {resolve: resolve, reject: reject, timer: timer});
      self.send(op);
    });
  };

  // Topics with their own filter or presence flag are subscribed by op, each
  // resuming from the same id as the handshake's.
  WSLink.prototype.subscribeWithOptions = function (since) {
    var self = this;
    var client = this.client;
    var asked = [];
    client.topics.forEach(function (entry, topic) {
      if (isPlain(entry)) return;
      var op = {op: "subscribe", topic: topic};
      if (entry.filter != null) op.filter = entry.filter;
      if (entry.presence) op.presence = true;
      if (since != null && !self.probe) op.since = since;
      self.opened.set(topic, entry);
      asked.push(self.request(op).catch(function (error) {
        // One refused topic must not keep the others from flowing.
        if (!self.probe) client._emit("error", {code: error.code, reason: error.reason, topic: topic});
      }));
    });
    return Promise.all(asked);
  };

  WSLink.prototype.onIdle = function () {
    this.send({op: "ping"});
  };

  // One frame may carry several messages, one JSON object per line (SPEC 6).
  WSLink.prototype.onFrame = function (data) {
    if (this.done) return;
    this.touch();
    var lines = String(data).split("\n");
    for (var i = 0; i < lines.length; i++) {
      if (!lines[i]) continue;
      var frame;
      try { frame = JSON.parse(lines[i]); } catch (error) {
        this.client._emit("error", {code: 0, reason: "unreadable frame from the hub"});
        continue;
      }
      this.onMessage(frame);
      if (this.done) return;  // a handler closed the client or the link
    }
  };

  WSLink.prototype.onMessage = function (frame) {
    var client = this.client;
    var op = frame.op;
    if (op === "message") {
      if (!this.probe) client._deliver(payloadOf(frame));
      return;
    }
    if (frame.id != null && this.pending.has(frame.id) && op !== "message") {
      var waiter = this.pending.get(frame.id);
      this.pending.delete(frame.id);
      clearTimeout(waiter.timer);
      if (op === "error") waiter.reject(HubbubError(frame.code, frame.reason, frame.id));
      else waiter.resolve(frame);
      return;
    }
    if (op === "ping") { this.send({op: "pong"}); return; }
    if (op === "pong" || op === "ack") return;
    if (this.probe) return;
    if (op === "error") { client._emit("error", {code: frame.code, reason: frame.reason}); return; }
    // A reset's position is where to resume from (SSE's reset carries it as its id).
    if (HUB_EVENTS.indexOf(op) >= 0) { client._hubEvent(op, payloadOf(frame), frame.position); return; }
    // Unknown ops are ignored: a newer hub may say more than this client knows.
  };

  WSLink.prototype.close = function () {
    if (this.done) return;
    this.stopTimers();
    clearTimeout(this.refreshTimer);
    var error = HubbubError(0, "connection lost before the hub answered");
    this.pending.forEach(function (w) { clearTimeout(w.timer); w.reject(error); });
    this.pending.clear();
    if (this.socket) {
      this.socket.onopen = this.socket.onmessage = this.socket.onclose = null;
      try { this.socket.close(1000); } catch (e) { /* already closing */ }
    }
  };

  // ---- Server-Sent Events (SPEC 5) ----
  // Read with fetch() and a stream parser rather than EventSource: the hub
  // names each SSE event after the publication's `event`, and EventSource can
  // only listen to names known in advance; fetch also leaves reconnecting to
  // this client, which adds jitter and the fallback. The resume point goes in
  // `since=` (a Last-Event-ID header would cost a CORS preflight).
  function SSELink(client, opts) {
    LinkBase.call(this, client, "sse", opts);
    this.abort = new AbortController();
    var self = this;
    client._token().then(function (token) {
      if (self.done) return;
      var params = self.subscriptionParams(token);
      // SSE asks for join/leave per stream, not per topic: when any topic
      // wants presence, the stream gets the events of all its topics (each
      // names its topic). Long-poll takes no part in presence (SPEC 10).
      if (client._wantsPresence()) params.push(["presence", "1"]);
      var url = client.fastUrl + "/sse" + query(params);
      return fetch(url, {headers: {Accept: "text/event-stream"}, cache: "no-store",
                         signal: self.abort.signal}).then(function (response) {
        if (!response.ok) {
          return response.json().catch(function () { return {}; }).then(function (answer) {
            self.refused(response.status, answer.reason || response.statusText);
          });
        }
        return self.read(response.body.getReader());
      });
    }).then(function () {
      self.fail({reason: "stream ended"});
    }, function (error) {
      self.fail({reason: String(error && error.message || error)});
    });
  }
  SSELink.prototype = Object.create(LinkBase.prototype);

  SSELink.prototype.refused = function (status, reason) {
    // 401 is the SSE face of WS 4401; a 400/403 is the page's mistake and
    // retrying will not fix it, but it is reported and retried with backoff
    // so a fixed subscription set or permission takes effect.
    if (!this.probe) this.client._emit("error", {code: status, reason: reason});
    this.fail({code: status === 401 ? 4401 : status, reason: reason});
  };

  SSELink.prototype.read = function (reader) {
    var self = this;
    var decoder = new TextDecoder();
    var buffer = "";
    var event = {name: "", data: [], id: null};
    function line(text) {
      if (text === "") {   // blank line: dispatch
        if (event.data.length) self.onEvent(event.name || "message", event.data.join("\n"), event.id);
        event = {name: "", data: [], id: null};
        return;
      }
      if (text.charAt(0) === ":") return;  // comment: the hub's heartbeat
      var colon = text.indexOf(":");
      var field = colon < 0 ? text : text.slice(0, colon);
      var value = colon < 0 ? "" : text.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event.name = value;
      else if (field === "data") event.data.push(value);
      else if (field === "id") event.id = value;
    }
    function pump() {
      return reader.read().then(function (chunk) {
        if (chunk.done || self.done) return;
        self.touch();
        buffer += decoder.decode(chunk.value, {stream: true});
        var lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop();  // an incomplete last line waits for more
        for (var i = 0; i < lines.length && !self.done; i++) line(lines[i]);
        return pump();
      });
    }
    return pump();
  };

  SSELink.prototype.onEvent = function (name, text, eventId) {
    var data;
    try { data = JSON.parse(text); } catch (error) { data = text; }
    if (name === "connected") { this.becomeReady(data); return; }
    if (this.done) return;
    // The token expired; the hub ends the stream next (SPEC 10).
    if (name === "expired") { this.fail({code: 4401, reason: TOKEN_EXPIRED}); return; }
    // The server API disconnected the user; the hub ends the stream next. A
    // code that asks for a reconnect (4408, 4410) is reconnected as on WS.
    if (name === "disconnect") {
      this.fail({code: data && data.code, reason: data && data.reason});
      return;
    }
    if (this.probe) return;
    // A publication may be named anything, even "reset": its envelope tells.
    if (isEnvelope(data, name)) { this.client._deliver(data); return; }
    if (HUB_EVENTS.indexOf(name) >= 0) { this.client._hubEvent(name, data, eventId); return; }
    if (name === "error") this.client._emit("error", data);
  };

  SSELink.prototype.close = function () {
    if (this.done) return;
    this.stopTimers();
    this.abort.abort();
  };

  // ---- long-poll (SPEC 10) ----
  // Each request asks for what came after the last id; the answer's last_id
  // is the next resume point, so consecutive polls neither miss nor repeat.
  function PollLink(client, opts) {
    LinkBase.call(this, client, "poll", opts);
    this.abort = null;
    this.loop(true);
  }
  PollLink.prototype = Object.create(LinkBase.prototype);

  PollLink.prototype.loop = function (first) {
    var self = this;
    var client = this.client;
    if (this.done) return;
    this.abort = new AbortController();
    // The first request does not wait: it proves the hub reachable and, when
    // the client has no resume point yet, learns the hub's newest id.
    var wait = first ? 0 : client.options.pollTimeoutS;
    client._token().then(function (token) {
      if (self.done) return;
      var params = self.subscriptionParams(token);
      params.push(["timeout", wait]);
      // A poll that outlives the hub's timeout by this much went down with
      // the network: abort it, which fails the link and reconnects.
      var abort = self.abort;
      self.requestTimer = setTimeout(function () { abort.abort(); },
                                     wait * 1000 + client.options.openTimeoutMs);
      return fetch(client.url + "/poll" + query(params), {cache: "no-store", signal: abort.signal})
        .then(function (response) {
          clearTimeout(self.requestTimer);
          return response.json().catch(function () { return {}; }).then(function (answer) {
            if (!response.ok) {
              var expired = response.status === 401 && answer.reason === TOKEN_EXPIRED;
              // 410: the server API disconnected the user while this poll
              // waited; `disconnect` has its close code, under the same rule
              // as a WS close or SSE's `disconnect` event (4408 comes back).
              var disconnect = response.status === 410 && answer.disconnect;
              if (disconnect) {
                self.fail({code: disconnect.code, reason: disconnect.reason});
                return;
              }
              if (!self.probe && !expired) {
                client._emit("error", {code: response.status, reason: answer.reason});
              }
              self.fail({code: response.status === 401 ? 4401 : response.status, reason: answer.reason});
              return;
            }
            if (self.done) return;
            self.becomeReady({});
            if (self.probe) return;
            self.onAnswer(answer);
            self.loop(false);
          });
        });
    }).catch(function (error) {
      self.fail({reason: String(error && error.message || error)});
    });
  };

  PollLink.prototype.onAnswer = function (answer) {
    var client = this.client;
    if (answer.reset) {
      client._hubEvent("reset", answer.reset, answer.last_id);
    }
    if (answer.dropped) client._emit("dropped", {count: answer.dropped});
    (answer.messages || []).forEach(function (item) {
      if (client.closed) return;
      // Publications have a topic; a user's inbox events ({event, data}) do not.
      if (item.topic === undefined && HUB_EVENTS.indexOf(item.event) >= 0) client._hubEvent(item.event, item.data);
      else client._deliver(item);
    });
    if (answer.unread_count != null && !client.closed) client._hubEvent("unread_count", {count: answer.unread_count});
    // last_id is where the next poll resumes even when nothing came.
    if (answer.last_id != null) client.lastEventId = answer.last_id;
  };

  PollLink.prototype.touch = function () { /* each answer is its own liveness proof */ };

  PollLink.prototype.close = function () {
    if (this.done) return;
    this.stopTimers();
    clearTimeout(this.requestTimer);
    if (this.abort) this.abort.abort();
  };

  return {
    version: VERSION,
    connect: connect,
    matches: matches,
    Client: Client
  };
})();
