// @ts-check
/**
 * tickcast.js: a dependency-free browser client for the tickcast WebSocket
 * protocol (docs/protocol.md, docs/client.md).
 *
 * ```js
 * import { connect } from "/tickcast.js";
 * const client = connect("ws://127.0.0.1:8080/ws", { onStatus: s => console.log(s.state) });
 * const sub = client.subscribe(["quotes.*"], { max_hz: 4 }, (channel, state, meta) => {
 *   console.log(channel, meta.seq, state.bid, state.ask);
 * });
 * // later: sub.unsubscribe(); client.close();
 * ```
 *
 * What it does for you:
 * - keeps one state per channel: a snapshot replaces it, an update's `data`
 *   is applied as a JSON Merge Patch (RFC 7396); states handed to you are
 *   new objects, never changed afterwards;
 * - checks `prev` on every update: on a gap it stops delivering that channel
 *   and resubscribes with `since` + `epoch`, setting aside what still
 *   arrives from the old stream until the server's answer, so every state
 *   you get is one the server had (restricted to your `fields`);
 * - reconnects with exponential backoff and full jitter, honours close codes
 *   that mean "do not retry" and the `reconnect_after_ms=N` hint, and
 *   resumes every subscription with `since` + `epoch`;
 * - pings when the connection goes quiet and drops a connection that stops
 *   answering.
 *
 * The pure parts (merge patch, pattern matching, gap check, backoff,
 * close-code policy, the channel table) are exported for tests; the client
 * takes its WebSocket constructor, timers, clock and random source as
 * options, so it runs under node without a browser.
 */

/** A channel state: one JSON object. @typedef {Record<string, any>} State */

/**
 * What `onState` is told besides the state.
 * @typedef {object} StateMeta
 * @property {number} seq the channel's seq this state is at
 * @property {string} epoch the server run the seq belongs to
 * @property {boolean} snapshot true for a snapshot (state replaced), false for an update
 * @property {boolean} resync a snapshot that stands for updates you did not get
 * @property {number | undefined} ts an update's ingest time in Unix nanoseconds
 * @property {State | null} patch an update's merge patch (null for a snapshot)
 */

/**
 * @callback OnState
 * @param {string} channel
 * @param {State} state
 * @param {StateMeta} meta
 * @returns {void}
 */

/**
 * Connection status, as given to `onStatus`.
 * @typedef {object} Status
 * @property {"connecting" | "open" | "reconnecting" | "closed"} state
 *   `closed` is final: the client gave up (a "do not retry" close) or was closed by you.
 * @property {number} [code] the close code that ended the last connection
 * @property {string} [reason] its close reason
 * @property {number} [retryInMs] for `reconnecting`: the wait before the next attempt
 * @property {number} [attempt] for `reconnecting`: failed attempts in a row
 * @property {string} [why] a sentence for people
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {string[]} [fields] only these top-level members
 * @property {number} [max_hz] at most this many updates per second per channel (merge channels)
 */

/**
 * @typedef {object} Timers
 * @property {(fn: () => void, ms: number) => any} setTimeout
 * @property {(handle: any) => void} clearTimeout
 */

/**
 * @typedef {object} ConnectOptions
 * @property {string | (() => string | undefined)} [token] a JWT, or a function
 *   called before every connect (so a fresh token is used after "token expired")
 * @property {(status: Status) => void} [onStatus]
 * @property {(error: {code: string, message: string, id?: number}) => void} [onError]
 *   an `error` message from the server (a refused subscribe, say)
 * @property {number} [backoffBaseMs] first backoff ceiling (default 500)
 * @property {number} [backoffMaxMs] largest backoff ceiling (default 30000)
 * @property {number} [stableMs] a connection open this long resets the backoff (default 5000)
 * @property {number} [pingAfterMs] silence before sending a ping (default 20000)
 * @property {number} [pongTimeoutMs] silence after a ping before the connection counts as dead (default 10000)
 * @property {number} [resyncMinIntervalMs] least time between two gap resubscribes of one subscription (default 1000)
 * @property {any} [WebSocket] the WebSocket constructor (default: the global one)
 * @property {Timers} [timers] default: the global setTimeout/clearTimeout
 * @property {() => number} [now] milliseconds clock (default Date.now)
 * @property {() => number} [random] in [0, 1) (default Math.random)
 */

