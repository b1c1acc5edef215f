// The client's pure logic: merge patch, patterns, gap check, resume
// positions, backoff and the close-code policy. `node --test tests/js/`.
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  mergePatch,
  matches,
  backoffDelay,
  reconnectHint,
  closePolicy,
  ChannelTable,
} from "../../web/tickcast.js";

test("merge patch follows RFC 7396's examples", () => {
  // RFC 7396, appendix A: [target, patch, result].
  const cases = [
    [{ a: "b" }, { a: "c" }, { a: "c" }],
    [{ a: "b" }, { b: "c" }, { a: "b", b: "c" }],
    [{ a: "b" }, { a: null }, {}],
    [{ a: "b", b: "c" }, { a: null }, { b: "c" }],
    [{ a: ["b"] }, { a: "c" }, { a: "c" }],
    [{ a: "c" }, { a: ["b"] }, { a: ["b"] }],
    [{ a: { b: "c" } }, { a: { b: "d", c: null } }, { a: { b: "d" } }],
    [{ a: [{ b: "c" }] }, { a: [1] }, { a: [1] }],
    [["a", "b"], ["c", "d"], ["c", "d"]],
    [{ a: "b" }, ["c"], ["c"]],
    [{ a: "foo" }, null, null],
    [{ a: "foo" }, "bar", "bar"],
    [{ e: null }, { a: 1 }, { e: null, a: 1 }],
    [[1, 2], { a: "b", c: null }, { a: "b" }],
    [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
  ];
  for (const [target, patch, result] of cases) {
    assert.deepEqual(mergePatch(target, patch), result, JSON.stringify([target, patch]));
  }
});

test("merge patch never changes the state it was given", () => {
  const book = { bids: { "101.5": 3, "101.4": 1 }, asks: { "101.6": 2 } };
  const before = JSON.stringify(book);
  const after = mergePatch(book, { bids: { "101.5": null, "101.3": 7 } });
  assert.equal(JSON.stringify(book), before);
  assert.deepEqual(after, { bids: { "101.4": 1, "101.3": 7 }, asks: { "101.6": 2 } });
  // Untouched members are shared, touched ones are new objects.
  assert.equal(after.asks, book.asks);
  assert.notEqual(after.bids, book.bids);
});

test("patterns match as NATS subjects", () => {
  assert.ok(matches("quotes.*", "quotes.AAPL"));
  assert.ok(!matches("quotes.*", "quotes.a.b"));
  assert.ok(!matches("quotes.*", "quotes"));
  assert.ok(matches("scores.>", "scores.epl.ARS-CHE"));
  assert.ok(matches("scores.>", "scores.nba"));
  assert.ok(!matches("scores.>", "scores"));
  assert.ok(matches("scores.*.LAL-BOS", "scores.nba.LAL-BOS"));
  assert.ok(!matches("scores.*.LAL-BOS", "scores.nba.LAL-BOS.q1"));
  assert.ok(matches("book.BTCUSDT", "book.BTCUSDT"));
  assert.ok(!matches("book.BTCUSDT", "book.BTCUSD"));
  assert.ok(matches(">", "anything.at.all"));
});

test("backoff is full jitter under a doubling, capped ceiling", () => {
  const limits = { baseMs: 500, maxMs: 30_000 };
  assert.equal(backoffDelay(0, limits, () => 0), 0);
  assert.equal(backoffDelay(0, limits, () => 0.999999), 499);
  assert.equal(backoffDelay(1, limits, () => 0.5), 500);
  assert.equal(backoffDelay(3, limits, () => 0.5), 2000);
  assert.equal(backoffDelay(6, limits, () => 0.999999), 29_999);
  assert.equal(backoffDelay(60, limits, () => 0.5), 15_000);
  // Jitter: different draws, different waits, all under the ceiling.
  const waits = new Set();
  for (let i = 0; i < 100; i++) {
    const w = backoffDelay(4, limits, Math.random);
    assert.ok(w >= 0 && w < 8000, String(w));
    waits.add(w);
  }
  assert.ok(waits.size > 50, "waits are spread out");
});

test("the reconnect hint is read from the shutdown reason", () => {
  assert.equal(reconnectHint("server restarting; reconnect_after_ms=2345"), 2345);
  assert.equal(reconnectHint("server restarting; reconnect_after_ms=0"), 0);
  assert.equal(reconnectHint("idle timeout"), null);
  assert.equal(reconnectHint(""), null);
});

test("close codes: which ones reconnect, and when", () => {
  const p = closePolicy;
  assert.deepEqual(p(1001, "server restarting; reconnect_after_ms=700"), {
    retry: true, delayMs: 700, freshToken: false, why: "server restarting",
  });
  assert.equal(p(1001, "idle timeout").delayMs, 0);
  for (const [code, reason] of [
    [1000, ""], [1006, ""], [1011, "internal error"], [1012, ""],
    [1013, "slow consumer: outbound queue full"], [1001, "going away"],
    [1008, "frame not finished within limits.frame_timeout_ms"], [1008, "write timeout"],
  ]) {
    const policy = p(code, reason);
    assert.equal(policy.retry, true, `${code} ${reason}`);
    assert.equal(policy.delayMs, null, `${code} ${reason}: backoff`);
  }
  for (const code of [1002, 1003, 1007, 1009]) {
    assert.equal(p(code, "x").retry, false, String(code));
    assert.equal(p(code, "x").freshToken, false, String(code));
  }
  assert.equal(p(1008, "message rate limit exceeded (limits.messages_per_sec)").retry, false);
  const expired = p(1008, "token expired");
  assert.equal(expired.retry, false);
  assert.equal(expired.freshToken, true);
});

const snap = (channel, seq, data, epoch = "e1", extra = {}) =>
  ({ type: "snapshot", channel, seq, epoch, data, ...extra });
const upd = (channel, seq, prev, data) =>
  ({ type: "update", channel, seq, prev, ts: 1_700_000_000_000_000_000, data });

test("snapshot then chained updates give the server's state", () => {
  const t = new ChannelTable();
  let r = t.apply(snap("quotes.A", 5, { bid: 1, ask: 2 }));
  assert.equal(r.action, "deliver");
  assert.deepEqual(r.state, { bid: 1, ask: 2 });
  assert.equal(r.meta.snapshot, true);
  r = t.apply(upd("quotes.A", 6, 5, { bid: 1.5 }));
  assert.deepEqual(r.state, { bid: 1.5, ask: 2 });
  assert.deepEqual(r.meta.patch, { bid: 1.5 });
  // With filters or coalescing seq jumps; prev still chains.
  r = t.apply(upd("quotes.A", 9, 6, { ask: null }));
  assert.deepEqual(r.state, { bid: 1.5 });
  assert.deepEqual(t.get("quotes.A"), { seq: 9, epoch: "e1", data: { bid: 1.5 } });
});

test("a prev that does not chain is a gap: nothing more is delivered until a new stream", () => {
  const t = new ChannelTable();
  t.apply(snap("quotes.A", 5, { bid: 1 }));
  const held = t.get("quotes.A");
  assert.deepEqual(t.apply(upd("quotes.A", 8, 7, { bid: 3 })), { action: "gap", channel: "quotes.A" });
  // Later updates of the old stream chain among themselves but not to us.
  assert.equal(t.apply(upd("quotes.A", 9, 8, { bid: 4 })).action, "ignore");
  assert.deepEqual(t.get("quotes.A"), held, "the state stays the last one that chained");
  // The resubscribe resumes from what we hold.
  assert.deepEqual(t.resume(["quotes.*"]), { since: { "quotes.A": 5 }, epoch: "e1" });
  t.hold(["quotes.*"], 42);
  assert.equal(t.apply(upd("quotes.A", 10, 9, { bid: 5 })).action, "ignore", "old stream set aside");
  t.release(42);
  const r = t.apply(upd("quotes.A", 6, 5, { bid: 2 }));
  assert.equal(r.action, "deliver", "the replay chains from since");
  assert.deepEqual(r.state, { bid: 2 });
});

test("an update for a channel never snapshotted is a gap", () => {
  const t = new ChannelTable();
  assert.equal(t.apply(upd("quotes.B", 3, 2, { bid: 1 })).action, "gap");
  assert.equal(t.get("quotes.B"), undefined);
  assert.equal(t.resume(["quotes.*"]), null, "nothing to resume: a plain snapshot");
});

test("only channels of the current epoch are resumed", () => {
  const t = new ChannelTable();
  t.apply(snap("quotes.A", 5, { bid: 1 }, "old"));
  t.apply(snap("quotes.B", 7, { bid: 1 }, "new"));
  assert.deepEqual(t.resume(["quotes.*"]), { since: { "quotes.B": 7 }, epoch: "new" });
  assert.deepEqual(t.resume(["quotes.A"]), null);
  assert.deepEqual(t.resume(["quotes.B", "book.*"]), { since: { "quotes.B": 7 }, epoch: "new" });
});

test("a resync snapshot replaces the state and says so", () => {
  const t = new ChannelTable();
  t.apply(snap("book.X", 5, { bids: { "1": 1, "2": 2 }, asks: {} }));
  const r = t.apply(snap("book.X", 3, { bids: { "3": 1 }, asks: {} }, "e2", { resync: true }));
  assert.deepEqual(r.state, { bids: { "3": 1 }, asks: {} });
  assert.equal(r.meta.resync, true);
  assert.equal(t.epoch, "e2");
});

test("updates of a channel not held yet wait for the pending subscribe's snapshot", () => {
  const t = new ChannelTable();
  t.hold(["quotes.*"], 7);
  // The tail of an earlier stream (unsubscribed just before): no gap.
  assert.equal(t.apply(upd("quotes.A", 9, 8, { bid: 1 })).action, "ignore");
  t.release(7);
  assert.equal(t.apply(snap("quotes.A", 12, { bid: 2 })).action, "deliver");
  // With nothing pending, the same update would be a gap.
  assert.equal(t.apply(upd("quotes.B", 9, 8, { bid: 1 })).action, "gap");
});
