// The client as a whole, on a fake WebSocket and a manual clock: subscribe,
// gap recovery, reconnect with backoff and resume, close codes, pings.
import { test } from "node:test";
import assert from "node:assert/strict";

import { connect } from "../../web/tickcast.js";
import { FakeClock, fakeSockets } from "./harness.mjs";

/** A client on fake sockets; `random` fixed so backoff waits are known. */
function setup(extra = {}) {
  const clock = new FakeClock();
  const { FakeWebSocket, made } = fakeSockets();
  const statuses = [];
  const errors = [];
  const client = connect("ws://tickcast.test/ws", {
    WebSocket: FakeWebSocket,
    timers: clock.timers,
    now: clock.now,
    random: () => 0.5,
    onStatus: (s) => statuses.push(s),
    onError: (e) => errors.push(e),
    ...extra,
  });
  return { clock, made, statuses, errors, client, ws: () => made[made.length - 1] };
}

/** Collects what `onState` gets. */
function collector() {
  const seen = [];
  const onState = (channel, state, meta) => seen.push({ channel, state, meta });
  return { seen, onState };
}

const snap = (channel, seq, data, epoch = "e1", extra = {}) =>
  ({ type: "snapshot", channel, seq, epoch, data, ...extra });
const upd = (channel, seq, prev, data) =>
  ({ type: "update", channel, seq, prev, ts: 1_700_000_000_000_000_000, data });

test("subscribe waits for the connection, then sends channels and options", () => {
  const { ws, client } = setup();
  const { onState } = collector();
  client.subscribe(["quotes.*"], { fields: ["bid", "ask"], max_hz: 4 }, onState);
  assert.deepEqual(ws().sent, [], "nothing sent before open");
  ws().open();
  assert.deepEqual(ws().take(), [
    { op: "subscribe", channels: ["quotes.*"], fields: ["bid", "ask"], max_hz: 4, id: 1 },
  ]);
  client.subscribe(["book.X"], {}, onState);
  assert.deepEqual(ws().take(), [{ op: "subscribe", channels: ["book.X"], id: 2 }]);
});

test("states follow snapshot and updates; a gap resubscribes with since and epoch and delivers nothing wrong", () => {
  const { ws, client, clock } = setup();
  const { seen, onState } = collector();
  client.subscribe(["quotes.*"], {}, onState);
  ws().open();
  ws().take();
  ws().receive({ type: "subscribed", id: 1, channels: ["quotes.*"] });
  ws().receive(snap("quotes.A", 10, { bid: 1, ask: 2 }));
  ws().receive(upd("quotes.A", 11, 10, { bid: 1.1 }));
  assert.deepEqual(seen.map((s) => [s.meta.seq, s.state]), [[10, { bid: 1, ask: 2 }], [11, { bid: 1.1, ask: 2 }]]);

  // seq 12 never came: prev 12 does not chain to 11.
  clock.advance(5000);
  ws().receive(upd("quotes.A", 13, 12, { bid: 1.3 }));
  assert.deepEqual(ws().take(), [
    { op: "subscribe", channels: ["quotes.*"], since: { "quotes.A": 11 }, epoch: "e1", id: 2 },
  ]);
  // The old stream goes on until the answer: set aside.
  ws().receive(upd("quotes.A", 14, 13, { bid: 1.4 }));
  ws().receive({ type: "subscribed", id: 2, channels: ["quotes.*"] });
  ws().receive(upd("quotes.A", 12, 11, { ask: 2.2 }));
  ws().receive(upd("quotes.A", 13, 12, { bid: 1.3 }));
  assert.deepEqual(seen.slice(2).map((s) => [s.meta.seq, s.state]), [
    [12, { bid: 1.1, ask: 2.2 }],
    [13, { bid: 1.3, ask: 2.2 }],
  ]);
  assert.deepEqual(client.state("quotes.A"), { seq: 13, epoch: "e1", data: { bid: 1.3, ask: 2.2 } });
});

test("gap resubscribes are spaced out, so a refused one is retried later, not in a storm", () => {
  const { ws, client, clock, errors } = setup({ resyncMinIntervalMs: 1000 });
  const { seen, onState } = collector();
  client.subscribe(["quotes.*"], {}, onState);
  ws().open();
  ws().receive({ type: "subscribed", id: 1, channels: ["quotes.*"] });
  ws().receive(snap("quotes.A", 1, { bid: 1 }));
  ws().take();
  ws().receive(upd("quotes.A", 3, 2, { bid: 3 }));
  assert.equal(ws().take().length, 1, "one resubscribe");
  // Refused without an id (rate_limited): the channel flows again, and the
  // next gap waits for the interval.
  ws().receive({ type: "error", code: "rate_limited", message: "slow down" });
  assert.equal(errors.length, 1);
  ws().receive(upd("quotes.A", 4, 3, { bid: 4 }));
  assert.deepEqual(ws().take(), [], "not at once");
  clock.advance(999);
  assert.deepEqual(ws().take(), []);
  clock.advance(1);
  assert.deepEqual(ws().take(), [
    { op: "subscribe", channels: ["quotes.*"], since: { "quotes.A": 1 }, epoch: "e1", id: 3 },
  ]);
  assert.equal(seen.length, 1, "only the snapshot was delivered");
});

