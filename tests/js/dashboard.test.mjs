// The dashboard's arithmetic: interval percentiles from cumulative buckets,
// counter rates, bounded series.
import { test } from "node:test";
import assert from "node:assert/strict";

import { parseStageBuckets, intervalQuantile, rates, Series } from "../../web/dashboard-data.js";

const metrics = (counts) =>
  [
    "# TYPE tickcast_stage_latency_seconds histogram",
    `tickcast_stage_latency_seconds_bucket{stage="end_to_end",le="0.00001"} ${counts[0]}`,
    `tickcast_stage_latency_seconds_bucket{stage="end_to_end",le="0.0001"} ${counts[1]}`,
    `tickcast_stage_latency_seconds_bucket{stage="end_to_end",le="0.001"} ${counts[2]}`,
    `tickcast_stage_latency_seconds_bucket{stage="end_to_end",le="+Inf"} ${counts[3]}`,
    'tickcast_stage_latency_seconds_sum{stage="end_to_end"} 0.5',
    'tickcast_stage_latency_seconds_bucket{stage="feed_to_ring",le="0.00001"} 7',
    'tickcast_stage_latency_seconds_bucket{stage="feed_to_ring",le="+Inf"} 7',
  ].join("\n");

test("buckets are read per stage, in bound order", () => {
  const b = parseStageBuckets(metrics([1, 2, 3, 4]));
  assert.deepEqual(Object.keys(b).sort(), ["end_to_end", "feed_to_ring"]);
  assert.deepEqual(b.end_to_end, [[0.00001, 1], [0.0001, 2], [0.001, 3], [Infinity, 4]]);
});

test("interval percentiles use only what happened since the last reading", () => {
  const before = parseStageBuckets(metrics([1000, 1000, 1000, 1000])).end_to_end;
  // Since then: 100 observations, all between 100 µs and 1 ms.
  const now = parseStageBuckets(metrics([1000, 1000, 1100, 1100])).end_to_end;
  const p50 = intervalQuantile(before, now, 0.5);
  assert.ok(Math.abs(p50 - 550) < 1e-6, String(p50)); // halfway through the bucket
  assert.ok(Math.abs(intervalQuantile(before, now, 0.99) - 991) < 1e-6);
  // Cumulative since start, p50 would sit under 10 µs: the interval differs.
  assert.ok(intervalQuantile(undefined, now, 0.5) <= 10);
  // Nothing new: no value rather than a stale one.
  assert.equal(intervalQuantile(now, now, 0.5), null);
  // Past the last finite bound: reported as that bound.
  const slow = parseStageBuckets(metrics([1000, 1000, 1100, 1200])).end_to_end;
  assert.equal(intervalQuantile(now, slow, 0.99), 1000);
});

test("rates are per second, and a counter that fell (restart) gives no rate", () => {
  const a = { updates_in: 100, bytes_out: 5000, backlog: { held_diffs: 2 } };
  const b = { updates_in: 400, bytes_out: 4000, backlog: { held_diffs: 6 } };
  assert.deepEqual(rates(a, b, 2, ["updates_in", "bytes_out", "backlog.held_diffs", "missing"]), {
    updates_in: 150, bytes_out: null, "backlog.held_diffs": 2, missing: null,
  });
});

test("a series keeps its last values only", () => {
  const s = new Series(3);
  for (const v of [1, 2, 3, 4, null]) s.push(v);
  assert.deepEqual(s.values, [3, 4, null]);
});
