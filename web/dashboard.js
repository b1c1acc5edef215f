// @ts-check
// The live operations view at /dashboard: polls /stats and /metrics every
// second and draws tiles and line charts on plain canvas (no library, no
// build step).
import { parseStageBuckets, intervalQuantile, rates, pick, Series } from "/dashboard-data.js";

const POLL_MS = 1000;
/** Points per chart line: two minutes at one a second. */
const KEEP = 120;
const STAGES = ["feed_to_ring", "ring_to_engine", "engine_to_queued", "queued_to_written", "end_to_end"];

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

const root = document.documentElement;
root.dataset.theme = localStorage.getItem("tickcast-theme") ||
  (matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark");
$("theme").addEventListener("click", () => {
  root.dataset.theme = root.dataset.theme === "light" ? "dark" : "light";
  localStorage.setItem("tickcast-theme", root.dataset.theme);
  for (const chart of charts) chart.draw();
});

// ---- charts ----
const PALETTE = ["#4c8dff", "#2fbf71", "#e5a50a", "#e5484d", "#a371f7", "#14b8a6"];

class Chart {
  /**
   * @param {string} id
   * @param {string} title
   * @param {string} unit
   * @param {string[]} lines
   */
  constructor(id, title, unit, lines) {
    this.unit = unit;
    this.series = lines.map((name) => ({ name, data: new Series(KEEP) }));
    const box = document.createElement("section");
    box.className = "chart";
    box.innerHTML = `<h2><span></span><span class="meta"></span></h2><canvas></canvas><div class="legend"></div>`;
    /** @type {HTMLElement} */ (box.querySelector("h2 span")).textContent = title;
    this.now = /** @type {HTMLElement} */ (box.querySelector("h2 .meta"));
    this.canvas = /** @type {HTMLCanvasElement} */ (box.querySelector("canvas"));
    this.canvas.id = "chart-" + id;
    this.canvas.dataset.points = "0";
    const legend = /** @type {HTMLElement} */ (box.querySelector(".legend"));
    this.series.forEach((s, i) => {
      const item = document.createElement("span");
      item.innerHTML = `<i style="background:${PALETTE[i % PALETTE.length]}"></i>`;
      item.append(s.name);
      legend.append(item);
    });
    $("charts").append(box);
  }

  /** @param {(number | null)[]} values one per line */
  push(values) {
    values.forEach((v, i) => this.series[i].data.push(v));
    const points = this.series[0].data.values.length;
    this.canvas.dataset.points = String(points);
    this.canvas.dataset.last = JSON.stringify(values);
    this.now.textContent = values.map((v) => fmt(v, this.unit)).join(" / ");
    this.draw();
  }

  draw() {
    const c = this.canvas, ratio = window.devicePixelRatio || 1;
    const w = Math.max(1, c.clientWidth), h = Math.max(1, c.clientHeight);
    if (c.width !== Math.round(w * ratio)) c.width = Math.round(w * ratio);
    if (c.height !== Math.round(h * ratio)) c.height = Math.round(h * ratio);
    const g = /** @type {CanvasRenderingContext2D} */ (c.getContext("2d"));
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const line = css.getPropertyValue("--line").trim(), dim = css.getPropertyValue("--dim").trim();
    const all = this.series.flatMap((s) => s.data.values).filter((v) => typeof v === "number");
    const top = niceCeiling(Math.max(0, ...all.map(Number)));
    const left = 4, right = w - 4, bottom = h - 14, up = 12;
    g.strokeStyle = line;
    g.fillStyle = dim;
    g.font = "10px system-ui, sans-serif";
    g.lineWidth = 1;
    for (const f of [0, 0.5, 1]) {
      const y = bottom - (bottom - up) * f;
      g.beginPath();
      g.moveTo(left, y);
      g.lineTo(right, y);
      g.stroke();
      g.fillText(fmt(top * f, this.unit), left + 2, y - 2);
    }
    g.fillText(`${KEEP} s`, left + 2, h - 2);
    const x = (/** @type {number} */ i) => right - (KEEP - 1 - i) * ((right - left) / (KEEP - 1));
    this.series.forEach((s, k) => {
      const values = s.data.values, offset = KEEP - values.length;
      g.strokeStyle = PALETTE[k % PALETTE.length];
      g.lineWidth = 1.5;
      g.beginPath();
      let drawing = false;
      values.forEach((v, i) => {
        if (typeof v !== "number") return void (drawing = false);
        const px = x(i + offset), py = bottom - (bottom - up) * (top ? v / top : 0);
        if (drawing) g.lineTo(px, py);
        else g.moveTo(px, py);
        drawing = true;
      });
      g.stroke();
    });
  }
}

/** 1, 2, 5 times a power of ten, at least `v`. @param {number} v */
function niceCeiling(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** @param {number | null | undefined} v @param {string} unit */
function fmt(v, unit) {
  if (typeof v !== "number") return "–";
  if (unit === "B/s" || unit === "B") {
    const units = ["", "K", "M", "G"];
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return `${v < 10 && i ? v.toFixed(1) : Math.round(v)} ${units[i]}${unit}`;
  }
  if (unit === "µs") return v === 0 ? "0 µs" : v >= 1000 ? `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)} ms` : `${v < 10 ? v.toFixed(1) : Math.round(v)} µs`;
  const text = v >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1);
  return unit ? `${text} ${unit}` : text;
}

const charts = [
  new Chart("throughput", "Updates in / deliveries out", "/s", ["updates in/s", "deliveries out/s"]),
  new Chart("bytes", "Bytes out", "B/s", ["bytes out/s"]),
  new Chart("sessions", "Connections and subscriptions", "", ["connections", "subscriptions"]),
  new Chart("backlog", "Backlog", "B", ["queued bytes", "held diff bytes"]),
  new Chart("slow", "Slow consumers", "/s", ["closes/s", "holds/s", "coalesced diffs/s"]),
  ...STAGES.map((stage) => new Chart("latency-" + stage, `Latency: ${stage.replace(/_/g, " ")}`, "µs", ["p50", "p99"])),
];
const byId = Object.fromEntries(charts.map((c) => [c.canvas.id.slice(6), c]));

// ---- tiles ----
/** @param {[string, string, boolean?][]} tiles label, value, warn */
function drawTiles(tiles) {
  $("tiles").innerHTML = "";
  for (const [label, value, warn] of tiles) {
    const el = document.createElement("div");
    el.className = "tile" + (warn ? " warn" : "");
    el.innerHTML = `<div class="label"></div><div class="value"></div>`;
    /** @type {HTMLElement} */ (el.querySelector(".label")).textContent = label;
    /** @type {HTMLElement} */ (el.querySelector(".value")).textContent = value;
    $("tiles").append(el);
  }
}

function drawFeeds(/** @type {any[]} */ feeds, /** @type {Map<string, number>} */ feedRates) {
  const body = $("feeds");
  body.innerHTML = "";
  for (const f of feeds) {
    const rejected = Object.values(f.rejected || {}).reduce((a, b) => a + Number(b), 0);
    const row = document.createElement("tr");
    const cells = [f.name, f.status, String(f.accepted), fmt(feedRates.get(f.name), ""), String(rejected), String(f.producers ?? 0)];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      row.append(td);
    }
    const status = /** @type {HTMLElement} */ (row.children[1]);
    status.className = f.status === "failed" ? "down" : f.status === "running" ? "up" : "";
    body.append(row);
  }
}