/** @param {unknown} v @returns {v is Record<string, any>} */
function isObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/**
 * RFC 7396 JSON Merge Patch. Returns a new value; `target` is not changed
 * (members the patch does not touch are shared with it).
 * @param {any} target
 * @param {any} patch
 * @returns {any}
 */
export function mergePatch(target, patch) {
  if (!isObject(patch)) return patch;
  /** @type {Record<string, any>} */
  const out = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete out[key];
    else out[key] = mergePatch(out[key], value);
  }
  return out;
}

/**
 * NATS-style subject match: `*` is one segment, a final `>` one or more.
 * @param {string} pattern
 * @param {string} name
 */
export function matches(pattern, name) {
  const p = pattern.split("."), n = name.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return i === p.length - 1 && n.length > i;
    if (i >= n.length) return false;
    if (p[i] !== "*" && p[i] !== n[i]) return false;
  }
  return p.length === n.length;
}

/**
 * Full-jitter exponential backoff: a wait drawn uniformly from
 * [0, min(maxMs, baseMs * 2^attempt)).
 * @param {number} attempt failed attempts before this one (0 for the first)
 * @param {{baseMs: number, maxMs: number}} limits
 * @param {() => number} random
 */
export function backoffDelay(attempt, { baseMs, maxMs }, random) {
  const ceiling = Math.min(maxMs, baseMs * Math.pow(2, Math.min(attempt, 30)));
  return Math.floor(random() * ceiling);
}

/**
 * The server's reconnect hint in a close reason (`reconnect_after_ms=N`),
 * or null when there is none.
 * @param {string} reason
 */
export function reconnectHint(reason) {
  const found = /reconnect_after_ms=(\d+)/.exec(reason || "");
  return found ? Number(found[1]) : null;
}

/**
 * What to do after a close (docs/protocol.md, "Reconnecting").
 * `retry: false` means do not reconnect; `delayMs` is a wait the server
 * asked for (null: use the backoff); `freshToken` means retrying makes sense
 * only with a new token.
 * @param {number} code
 * @param {string} reason
 * @returns {{retry: boolean, delayMs: number | null, freshToken: boolean, why: string}}
 */
export function closePolicy(code, reason) {
  const r = reason || "";
  const backoff = (why) => ({ retry: true, delayMs: null, freshToken: false, why });
  const stop = (why, freshToken = false) => ({ retry: false, delayMs: null, freshToken, why });
  switch (code) {
    case 1001: {
      const hint = reconnectHint(r);
      if (hint !== null) return { retry: true, delayMs: hint, freshToken: false, why: "server restarting" };
      if (/idle timeout/.test(r)) return { retry: true, delayMs: 0, freshToken: false, why: "idle timeout" };
      return backoff("server going away");
    }
    case 1002: case 1003: case 1007: case 1009:
      return stop(`refused by the server (${code}${r ? ": " + r : ""}); reconnecting would repeat it`);
    case 1008:
      if (/frame timeout|frame not finished|write timeout/.test(r)) return backoff("connection stalled");
      if (/rate limit/.test(r)) return stop("closed for sending too fast");
      return stop(`not authorised (${r || "policy violation"}): a new token is needed`, true);
    default:
      // 1000, 1006 (dropped), 1011, 1012, 1013 (slow consumer), 1014, others.
      return backoff(code === 1006 ? "connection lost" : `closed (${code})`);
  }
}

/** The channel is being resynchronised and its messages are set aside. */
const STALE = -1;

/**
 * One state per channel, kept by the protocol's rules; no sockets, no clocks.
 * `apply` says what to do with each channel message.
 */
export class ChannelTable {
  constructor() {
    /** @type {Map<string, {seq: number, epoch: string, data: State | undefined, waiting: number}>} */
    this.channels = new Map();
    /** The epoch of the latest snapshot: the server run we are in. @type {string | null} */
    this.epoch = null;
    /** Patterns of subscribes not yet answered, by request id. @type {Map<number, string[]>} */
    this.pendingPatterns = new Map();
  }

  /** @param {string} name */
  get(name) {
    const entry = this.channels.get(name);
    return entry && entry.data !== undefined
      ? { seq: entry.seq, epoch: entry.epoch, data: entry.data }
      : undefined;
  }