test("a drop reconnects with backoff and resumes every subscription from what it holds", () => {
  const { ws, made, client, clock, statuses } = setup({ backoffBaseMs: 500 });
  const quotes = collector();
  const books = collector();
  client.subscribe(["quotes.*"], { max_hz: 2 }, quotes.onState);
  client.subscribe(["book.X"], {}, books.onState);
  ws().open();
  ws().receive({ type: "subscribed", id: 1, channels: ["quotes.*"] });
  ws().receive({ type: "subscribed", id: 2, channels: ["book.X"] });
  ws().receive(snap("quotes.A", 4, { bid: 1 }));
  ws().receive(snap("book.X", 9, { bids: { "1.5": 2 }, asks: {} }));
  ws().take();

  ws().serverClose(1006);
  assert.equal(made.length, 1);
  assert.deepEqual(statuses.at(-1), {
    state: "reconnecting", code: 1006, reason: "", retryInMs: 250, attempt: 1, why: "connection lost",
  });
  clock.advance(249);
  assert.equal(made.length, 1, "waits the backoff");
  clock.advance(1);
  assert.equal(made.length, 2);
  // The next connect fails too: the ceiling doubles (random 0.5 -> 500).
  ws().serverClose(1006);
  assert.equal(statuses.at(-1).retryInMs, 500);
  clock.advance(500);
  ws().open();
  assert.deepEqual(ws().take(), [
    { op: "subscribe", channels: ["quotes.*"], max_hz: 2, since: { "quotes.A": 4 }, epoch: "e1", id: 3 },
    { op: "subscribe", channels: ["book.X"], since: { "book.X": 9 }, epoch: "e1", id: 4 },
  ]);
  // Replies and replayed updates continue the states.
  ws().receive({ type: "subscribed", id: 3, channels: ["quotes.*"] });
  ws().receive({ type: "subscribed", id: 4, channels: ["book.X"] });
  ws().receive(upd("book.X", 10, 9, { bids: { "1.5": null, "1.4": 1 } }));
  assert.deepEqual(books.seen.at(-1).state, { bids: { "1.4": 1 }, asks: {} });
});

test("after a restart (new epoch) the resync snapshots replace the states", () => {
  const { ws, client, clock } = setup();
  const { seen, onState } = collector();
  client.subscribe(["quotes.*"], {}, onState);
  ws().open();
  ws().receive({ type: "subscribed", id: 1, channels: ["quotes.*"] });
  ws().receive(snap("quotes.A", 40, { bid: 1 }));
  ws().serverClose(1001, "server restarting; reconnect_after_ms=1200");
  clock.advance(1199);
  ws().open; // not yet made
  clock.advance(1);
  ws().open();
  assert.deepEqual(ws().take(), [
    { op: "subscribe", channels: ["quotes.*"], since: { "quotes.A": 40 }, epoch: "e1", id: 2 },
  ]);
  ws().receive({ type: "subscribed", id: 2, channels: ["quotes.*"] });
  ws().receive(snap("quotes.A", 3, { bid: 7 }, "e2", { resync: true }));
  assert.deepEqual(seen.at(-1).state, { bid: 7 });
  assert.equal(seen.at(-1).meta.resync, true);
  assert.deepEqual(client.state("quotes.A"), { seq: 3, epoch: "e2", data: { bid: 7 } });
});

test("the restart hint is the wait, however long the backoff has grown", () => {
  const { ws, made, statuses, clock } = setup();
  for (let i = 0; i < 4; i++) {
    ws().serverClose(1006);
    clock.advance(clock.soonest());
  }
  ws().open();
  ws().serverClose(1001, "server restarting; reconnect_after_ms=77");
  assert.equal(statuses.at(-1).retryInMs, 77);
  const before = made.length;
  clock.advance(77);
  assert.equal(made.length, before + 1);
});

test("do-not-retry close codes end the client; a token function gets another try after 1008", () => {
  for (const [code, reason] of [[1009, "too big"], [1002, "bad frame"], [1008, "token expired"]]) {
    const { ws, made, statuses, clock } = setup();
    ws().open();
    ws().serverClose(code, reason);
    clock.advance(120_000);
    assert.equal(made.length, 1, `${code}: no reconnect`);
    assert.equal(statuses.at(-1).state, "closed");
    assert.equal(statuses.at(-1).code, code);
  }
  let tokens = 0;
  const { ws, made, clock } = setup({ token: () => `t${++tokens}` });
  assert.equal(ws().url, "ws://tickcast.test/ws?token=t1");
  ws().open();
  ws().serverClose(1008, "token expired");
  clock.advance(clock.soonest());
  assert.equal(made.length, 2);
  assert.equal(ws().url, "ws://tickcast.test/ws?token=t2", "a fresh token");
});