// ---- polling ----
/** @type {{at: number, stats: any, buckets: Record<string, [number, number][]>} | null} */
let last = null;
let polls = 0;

const COUNTERS = ["updates_in", "frames_written", "bytes_out", "slow_consumer_closes", "slow_consumer_holds", "coalesced_diffs"];

async function poll() {
  try {
    const [statsRes, metricsRes] = await Promise.all([fetch("/stats", { cache: "no-store" }), fetch("/metrics", { cache: "no-store" })]);
    if (!statsRes.ok || !metricsRes.ok) throw new Error(`HTTP ${statsRes.status}/${metricsRes.status}`);
    const stats = await statsRes.json();
    const buckets = parseStageBuckets(await metricsRes.text());
    const at = performance.now();
    // A new epoch is a restarted server: its counters start again.
    const prev = last && last.stats.epoch === stats.epoch ? last : null;
    const secs = prev ? (at - prev.at) / 1000 : 0;
    const r = prev ? rates(prev.stats, stats, secs, COUNTERS) : {};
    polls++;
    $("status").dataset.state = "open";
    $("status").textContent = "live";
    $("epoch").textContent = `epoch ${stats.epoch}`;
    document.body.dataset.polls = String(polls);

    byId.throughput.push([r.updates_in ?? null, r.frames_written ?? null]);
    byId.bytes.push([r.bytes_out ?? null]);
    byId.sessions.push([stats.connections, stats.subscriptions]);
    byId.backlog.push([pick(stats, "backlog.queued_bytes") ?? null, pick(stats, "backlog.held_diff_bytes") ?? null]);
    byId.slow.push([r.slow_consumer_closes ?? null, r.slow_consumer_holds ?? null, r.coalesced_diffs ?? null]);
    for (const stage of STAGES) {
      const now = buckets[stage];
      const before = prev ? prev.buckets[stage] : undefined;
      const q = (/** @type {number} */ p) => (now && prev ? intervalQuantile(before, now, p) : null);
      byId["latency-" + stage].push([q(0.5), q(0.99)]);
    }

    const e2e = pick(stats, "latency.end_to_end") || {};
    const feedRates = new Map();
    if (prev) {
      for (const f of stats.feeds || []) {
        const was = (prev.stats.feeds || []).find((/** @type {any} */ p) => p.name === f.name);
        if (was && f.accepted >= was.accepted) feedRates.set(f.name, (f.accepted - was.accepted) / secs);
      }
    }
    const failed = (stats.feeds || []).filter((/** @type {any} */ f) => f.status === "failed").length;
    drawTiles([
      ["connections", String(stats.connections)],
      ["subscriptions", String(stats.subscriptions)],
      ["channels", String(stats.channels)],
      ["updates in/s", fmt(r.updates_in, "")],
      ["deliveries out/s", fmt(r.frames_written, "")],
      ["bytes out/s", fmt(r.bytes_out, "B/s")],
      ["backlog", fmt(pick(stats, "backlog.queued_bytes"), "B"), pick(stats, "backlog.queued_bytes") > 0],
      ["held diffs", String(pick(stats, "backlog.held_diffs") ?? "–")],
      ["slow-consumer closes", String(stats.slow_consumer_closes), stats.slow_consumer_closes > 0],
      ["e2e p50 since start", fmt(e2e.p50_us, "µs")],
      ["e2e p99 since start", fmt(e2e.p99_us, "µs")],
      ["feeds failed", String(failed), failed > 0],
    ]);
    drawFeeds(stats.feeds || [], feedRates);
    last = { at, stats, buckets };
  } catch (e) {
    $("status").dataset.state = "reconnecting";
    $("status").textContent = `cannot read /stats (${e instanceof Error ? e.message : e}); retrying`;
  }
  setTimeout(poll, POLL_MS);
}
poll();
window.addEventListener("resize", () => charts.forEach((c) => c.draw()));