  /**
   * Applies a `snapshot` or `update` message.
   * @param {any} msg
   * @returns {{action: "deliver", channel: string, state: State, meta: StateMeta}
   *   | {action: "gap", channel: string} | {action: "ignore"}}
   */
  apply(msg) {
    const channel = msg.channel;
    if (typeof channel !== "string" || !isObject(msg.data) || typeof msg.seq !== "number") {
      return { action: "ignore" };
    }
    const entry = this.channels.get(channel);
    if (entry && entry.waiting !== 0) return { action: "ignore" };
    if (msg.type === "snapshot") {
      const data = mergePatch(undefined, msg.data);
      this.epoch = msg.epoch;
      this.channels.set(channel, { seq: msg.seq, epoch: msg.epoch, data, waiting: 0 });
      const meta = { seq: msg.seq, epoch: msg.epoch, snapshot: true, resync: msg.resync === true, ts: undefined, patch: null };
      return { action: "deliver", channel, state: data, meta };
    }
    if (msg.type !== "update") return { action: "ignore" };
    if (!entry && [...this.pendingPatterns.values()].some((ps) => ps.some((p) => matches(p, channel)))) {
      // The tail of a stream we left (an unsubscribe just before): the
      // pending subscribe starts this channel with a snapshot.
      return { action: "ignore" };
    }
    if (!entry || entry.data === undefined || msg.prev !== entry.seq) {
      // The one rule: a `prev` we do not hold is a gap. Deliver nothing of
      // this channel until the server's answer to a resubscribe.
      if (entry) entry.waiting = STALE;
      else this.channels.set(channel, { seq: 0, epoch: "", data: undefined, waiting: STALE });
      return { action: "gap", channel };
    }
    entry.data = mergePatch(entry.data, msg.data);
    entry.seq = msg.seq;
    const meta = { seq: msg.seq, epoch: entry.epoch, snapshot: false, resync: false, ts: msg.ts, patch: msg.data };
    return { action: "deliver", channel, state: entry.data, meta };
  }

  /**
   * Resume positions for the channels covered by `patterns`: only those
   * held from the current epoch (docs/protocol.md, "Only resume what you
   * hold from this run"). Null when there is nothing to resume.
   * @param {string[]} patterns
   * @returns {{since: Record<string, number>, epoch: string} | null}
   */
  resume(patterns) {
    /** @type {Record<string, number>} */
    const since = {};
    let any = false;
    for (const [name, entry] of this.channels) {
      if (entry.data === undefined || entry.epoch !== this.epoch) continue;
      if (!patterns.some((p) => matches(p, name))) continue;
      since[name] = entry.seq;
      any = true;
    }
    return any && this.epoch !== null ? { since, epoch: this.epoch } : null;
  }

  /**
   * Sets aside the messages of every channel covered by `patterns` until
   * the answer to request `id` (the old stream may still be arriving).
   * @param {string[]} patterns
   * @param {number} id
   */
  hold(patterns, id) {
    this.pendingPatterns.set(id, patterns);
    for (const [name, entry] of this.channels) {
      if (patterns.some((p) => matches(p, name))) entry.waiting = id;
    }
  }

  /** The answer to request `id` came: its channels flow again. @param {number} id */
  release(id) {
    this.pendingPatterns.delete(id);
    for (const entry of this.channels.values()) if (entry.waiting === id) entry.waiting = 0;
  }

  /** Forgets channels `keep` says no. @param {(name: string) => boolean} keep */
  retain(keep) {
    for (const name of [...this.channels.keys()]) if (!keep(name)) this.channels.delete(name);
  }
}

/** A subscription made with `subscribe`. */
class Subscription {
  /**
   * @param {TickcastClient} client
   * @param {string[]} channels
   * @param {SubscribeOptions} options
   * @param {OnState} onState
   */
  constructor(client, channels, options, onState) {
    this.client = client;
    this.channels = channels;
    this.options = options;
    this.onState = onState;
    this.active = true;
    /** When the last gap resubscribe went out (ms). */
    this.lastResync = -Infinity;
    /** @type {any} */
    this.resyncTimer = null;
  }

