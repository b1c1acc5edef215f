// @ts-check
// The dashboard's arithmetic, kept apart from the page so node can test it:
// rates from two /stats samples, and latency percentiles of the last
// interval from two readings of /metrics' cumulative histogram buckets
// (/stats' percentiles are since start, so they flatten out; the buckets'
// difference is what happened since the last poll).

/**
 * Cumulative bucket counts per stage from Prometheus text:
 * `tickcast_stage_latency_seconds_bucket{stage="S",le="B"} N`.
 * @param {string} text
 * @returns {Record<string, [number, number][]>} stage -> [[upper bound s, count]], bounds ascending, +Inf last
 */
export function parseStageBuckets(text) {
  /** @type {Record<string, [number, number][]>} */
  const out = {};
  const re = /^tickcast_stage_latency_seconds_bucket\{stage="([^"]+)",le="([^"]+)"\} (\d+(?:\.\d+)?(?:e[+-]?\d+)?)$/gm;
  for (let m; (m = re.exec(text)); ) {
    const bound = m[2] === "+Inf" ? Infinity : Number(m[2]);
    (out[m[1]] ||= []).push([bound, Number(m[3])]);
  }
  for (const list of Object.values(out)) list.sort((a, b) => a[0] - b[0]);
  return out;
}

/**
 * The `q` quantile (0..1) in microseconds of what was observed between two
 * readings of one stage's cumulative buckets, interpolated linearly inside
 * its bucket; null when nothing was observed. A value past the last finite
 * bound is reported as that bound.
 * @param {[number, number][] | undefined} before
 * @param {[number, number][]} now
 * @param {number} q
 * @returns {number | null}
 */
export function intervalQuantile(before, now, q) {
  const counts = now.map(([bound, n], i) => [bound, n - (before && before[i] ? before[i][1] : 0)]);
  const total = counts.length ? counts[counts.length - 1][1] : 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (const [bound, cumulative] of counts) {
    if (cumulative >= rank) {
      if (bound === Infinity) return lower * 1e6;
      const inBucket = cumulative - below;
      const share = inBucket > 0 ? (rank - below) / inBucket : 1;
      return (lower + (bound - lower) * share) * 1e6;
    }
    lower = bound === Infinity ? lower : bound;
    below = cumulative;
  }
  return lower * 1e6;
}

/**
 * Per-second rates of the counters at `paths` between two /stats samples
 * taken `seconds` apart; a counter that went down (the server restarted)
 * gives null rather than a negative rate.
 * @param {Record<string, any>} before
 * @param {Record<string, any>} now
 * @param {number} seconds
 * @param {string[]} paths dotted, e.g. "backlog.held_diffs"
 * @returns {Record<string, number | null>}
 */
export function rates(before, now, seconds, paths) {
  /** @type {Record<string, number | null>} */
  const out = {};
  for (const path of paths) {
    const a = pick(before, path), b = pick(now, path);
    out[path] = typeof a === "number" && typeof b === "number" && b >= a && seconds > 0 ? (b - a) / seconds : null;
  }
  return out;
}

/** @param {any} obj @param {string} path */
export function pick(obj, path) {
  return path.split(".").reduce((o, k) => (o && typeof o === "object" ? o[k] : undefined), obj);
}

/**
 * A bounded series of points for one chart line: at most `keep` values.
 */
export class Series {
  /** @param {number} keep */
  constructor(keep) {
    this.keep = keep;
    /** @type {(number | null)[]} */
    this.values = [];
  }
  /** @param {number | null} value */
  push(value) {
    this.values.push(value);
    if (this.values.length > this.keep) this.values.shift();
  }
}
