// @ts-check
// The live ticker at `/`: quotes, a book ladder and trades for the selected
// symbol, scores, and a status bar. It talks to the server only through
// /tickcast.js. Settings live in the URL (?symbols=AAPL,BTC-USD&sym=AAPL&hz=4)
// so a view can be bookmarked or shared; `?token=JWT` is passed on.
import { connect } from "/tickcast.js";

/** Book levels shown a side. */
const LADDER_LEVELS = 10;
/** Trades kept in the list. */
const TRADES_KEPT = 30;

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const params = new URLSearchParams(location.search);

// ---- theme ----
const root = document.documentElement;
const savedTheme = localStorage.getItem("tickcast-theme");
root.dataset.theme = params.get("theme") || savedTheme ||
  (matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark");
$("theme").addEventListener("click", () => {
  root.dataset.theme = root.dataset.theme === "light" ? "dark" : "light";
  localStorage.setItem("tickcast-theme", root.dataset.theme);
});

// ---- settings in the URL ----
/** @param {string} text */
function parseSymbols(text) {
  return [...new Set(text.split(/[\s,]+/).map((s) => s.trim().toUpperCase()).filter((s) => /^[A-Z0-9_:-]+$/.test(s)))];
}
let symbols = parseSymbols(params.get("symbols") || "");
let selected = params.get("sym") || "";
let maxHz = Number(params.get("hz")) || 0;
/** @type {HTMLInputElement} */ (/** @type {unknown} */ ($("filter"))).value = symbols.join(" ");
/** @type {HTMLSelectElement} */ (/** @type {unknown} */ ($("maxhz"))).value = maxHz ? String(maxHz) : "";

function saveUrl() {
  const p = new URLSearchParams(location.search);
  const set = (/** @type {string} */ k, /** @type {string} */ v) => (v ? p.set(k, v) : p.delete(k));
  set("symbols", symbols.join(","));
  set("sym", selected);
  set("hz", maxHz ? String(maxHz) : "");
  const query = p.toString();
  history.replaceState(null, "", location.pathname + (query ? "?" + query.replace(/%2C/g, ",") : ""));
}

// ---- connection and status bar ----
const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
let connects = 0;
const client = connect(wsUrl, {
  token: params.get("token") || undefined,
  onStatus(status) {
    const el = $("status");
    el.dataset.state = status.state;
    if (status.state === "open") connects++;
    document.body.dataset.connects = String(connects);
    el.textContent = {
      connecting: "connecting…",
      open: "live",
      reconnecting: `reconnecting in ${((status.retryInMs || 0) / 1000).toFixed(1)} s (${status.why})`,
      closed: `disconnected: ${status.why}`,
    }[status.state];
  },
});

let applied = 0, appliedBefore = 0;
/** @type {number[]} latencies (ms) seen in the current second */
let latencies = [];
/** @param {import("/tickcast.js").StateMeta} meta */
function count(meta) {
  applied++;
  if (typeof meta.ts === "number") latencies.push(Date.now() - meta.ts / 1e6);
}
setInterval(() => {
  $("rate").textContent = `${applied - appliedBefore} upd/s`;
  appliedBefore = applied;
  if (latencies.length) {
    latencies.sort((a, b) => a - b);
    const median = latencies[Math.floor(latencies.length / 2)];
    $("latency").textContent = `latency ${median < 10 ? median.toFixed(1) : Math.round(median)} ms`;
  }
  latencies = [];
}, 1000);

// ---- rendering helpers ----
/** A number as the server sent it (no rounding); sizes may carry 8 decimals. @param {unknown} v */
function show(v) {
  if (v === undefined || v === null) return "";
  if (typeof v === "number") return Math.abs(v) >= 1e21 || v === 0 || Math.abs(v) >= 1e-6 ? String(v) : v.toFixed(10).replace(/0+$/, "");
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}
/** Text made safe for innerHTML (channel data is not ours to trust). @param {unknown} v */
function esc(v) {
  return String(v).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
const dirty = new Set();
/** @type {Map<string, {data: Record<string, any>, prev: Record<string, any>, seq: number}>} */
const quotes = new Map();
/** @type {Map<string, Record<string, any>>} */
const scores = new Map();
/** @type {{name: string, data: Record<string, any> | null}} */
const book = { name: "", data: null };
/** @type {Record<string, any>[]} */
let trades = [];

// ---- subscriptions ----
/** @type {ReturnType<typeof client.subscribe>[]} */
let mainSubs = [];
/** @type {ReturnType<typeof client.subscribe>[]} */
let symbolSubs = [];

function hz() {
  return maxHz ? { max_hz: maxHz } : {};
}

function subscribeMain() {
  for (const s of mainSubs) s.unsubscribe();
  const names = symbols.length ? symbols.map((s) => "quotes." + s) : ["quotes.*"];
  $("quotes-pattern").textContent = `(${symbols.length ? names.join(" ") : "quotes.*"})`;
  // Rows of symbols no longer asked for go.
  for (const name of [...quotes.keys()]) {
    if (symbols.length && !symbols.includes(name.slice(7))) {
      quotes.delete(name);
      document.getElementById("row-" + name)?.remove();
    }
  }
  mainSubs = [
    client.subscribe(names, hz(), (channel, data, meta) => {
      const had = quotes.get(channel);
      quotes.set(channel, { data, prev: had ? had.data : {}, seq: meta.seq });
      dirty.add(channel);
      count(meta);
    }),
    client.subscribe(["scores.>"], hz(), (channel, data, meta) => {
      scores.set(channel, data);
      dirty.add(channel);
      count(meta);
    }),
  ];
}

function subscribeSymbol() {
  for (const s of symbolSubs) s.unsubscribe();
  symbolSubs = [];
  book.name = selected ? "book." + selected : "";
  book.data = null;
  trades = [];
  dirty.add("book").add("trades");
  $("book-name").textContent = selected ? `(book.${selected})` : "(select a symbol)";
  $("trades-name").textContent = selected ? `(trades.${selected})` : "";
  if (!selected) return;
  symbolSubs = [
    client.subscribe([book.name], hz(), (_channel, data, meta) => {
      book.data = data;
      dirty.add("book");
      count(meta);
    }),
    // No max_hz: every trade is wanted (and a stream namespace refuses it).
    client.subscribe(["trades." + selected], {}, (_channel, data, meta) => {
      // The state after an update is the latest trade, whole.
      if (!trades.length || trades[0].id !== data.id || data.id === undefined) {
        trades.unshift({ ...data, seen: meta.ts ? meta.ts / 1e6 : Date.now() });
        trades.length = Math.min(trades.length, TRADES_KEPT);
      }
      dirty.add("trades");
      count(meta);
    }),
  ];
}

/** @param {string} symbol */
function select(symbol) {
  if (symbol === selected) return;
  selected = symbol;
  saveUrl();
  for (const row of document.querySelectorAll("#quotes tr.selected")) row.classList.remove("selected");
  document.getElementById("row-quotes." + symbol)?.classList.add("selected");
  subscribeSymbol();
}

/** Applies the filter box, if it names other symbols than shown now. */
function applyFilter() {
  const wanted = parseSymbols(/** @type {HTMLInputElement} */ (/** @type {unknown} */ ($("filter"))).value);
  if (wanted.join(",") === symbols.join(",")) return;
  symbols = wanted;
  saveUrl();
  subscribeMain();
}
let typing = 0;
$("filter").addEventListener("input", () => {
  // While typing, wait for a pause rather than subscribing to every prefix.
  clearTimeout(typing);
  typing = setTimeout(applyFilter, 600);
});
$("filter").addEventListener("change", applyFilter);
$("maxhz").addEventListener("change", (ev) => {
  maxHz = Number(/** @type {HTMLSelectElement} */ (ev.target).value) || 0;
  saveUrl();
  subscribeMain();
  subscribeSymbol();
});
$("quotes").addEventListener("click", (ev) => {
  const row = /** @type {HTMLElement} */ (ev.target).closest("tr");
  if (row && row.id.startsWith("row-quotes.")) select(row.id.slice("row-quotes.".length));
});

subscribeMain();
subscribeSymbol();

// ---- drawing, once per frame ----
function drawQuotes() {
  const body = $("quotes");
  const names = [...quotes.keys()].sort();
  if (!names.length) return;
  body.querySelector(".empty")?.closest("tr")?.remove();
  for (const name of names) {
    if (!dirty.has(name)) continue;
    const q = /** @type {{data: Record<string, any>, prev: Record<string, any>, seq: number}} */ (quotes.get(name));
    const d = q.data, p = q.prev;
    let row = document.getElementById("row-" + name);
    if (!row) {
      row = document.createElement("tr");
      row.id = "row-" + name;
      row.innerHTML = "<td></td><td></td><td></td><td></td>" + '<td class="hide-phone"></td>'.repeat(4);
      const after = [...body.children].find((r) => r.id > /** @type {HTMLElement} */ (row).id);
      body.insertBefore(row, after || null);
      if (name.slice(7) === selected) row.classList.add("selected");
    }
    const dir = (/** @type {string} */ k) =>
      typeof d[k] === "number" && typeof p[k] === "number" ? (d[k] > p[k] ? "up" : d[k] < p[k] ? "down" : "") : "";
    const fields = ["bid", "ask", "last", "bid_size", "ask_size", "volume"];
    const cells = row.children;
    cells[0].textContent = name.slice(7);
    fields.forEach((f, i) => {
      const cell = /** @type {HTMLElement} */ (cells[i + 1]);
      cell.textContent = show(d[f]);
      cell.dataset.field = f;
      if (i < 3) cell.className = dir(f);
    });
    cells[7].textContent = String(q.seq);
    // Restart the flash by switching between two identical animations
    // (no forced layout, which at hundreds of updates a second would stall
    // the page).
    const second = row.classList.contains("flash-a");
    row.classList.toggle("flash-a", !second);
    row.classList.toggle("flash-b", second);
  }
  if (!selected && names.length) select(names[0].slice(7));
}

function drawBook() {
  const body = $("ladder");
  const data = book.data;
  if (!data) {
    body.innerHTML = `<tr><td class="empty" colspan="2">${book.name ? "waiting for " + esc(book.name) + "…" : "click a quote to see its book"}</td></tr>`;
    return;
  }
  /** @param {any} side @param {number} dir */
  const levels = (side, dir) =>
    Object.entries(side && typeof side === "object" ? side : {})
      .filter(([, size]) => typeof size === "number")
      .sort((a, b) => dir * (Number(a[0]) - Number(b[0])))
      .slice(0, LADDER_LEVELS);
  const asks = levels(data.asks, 1).reverse(); // best ask at the bottom
  const bids = levels(data.bids, -1); // best bid at the top
  const biggest = Math.max(1e-12, ...asks.concat(bids).map(([, s]) => s));
  const row = (/** @type {string} */ side, /** @type {[string, number]} */ [price, size]) =>
    `<tr class="${side}" data-price="${esc(price)}"><td class="price"><span>${esc(show(Number(price)))}</span></td>` +
    `<td class="size"><div class="bar" style="width:${((size / biggest) * 100).toFixed(1)}%"></div><span>${esc(show(size))}</span></td></tr>`;
  const spread = asks.length && bids.length
    ? `<tr class="spread"><td colspan="2">spread ${esc(difference(asks[asks.length - 1][0], bids[0][0]))}</td></tr>`
    : `<tr class="spread"><td colspan="2">–</td></tr>`;
  body.innerHTML = asks.map((l) => row("ask", l)).join("") + spread + bids.map((l) => row("bid", l)).join("");
}

/** `a - b` of two decimal price strings, to the decimals they have (no float dust). @param {string} a @param {string} b */
function difference(a, b) {
  const decimals = (/** @type {string} */ p) => (p.includes(".") ? p.replace(/0+$/, "").split(".")[1].length : 0);
  const places = Math.min(12, Math.max(decimals(a), decimals(b)));
  return (Number(a) - Number(b)).toFixed(places);
}

function drawTrades() {
  const body = $("trades");
  if (!trades.length) {
    body.innerHTML = `<tr><td class="empty" colspan="4">${selected ? "no trades yet" : ""}</td></tr>`;
    return;
  }
  const time = (/** @type {number} */ ms) => new Date(ms).toLocaleTimeString([], { hour12: false }) +
    "." + String(Math.floor(ms % 1000)).padStart(3, "0");
  body.innerHTML = trades.map((t) => {
    const at = typeof t.exch_ts === "number" ? t.exch_ts / 1e6 : t.seen;
    const side = t.side === "buy" || t.side === "sell" ? t.side : "";
    return `<tr data-id="${esc(show(t.id))}"><td>${esc(time(at))}</td><td class="${side}">${esc(show(t.price))}</td>` +
      `<td>${esc(show(t.size))}</td><td class="${side}">${side}</td></tr>`;
  }).join("");
}

function drawScores() {
  const box = $("scores");
  const names = [...scores.keys()].sort();
  if (!names.length) return;
  box.querySelector(".empty")?.remove();
  for (const name of names) {
    if (!dirty.has(name)) continue;
    const d = /** @type {Record<string, any>} */ (scores.get(name));
    let el = document.getElementById("match-" + name);
    if (!el) {
      el = document.createElement("div");
      el.className = "match";
      el.id = "match-" + name;
      el.innerHTML = '<div class="score"><span></span><span></span></div><div class="meta"></div><div class="event"></div>';
      box.appendChild(el);
    }
    const [teams, score] = el.querySelectorAll(".score span");
    teams.textContent = `${d.home_name || d.home || "?"} – ${d.away_name || d.away || "?"}`;
    score.textContent = `${d.home_score ?? 0} : ${d.away_score ?? 0}`;
    /** @type {HTMLElement} */ (el.querySelector(".meta")).textContent =
      [name.split(".")[1], d.status, d.period !== undefined ? "period " + d.period : "", d.clock].filter(Boolean).join(" · ");
    const ev = d.last_event;
    /** @type {HTMLElement} */ (el.querySelector(".event")).textContent = ev
      ? ev.text || [ev.minute && ev.minute + "'", ev.type, ev.team].filter(Boolean).join(" ")
      : "";
  }
}

function frame() {
  if (dirty.size) {
    drawQuotes();
    drawScores();
    if (dirty.has("book")) drawBook();
    if (dirty.has("trades")) drawTrades();
    dirty.clear();
  }
  document.body.dataset.updates = String(applied); // read by the browser test
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);

// For the browser test and for poking at it from the console.
Object.assign(window, { tickcast: { client, select } });