  /** Stops the subscription; channels no other subscription covers are forgotten. */
  unsubscribe() {
    this.client._unsubscribe(this);
  }

  /** @param {string} channel */
  covers(channel) {
    return this.channels.some((p) => matches(p, channel));
  }
}

/** A connection to tickcast that keeps itself up; made by `connect`. */
export class TickcastClient {
  /** @param {string} url @param {ConnectOptions} [options] */
  constructor(url, options = {}) {
    this.url = url;
    this.opts = options;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.timers = options.timers || {
      setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
      clearTimeout: (h) => globalThis.clearTimeout(h),
    };
    this.now = options.now || (() => Date.now());
    this.random = options.random || Math.random;
    this.backoff = { baseMs: options.backoffBaseMs ?? 500, maxMs: options.backoffMaxMs ?? 30000 };
    this.stableMs = options.stableMs ?? 5000;
    this.pingAfterMs = options.pingAfterMs ?? 20000;
    this.pongTimeoutMs = options.pongTimeoutMs ?? 10000;
    this.resyncMinIntervalMs = options.resyncMinIntervalMs ?? 1000;
    this.table = new ChannelTable();
    /** @type {Subscription[]} in the order they were made */
    this.subs = [];
    /** Requests sent and not yet answered, oldest first. @type {{id: number, op: string}[]} */
    this.pending = [];
    this.nextId = 1;
    /** Failed connects in a row. */
    this.attempt = 0;
    /** @type {any} */ this.ws = null;
    /** @type {any} */ this.retryTimer = null;
    /** @type {any} */ this.watchTimer = null;
    this.openedAt = 0;
    this.lastHeard = 0;
    /** When the outstanding ping went out, or null. @type {number | null} */
    this.pingSentAt = null;
    this.closedByUser = false;
    /** @type {Status} */
    this.status = { state: "connecting" };
    this._open();
  }

  /**
   * Subscribes to channel names or patterns; `onState(channel, state, meta)`
   * is called with every state the subscription's channels reach.
   * Works before the connection is open and across reconnects.
   * @param {string[]} channels
   * @param {SubscribeOptions} [options]
   * @param {OnState} [onState]
   * @returns {Subscription}
   */
  subscribe(channels, options = {}, onState = () => {}) {
    const sub = new Subscription(this, [...channels], { ...options }, onState);
    this.subs.push(sub);
    if (this._isOpen()) this._sendSubscribe(sub);
    return sub;
  }

  /**
   * Gives the connection a fresh token before its current one expires
   * (`{"op":"auth"}`: the server answers `authed`, or `forbidden` and keeps
   * the old one). Later reconnects use it too.
   * @param {string} token
   */
  auth(token) {
    this.opts = { ...this.opts, token };
    if (this._isOpen()) this._send({ op: "auth", token });
  }

  /** The state held for `channel` ({seq, epoch, data}), if any. @param {string} channel */
  state(channel) {
    return this.table.get(channel);
  }

  /** Closes the connection for good. */
  close() {
    this.closedByUser = true;
    this.timers.clearTimeout(this.retryTimer);
    this._stopWatch();
    for (const sub of this.subs) this.timers.clearTimeout(sub.resyncTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      detach(ws);
      try { ws.close(1000); } catch (_) { /* already closed */ }
    }
    this._setStatus({ state: "closed", why: "closed by the application" });
  }

  // ---- connection ----

  _isOpen() {
    return this.ws !== null && this.ws.readyState === 1;
  }