test("a quiet connection is pinged, and one that does not answer is dropped and replaced", () => {
  const { ws, made, client, clock, statuses } = setup({ pingAfterMs: 20_000, pongTimeoutMs: 10_000 });
  client.subscribe(["quotes.*"]);
  ws().open();
  ws().take();
  ws().receive({ type: "subscribed", id: 1, channels: ["quotes.*"] });
  clock.advance(19_000);
  assert.deepEqual(ws().take(), [], "no ping while not quiet for long");
  clock.advance(6_000);
  assert.deepEqual(ws().take(), [{ op: "ping", id: 2 }]);
  ws().receive({ type: "pong", id: 2 });
  // Answered: no drop. Now it goes silent for good.
  clock.advance(25_000);
  assert.deepEqual(ws().take(), [{ op: "ping", id: 3 }]);
  const first = ws();
  clock.advance(10_000);
  assert.deepEqual(first.closedWith, { code: 4000, reason: "no answer to ping" });
  assert.ok(statuses.some((s) => s.state === "reconnecting" && s.why === "connection lost"));
  clock.advance(clock.soonest() ?? 0);
  assert.equal(made.length, 2, "a new connection");
});

test("unsubscribe sends only patterns no other subscription lists and forgets uncovered channels", () => {
  const { ws, client } = setup();
  const a = collector();
  const b = collector();
  const all = client.subscribe(["quotes.*"], {}, a.onState);
  const one = client.subscribe(["quotes.*", "book.X"], {}, b.onState);
  ws().open();
  ws().receive({ type: "subscribed", id: 1, channels: ["quotes.*"] });
  ws().receive({ type: "subscribed", id: 2, channels: ["quotes.*", "book.X"] });
  ws().receive(snap("quotes.A", 1, { bid: 1 }));
  ws().receive(snap("book.X", 1, { bids: {}, asks: {} }));
  assert.equal(a.seen.length, 1);
  assert.equal(b.seen.length, 2);
  ws().take();
  one.unsubscribe();
  assert.deepEqual(ws().take(), [{ op: "unsubscribe", channels: ["book.X"], id: 3 }]);
  assert.equal(client.state("book.X"), undefined);
  assert.deepEqual(client.state("quotes.A").data, { bid: 1 });
  // In flight after the unsubscribe: not delivered, not an error.
  ws().receive(upd("book.X", 2, 1, { bids: { "1": 1 } }));
  assert.equal(b.seen.length, 2);
  all.unsubscribe();
  assert.deepEqual(ws().take(), [{ op: "unsubscribe", channels: ["quotes.*"], id: 4 }]);
});

test("patterns a narrower token revoked leave their subscriptions; pending requests stay pending", () => {
  const { ws, client, errors } = setup({ token: "wide" });
  const a = collector();
  const mixed = client.subscribe(["quotes.*", "scores.*"], {}, a.onState);
  ws().open();
  ws().receive({ type: "subscribed", id: 1, channels: ["quotes.*", "scores.*"] });
  ws().receive(snap("quotes.A", 1, { bid: 1 }));
  ws().receive(snap("scores.X", 1, { home: 0 }));
  ws().take();
  client.auth("narrow");
  const later = client.subscribe(["scores.Y"], {}, a.onState);
  assert.deepEqual(ws().take().map((m) => m.id), [2, 3]);
  ws().receive({ type: "authed", id: 2, exp: 1763703600 });
  ws().receive({ type: "unsubscribed", channels: ["quotes.*"] });
  assert.equal(client.state("quotes.A"), undefined);
  assert.deepEqual(client.state("scores.X").data, { home: 0 });
  assert.deepEqual(mixed.channels, ["scores.*"]);
  assert.equal(errors.length, 1);
  assert.match(errors[0].message, /quotes\.\*/);
  // The subscribe sent after the auth is still waiting for its answer.
  ws().receive({ type: "subscribed", id: 3, channels: ["scores.Y"] });
  ws().receive(snap("scores.Y", 1, { home: 2 }));
  assert.deepEqual(client.state("scores.Y").data, { home: 2 });
  assert.ok(later.active);
  // A late frame of a revoked channel is not delivered.
  const before = a.seen.length;
  ws().receive(upd("quotes.A", 2, 1, { bid: 2 }));
  assert.equal(a.seen.length, before);
});

test("close() is final: no reconnect", () => {
  const { ws, made, client, clock, statuses } = setup();
  ws().open();
  client.close();
  assert.equal(ws().closedWith.code, 1000);
  clock.advance(120_000);
  assert.equal(made.length, 1);
  assert.equal(statuses.at(-1).state, "closed");
});

test("auth sends a fresh token on the open connection and uses it for reconnects", () => {
  const { ws, made, client, clock } = setup({ token: "old" });
  assert.equal(ws().url, "ws://tickcast.test/ws?token=old");
  ws().open();
  client.auth("new");
  assert.deepEqual(ws().take(), [{ op: "auth", token: "new", id: 1 }]);
  ws().receive({ type: "authed", id: 1, exp: 1763703600 });
  ws().serverClose(1006);
  clock.advance(clock.soonest());
  assert.equal(made.length, 2);
  assert.equal(ws().url, "ws://tickcast.test/ws?token=new");
});
