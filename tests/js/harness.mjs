// A fake WebSocket and a manual clock, so the client's reconnect, resume
// and ping logic runs under node's test runner without a browser or a
// server. Only what the client uses is implemented.

export class FakeClock {
  constructor() {
    this.t = 1_000_000;
    this.nextHandle = 1;
    /** @type {Map<number, {at: number, fn: () => void}>} */
    this.pending = new Map();
    this.timers = {
      setTimeout: (fn, ms) => {
        const handle = this.nextHandle++;
        this.pending.set(handle, { at: this.t + Math.max(0, ms), fn });
        return handle;
      },
      clearTimeout: (handle) => {
        this.pending.delete(handle);
      },
    };
    this.now = () => this.t;
  }

  /** Moves time forward by `ms`, running every timer that falls due, in order. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const [handle, timer] of this.pending) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) next = [handle, timer];
      }
      if (next === null) break;
      this.pending.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = end;
  }

  /** The delay of the one timer due soonest, or null. */
  soonest() {
    let best = null;
    for (const timer of this.pending.values()) if (best === null || timer.at < best) best = timer.at;
    return best === null ? null : best - this.t;
  }
}

/** Every socket the client makes, newest last. */
export function fakeSockets() {
  const made = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      made.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }
    // Test side.
    open() {
      this.readyState = 1;
      this.onopen && this.onopen({});
    }
    receive(msg) {
      this.onmessage && this.onmessage({ data: JSON.stringify(msg) });
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose && this.onclose({ code, reason });
    }
    /** The messages sent since the last call. */
    take() {
      const out = this.sent;
      this.sent = [];
      return out;
    }
  }
  return { FakeWebSocket, made };
}