  _url() {
    const token = typeof this.opts.token === "function" ? this.opts.token() : this.opts.token;
    if (!token) return this.url;
    return this.url + (this.url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  }

  _open() {
    this.retryTimer = null;
    this._setStatus({ state: "connecting", attempt: this.attempt });
    let ws;
    try {
      ws = new this.WebSocket(this._url());
    } catch (e) {
      // A malformed URL is not going to get better.
      this._setStatus({ state: "closed", why: `cannot connect: ${e}` });
      return;
    }
    this.ws = ws;
    ws.onopen = () => this._onOpen();
    ws.onmessage = (/** @type {{data: any}} */ ev) => this._onMessage(ev.data);
    ws.onclose = (/** @type {{code: number, reason: string}} */ ev) => this._onClose(ev.code, ev.reason);
    ws.onerror = () => {}; // a close event follows
  }

  _onOpen() {
    this.openedAt = this.now();
    this.lastHeard = this.openedAt;
    this.pingSentAt = null;
    this.pending = [];
    this._setStatus({ state: "open" });
    // A new connection has no old stream: nothing is waiting any more.
    this.table.pendingPatterns.clear();
    for (const entry of this.table.channels.values()) entry.waiting = 0;
    for (const sub of this.subs) this._sendSubscribe(sub);
    this._watch();
  }

  /** @param {number} code @param {string} reason */
  _onClose(code, reason) {
    this._stopWatch();
    const ws = this.ws;
    this.ws = null;
    if (ws) detach(ws);
    if (this.closedByUser) return;
    if (this.openedAt && this.now() - this.openedAt >= this.stableMs) this.attempt = 0;
    this.openedAt = 0;
    const policy = closePolicy(code, reason);
    const fresh = policy.freshToken && typeof this.opts.token === "function";
    if (!policy.retry && !fresh) {
      this._setStatus({ state: "closed", code, reason, why: policy.why });
      return;
    }
    const delay = policy.delayMs !== null ? policy.delayMs : backoffDelay(this.attempt, this.backoff, this.random);
    if (policy.delayMs === null) this.attempt += 1;
    this._setStatus({ state: "reconnecting", code, reason, retryInMs: delay, attempt: this.attempt, why: policy.why });
    this.retryTimer = this.timers.setTimeout(() => this._open(), delay);
  }

  /** Pings after `pingAfterMs` of silence; drops the connection if that goes unanswered. */
  _watch() {
    const tick = Math.max(50, Math.min(this.pingAfterMs, this.pongTimeoutMs) / 2);
    this.watchTimer = this.timers.setTimeout(() => {
      this.watchTimer = null;
      if (!this._isOpen()) return;
      const now = this.now();
      if (this.pingSentAt !== null && now - this.pingSentAt >= this.pongTimeoutMs) {
        // Nothing heard since the ping: the connection is dead even if the
        // browser has not noticed. Drop it and reconnect as after a drop.
        const ws = this.ws;
        this.ws = null;
        detach(ws);
        try { ws.close(4000, "no answer to ping"); } catch (_) { /* ignore */ }
        this.ws = null;
        this._onClose(1006, "no answer to ping");
        return;
      }
      if (this.pingSentAt === null && now - this.lastHeard >= this.pingAfterMs) {
        this.pingSentAt = now;
        this._send({ op: "ping" });
      }
      this._watch();
    }, tick);
  }

  _stopWatch() {
    if (this.watchTimer !== null) this.timers.clearTimeout(this.watchTimer);
    this.watchTimer = null;
  }

  /** @param {Status} status */
  _setStatus(status) {
    this.status = status;
    if (this.opts.onStatus) this.opts.onStatus(status);
  }

  /** Sends a request with a fresh id; returns the id. @param {Record<string, any>} msg */
  _send(msg) {
    const id = this.nextId++;
    if (!this._isOpen()) return id;
    this.pending.push({ id, op: msg.op });
    this.ws.send(JSON.stringify({ ...msg, id }));
    return id;
  }

  // ---- subscriptions ----

  /** Sends `sub`'s subscribe, resuming what is held of its channels. @param {Subscription} sub */
  _sendSubscribe(sub) {
    /** @type {Record<string, any>} */
    const msg = { op: "subscribe", channels: sub.channels };
    if (sub.options.fields) msg.fields = sub.options.fields;
    if (sub.options.max_hz) msg.max_hz = sub.options.max_hz;
    const resume = this.table.resume(sub.channels);
    if (resume) {
      msg.since = resume.since;
      msg.epoch = resume.epoch;
    }
    const id = this.nextId; // what _send will use
    this.table.hold(sub.channels, id);
    this._send(msg);
  }

  /** @param {Subscription} sub */
  _unsubscribe(sub) {
    if (!sub.active) return;
    sub.active = false;
    this.timers.clearTimeout(sub.resyncTimer);
    this.subs = this.subs.filter((s) => s !== sub);
    // A pattern another subscription still lists stays subscribed.
    const still = new Set(this.subs.flatMap((s) => s.channels));
    const gone = sub.channels.filter((p) => !still.has(p));
    if (gone.length && this._isOpen()) this._send({ op: "unsubscribe", channels: gone });
    this.table.retain((name) => this.subs.some((s) => s.covers(name)));
  }

  /**
   * The server dropped `patterns` (a fresh token no longer covers them):
   * they leave every subscription, one left with none ends, channels no
   * subscription covers any more are forgotten, and `onError` is told.
   * @param {string[]} patterns
   */
  _revoked(patterns) {
    if (!patterns.length) return;
    for (const sub of this.subs) {
      sub.channels = sub.channels.filter((p) => !patterns.includes(p));
      if (!sub.channels.length) {
        sub.active = false;
        this.timers.clearTimeout(sub.resyncTimer);
      }
    }
    this.subs = this.subs.filter((s) => s.active);
    this.table.retain((name) => this.subs.some((s) => s.covers(name)));
    const error = {
      code: "forbidden",
      message: `the refreshed token no longer covers ${patterns.join(", ")}: unsubscribed by the server`,
    };
    if (this.opts.onError) this.opts.onError(error);
    else if (typeof console !== "undefined") console.warn("tickcast:", error.code, error.message);
  }

  /** The subscription whose options the server applies to `channel`: the latest covering it. @param {string} channel */
  _owner(channel) {
    for (let i = this.subs.length - 1; i >= 0; i--) if (this.subs[i].covers(channel)) return this.subs[i];
    return null;
  }

  /** A gap on `channel`: resubscribe its subscription with `since`, at most once per interval. @param {string} channel */
  _resync(channel) {
    const sub = this._owner(channel);
    if (!sub || sub.resyncTimer !== null) return;
    const wait = sub.lastResync + this.resyncMinIntervalMs - this.now();
    const go = () => {
      sub.resyncTimer = null;
      if (!sub.active || !this._isOpen()) return;
      sub.lastResync = this.now();
      this._sendSubscribe(sub);
    };
    if (wait <= 0) go();
    else sub.resyncTimer = this.timers.setTimeout(go, wait);
  }

  /** @param {any} text */
  _onMessage(text) {
    this.lastHeard = this.now();
    this.pingSentAt = null;
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (!isObject(msg)) return;
    switch (msg.type) {
      case "snapshot":
      case "update": {
        // In flight after an unsubscribe: not ours any more.
        if (!this.subs.some((s) => s.covers(msg.channel))) return;
        const result = this.table.apply(msg);
        if (result.action === "gap") this._resync(result.channel);
        else if (result.action === "deliver") {
          for (const sub of this.subs) {
            if (sub.covers(result.channel)) sub.onState(result.channel, result.state, result.meta);
          }
        }
        return;
      }
      case "unsubscribed":
        // Without an id, it answers no request: a refreshed, narrower
        // token revoked these patterns.
        if (msg.id === undefined) return this._revoked(Array.isArray(msg.channels) ? msg.channels : []);
      // falls through
      case "subscribed":
      case "pong":
      case "authed":
      case "error": {
        for (const id of this._answered(msg.id)) this.table.release(id);
        if (msg.type === "error") {
          if (this.opts.onError) this.opts.onError(msg);
          else if (typeof console !== "undefined") console.warn("tickcast:", msg.code, msg.message);
        }
        return;
      }
      default:
        return;
    }
  }

  /**
   * The requests a reply settles: the one with its id, or (an error without
   * id, as `rate_limited`) the oldest; since replies come in request order,
   * any older request still listed got no reply and is settled with it.
   * @param {unknown} id
   * @returns {number[]}
   */
  _answered(id) {
    const at = typeof id === "number" ? this.pending.findIndex((p) => p.id === id) : 0;
    if (at < 0 || at >= this.pending.length) return [];
    return this.pending.splice(0, at + 1).map((p) => p.id);
  }
}

/** @param {any} ws */
function detach(ws) {
  if (!ws) return;
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
}

/**
 * Opens a connection that keeps itself up (see the module doc).
 * @param {string} url e.g. `ws://HOST:PORT/ws` (`wss://` behind TLS)
 * @param {ConnectOptions} [options]
 * @returns {TickcastClient}
 */
export function connect(url, options) {
  return new TickcastClient(url, options);
}
