// csatdist dashboard: plain ES module, no dependencies, same origin only (strict CSP).
// Data arrives over the push stream (SSE read with fetch, so the credential travels in a
// header, never in a URL); if streaming fails it polls with conditional GET (ETag / 304).
// Two views: Live (the distribution's window, pushed) and History (reports over calendar
// periods in a time zone). Names for ids come from the account's directory.

const STORE_KEY = "csatdist.dashboard";
// Preferences only (never a credential): the grey-out threshold, the row order, History's choices.
const PREFS_KEY = "csatdist.dashboard.prefs";
const POLL_SECONDS = 5;
const DIRECTORY_SECONDS = 60;
const $ = (id) => document.getElementById(id);

let credentials = load();
let prefs = loadPrefs();
let subscriptions = [];
let sortState = {
  skills: ["total", "descending"],
  agents: ["total", "descending"],
  "h-skills": ["total", "descending"],
  "h-agents": ["total", "descending"],
};
let latest = { main: null, series: null };
// The selection the numbers on screen were queried with (the pick lists may hold an unapplied one).
let applied = null;

// ---------------------------------------------------------------- credentials (sessionStorage)

function load() {
  try {
    return JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
  } catch {
    return null;
  }
}

function save(value) {
  credentials = value;
  if (value) sessionStorage.setItem(STORE_KEY, JSON.stringify(value));
  else sessionStorage.removeItem(STORE_KEY);
}

function authHeaders() {
  return { Authorization: `Bearer ${credentials.token}` };
}

function loadPrefs() {
  const defaults = { minAnswers: 10, order: "column", range: "7d", granularity: "day", tz: "" };
  try {
    const stored = JSON.parse(localStorage.getItem(PREFS_KEY) || "{}");
    return { ...defaults, ...(stored && typeof stored === "object" ? stored : {}) };
  } catch {
    return defaults;
  }
}

function savePrefs(changes) {
  prefs = { ...prefs, ...changes };
  try {
    localStorage.setItem(PREFS_KEY, JSON.stringify(prefs));
  } catch {
    // storage full or disabled: the preference lasts as long as the page
  }
}

// ---------------------------------------------------------------- sign in / out

function showSignIn(message) {
  closeAnswers();
  stopAll();
  stopDirectory();
  resetHistory();
  for (const kind of ["skills", "agents"]) {
    known[kind].clear();
    directory[kind].clear();
    for (const id of [kind, `h-${kind}`]) $(id).replaceChildren(new Option(`All ${kind}`, "all", true, true));
  }
  $("main").hidden = true;
  $("sign-out").hidden = true;
  $("signin").hidden = false;
  $("signin-message").textContent = message || "";
  setLive("not connected", "off");
  if (credentials) $("account").value = credentials.account;
  save(null);
  ($("account").value ? $("token") : $("account")).focus();
}

function showMain() {
  $("signin").hidden = true;
  $("main").hidden = false;
  $("sign-out").hidden = false;
  $("account-name").textContent = `· account ${credentials.account}`;
  startDirectory();
  start();
  showView(location.hash === "#history" ? "history" : "live");
}

async function signIn(event) {
  event.preventDefault();
  const account = $("account").value.trim();
  const method = document.querySelector("input[name=method]:checked").value;
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(account)) {
    $("signin-message").textContent = "The account id is 1-64 letters, digits, '-' or '_'.";
    return;
  }
  let token = $("token").value.trim();
  if (method === "login") {
    const response = await fetch(`/api/account/${account}/login?v=1.3`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    });
    if (response.status === 429) {
      $("signin-message").textContent = "Too many failed attempts; wait a few minutes.";
      return;
    }
    if (!response.ok) {
      $("signin-message").textContent = "Wrong username or password.";
      return;
    }
    token = (await response.json()).bearer;
  }
  if (!token) {
    $("signin-message").textContent = "Enter an API key.";
    return;
  }
  const check = await fetch(queryUrl(account, { timeframe: "5" }), {
    headers: { Authorization: `Bearer ${token}` },
  });
  if (check.status === 401) {
    $("signin-message").textContent = "This key is not valid for this account.";
    return;
  }
  $("password").value = "";
  $("token").value = "";
  save({ account, token });
  showMain();
}

// ---------------------------------------------------------------- controls

function intervalChoices(timeframe) {
  return [5, 10, 15, 30, 60, 120].filter((m) => m <= timeframe && timeframe % m === 0);
}

function autoInterval(timeframe) {
  const choices = intervalChoices(timeframe);
  return choices.find((m) => timeframe / m <= 24) || choices[choices.length - 1];
}

function fillIntervals() {
  const timeframe = Number($("timeframe").value);
  const select = $("interval");
  const previous = select.value;
  select.replaceChildren(new Option(`auto (${autoInterval(timeframe)} min)`, "auto"));
  for (const m of intervalChoices(timeframe)) select.add(new Option(`${m} minutes`, String(m)));
  select.value = [...select.options].some((o) => o.value === previous) ? previous : "auto";
}

// The pick lists (Live and History): "all", or ids chosen among every skill and agent seen in
// the data or named in the directory, labelled "Billing (12)".
const known = { skills: new Set(), agents: new Set() };

function picked(id) {
  const values = [...$(id).selectedOptions].map((o) => o.value);
  return !values.length || values.includes("all") ? "all" : values.join(",");
}

function remember(kind, ids) {
  const before = known[kind].size;
  for (const id of ids) known[kind].add(String(id));
  if (known[kind].size !== before) fillPickLists(kind);
}

// Named ones first, by name; then bare ids, by number; "Unassigned" last.
function byLabel(kind) {
  return (a, b) => {
    const rank = (id) => (id === "-1" ? 2 : directory[kind].has(id) ? 0 : 1);
    return rank(a) - rank(b) || collator.compare(label(kind, a), label(kind, b)) || Number(a) - Number(b);
  };
}

function fillPickLists(kind) {
  const ids = [...known[kind]].sort(byLabel(kind));
  for (const selectId of [kind, `h-${kind}`]) {
    const select = $(selectId);
    const chosen = new Set([...select.selectedOptions].map((o) => o.value));
    const options = [new Option(`All ${kind}`, "all", false, chosen.has("all") || !chosen.size)];
    for (const id of ids) options.push(new Option(label(kind, id), id, false, chosen.has(id)));
    select.replaceChildren(...options);
  }
}

function selection() {
  const timeframe = Number($("timeframe").value);
  const interval = $("interval").value === "auto" ? autoInterval(timeframe) : Number($("interval").value);
  return { timeframe, interval, skills: picked("skills"), agents: picked("agents") };
}

// ---------------------------------------------------------------- names (the directory)
// GET /api/account/{id}/directory at sign-in, every minute, and when the answers panel meets a
// name the directory does not have yet (answers carrying names update it on the server).

const directory = { skills: new Map(), agents: new Map() };
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
let directoryTimer = 0;
let directoryLoading = null;

// "Billing (12)"; the bare id when the directory has no name; skill or agent -1: "Unassigned".
function label(kind, id) {
  const key = String(id);
  if (key === "-1") return "Unassigned";
  const name = directory[kind].get(key);
  return name ? `${name} (${key})` : key;
}

function startDirectory() {
  stopDirectory();
  refreshDirectory();
  directoryTimer = setInterval(refreshDirectory, DIRECTORY_SECONDS * 1000);
}

function stopDirectory() {
  clearInterval(directoryTimer);
  directoryTimer = 0;
  directoryLoading = null;
}

function refreshDirectory() {
  if (!credentials) return Promise.resolve();
  directoryLoading ??= readDirectory(credentials).finally(() => {
    directoryLoading = null;
  });
  return directoryLoading;
}

async function readDirectory(signedIn) {
  let body;
  try {
    const response = await fetch(`/api/account/${signedIn.account}/directory`, { headers: authHeaders() });
    if (credentials !== signedIn) return;
    if (response.status === 401) {
      showSignIn("Your credential was refused or has expired. Sign in again.");
      return;
    }
    if (!response.ok) return; // busy or failing: the names shown stay; the next refresh tries again
    body = await response.json();
  } catch {
    return; // the network failed: as above
  }
  if (credentials !== signedIn) return;
  let changed = false;
  for (const kind of ["skills", "agents"]) {
    const names = new Map(Object.entries(body[kind] || {}));
    const current = directory[kind];
    if (names.size !== current.size || [...names].some(([id, name]) => current.get(id) !== name)) {
      directory[kind] = names;
      changed = true;
    }
    for (const id of names.keys()) known[kind].add(id);
  }
  if (changed) namesChanged();
}

// New names: every place that shows an id shows it again.
function namesChanged() {
  fillPickLists("skills");
  fillPickLists("agents");
  if (latest.main) renderMain(latest.main);
  if (trend.data) renderHistory();
  if (answers) renderAnswersHead();
}

// The answers panel met a name the directory does not have (or has differently): read it again,
// at most every few seconds.
let directoryAskedAt = -Infinity;
function answersMetNames(records) {
  const stale = records.some(
    (r) =>
      (r.skillName && directory.skills.get(String(r.skillId)) !== r.skillName) ||
      (r.agentName && directory.agents.get(String(r.agentId)) !== r.agentName),
  );
  if (!stale || performance.now() - directoryAskedAt < 5000) return;
  directoryAskedAt = performance.now();
  refreshDirectory();
}

// ---------------------------------------------------------------- small samples (Wilson)
// The 95% Wilson score interval of positive / total: the same formula, z and edge cases as
// src/csatdist/report/metrics.py (wilson_interval). null when there are no answers.
const Z_95 = 1.959963984540054;

function wilson(positive, total) {
  if (!(total > 0)) return null;
  const z2 = Z_95 * Z_95;
  const spread = Z_95 * Math.sqrt(z2 + (4 * positive * (total - positive)) / total);
  const denominator = 2 * (total + z2);
  const low = positive === 0 ? 0 : (2 * positive + z2 - spread) / denominator;
  const high = positive === total ? 1 : (2 * positive + z2 + spread) / denominator;
  const clamp = (x) => Math.min(Math.max(x, 0), 1);
  return [clamp(low), clamp(high)];
}

// "69–86": the interval's ends in whole percent.
function rangeText(interval) {
  return `${Math.round(interval[0] * 100)}–${Math.round(interval[1] * 100)}`;
}

// ---------------------------------------------------------------- data flow

function queryUrl(account, params) {
  const search = new URLSearchParams({ v: "1", ...params });
  return `/operations/api/account/${account}/msgcsatdistribution?${search}`;
}

function streamUrl(account, params) {
  return `/api/account/${account}/csat/stream?${new URLSearchParams(params)}`;
}

function plans(s) {
  const main = { timeframe: String(s.timeframe), skillIds: s.skills, agentIds: s.agents };
  const series = { timeframe: String(s.timeframe), interval: String(s.interval) };
  if (s.skills !== "all") series.skillIds = s.skills;
  if (s.agents !== "all") series.agentIds = s.agents;
  return { main, series };
}

function start() {
  stopAll();
  notice("");
  applied = selection();
  const { main, series } = plans(applied);
  subscriptions = [subscribe("main", main, renderMain), subscribe("series", series, renderSeries)];
}

function stopAll() {
  for (const sub of subscriptions) sub.stop();
  subscriptions = [];
}

class HttpError extends Error {
  constructor(response, detail = "", invalid = []) {
    super(detail || `HTTP ${response.status}`);
    this.status = response.status;
    this.retryAfter = Number(response.headers.get("Retry-After")) || 0;
    this.invalid = invalid; // the problem's invalid_params: [{name, reason}]
  }

  // With the problem document's detail (RFC 9457) as the message, when the reply has one.
  static async of(response) {
    let detail = "";
    let invalid = [];
    try {
      const problem = await response.json();
      invalid = Array.isArray(problem.invalid_params) ? problem.invalid_params : [];
      const broken = invalid.map((p) => `${p.name} ${p.reason}`);
      detail = problem.detail || broken.join("; ");
    } catch {
      // not a problem document: the status says enough
    }
    return new HttpError(response, detail, invalid);
  }
}

// One live view of one query: push stream first, conditional-GET polling as the fallback.
function subscribe(name, params, render) {
  const controller = new AbortController();
  const state = { stopped: false, streamFailures: 0, lastId: "", etag: "", backoff: 1 };
  const account = credentials.account;

  const stop = () => {
    state.stopped = true;
    controller.abort();
  };

  const handleError = async (error) => {
    if (state.stopped || error.name === "AbortError") return false;
    if (error.status === 401) {
      showSignIn("Your credential was refused or has expired. Sign in again.");
      return false;
    }
    if (error.status === 429) {
      const wait = Math.max(error.retryAfter, state.backoff);
      state.backoff = Math.min(state.backoff * 2, 60);
      notice(`Rate limited by the server — retrying in ${wait} s.`);
      setLive("rate limited", "off");
      await sleep(wait * 1000, controller.signal);
      return true;
    }
    return true;
  };

  const onData = (document, fromPush) => {
    state.backoff = 1;
    notice("");
    setLive(fromPush ? "live (push)" : `live (polling every ${POLL_SECONDS} s)`, fromPush ? "on" : "polling");
    latest[name] = document;
    render(document);
  };

  async function stream() {
    const headers = { ...authHeaders(), Accept: "text/event-stream" };
    if (state.lastId) headers["Last-Event-ID"] = state.lastId;
    const response = await fetch(streamUrl(account, params), { headers, signal: controller.signal });
    if (!response.ok || !response.body) throw new HttpError(response);
    setLive("live (push)", "on");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = {};
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const at = line.indexOf(": ");
          if (at > 0) event[line.slice(0, at)] = line.slice(at + 2);
        }
        if (event.event === "distribution") {
          state.lastId = event.id || "";
          state.streamFailures = 0;
          onData(JSON.parse(event.data), true);
        } else if (event.event === "unauthorized") {
          throw Object.assign(new Error("unauthorized"), { status: 401 });
        } else if (event.event === "problem") {
          notice(`The server reports a problem: ${JSON.parse(event.data).detail}`, true);
        }
      }
    }
  }

  async function poll() {
    const headers = { ...authHeaders() };
    if (state.etag) headers["If-None-Match"] = state.etag;
    const response = await fetch(queryUrl(account, params), { headers, signal: controller.signal });
    if (response.status === 304) return;
    if (!response.ok) throw new HttpError(response);
    state.etag = response.headers.get("ETag") || "";
    const window = {
      start: Number(response.headers.get("X-CSAT-Window-Start")),
      end: Number(response.headers.get("X-CSAT-Window-End")),
    };
    onData({ window, body: await response.json() }, false);
  }

  (async () => {
    while (!state.stopped) {
      try {
        if (state.streamFailures < 3 && "body" in Response.prototype) {
          await stream();
          state.streamFailures += 1; // the server closed it: reconnect, resuming by event id
          await sleep(1000, controller.signal);
        } else {
          await poll();
          await sleep(POLL_SECONDS * 1000, controller.signal);
        }
      } catch (error) {
        if (!(await handleError(error))) return;
        if (error.status !== 429) {
          state.streamFailures += 1;
          setLive("reconnecting…", "off");
          await sleep(2000, controller.signal).catch(() => {});
        }
      }
    }
  })();
  return { stop };
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

// ---------------------------------------------------------------- rendering

const pct = (x) => `${(x * 100).toFixed(1)}%`;
const fmt = new Intl.NumberFormat();
const time = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const day = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

// "Nov 27 12:25 – 13:30", with the end's day too when it is another one.
function span(window) {
  const start = new Date(window.start);
  const end = new Date(window.end);
  const endDay = day.format(end) === day.format(start) ? "" : `${day.format(end)} `;
  return `${day.format(start)} ${time.format(start)} – ${endDay}${time.format(end)}`;
}

function totalsOf(body) {
  return body.metricsTotals || body.skillsMetricsPerAgent?.metricsTotals || body.agentsMetrics?.metricsTotals;
}

function renderMain({ window, body }) {
  const totals = totalsOf(body);
  $("score").textContent = totals.total_answers ? pct(totals.csat_score) : "–";
  $("total").textContent = fmt.format(totals.total_answers);
  $("positive").textContent = fmt.format(totals.positive_answers);
  $("empty").hidden = totals.total_answers > 0;
  $("window").textContent = `Window ${span(window)} (whole 5-minute buckets; updated ${time.format(new Date())})`;
  renderBars(totals);
  const skills = body.skillsMetricsPerAgent?.metricsPerSkill || {};
  remember("skills", Object.keys(skills));
  remember("agents", Object.keys(body.agentsMetrics?.metricsPerAgent || {}));
  const agents = body.agentsMetrics?.metricsPerAgent || {};
  renderLiveTable("skills", Object.entries(skills).map(([id, entry]) => metricRow("skills", id, entry.metricsTotals)));
  renderLiveTable("agents", Object.entries(agents).map(([id, m]) => metricRow("agents", id, m)));
  answersSeeNumbers({ window, body });
}

// The bars are built once and updated in place, so a focused bar keeps focus as data arrives.
function renderBars(totals) {
  const list = $("distribution");
  if (list.children.length !== 5) {
    list.replaceChildren();
    for (let score = 5; score >= 1; score -= 1) {
      const item = document.createElement("li");
      item.className = `s${score}`;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "bar";
      button.dataset.score = String(score);
      button.dataset.focusKey = `score:${score}`;
      button.setAttribute("aria-haspopup", "dialog");
      button.setAttribute("aria-describedby", "drill-hint");
      const label = document.createElement("span");
      label.textContent = `${score}`;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      track.append(fill);
      const value = document.createElement("span");
      value.className = "count";
      button.append(label, track, value);
      item.append(button);
      list.append(item);
    }
  }
  for (const button of list.querySelectorAll("button")) {
    const score = Number(button.dataset.score);
    const count = totals[`csat_score${score}_answers`];
    const share = totals.total_answers ? count / totals.total_answers : 0;
    button.querySelector(".fill").style.width = `${(share * 100).toFixed(2)}%`;
    button.querySelector(".count").textContent = `${fmt.format(count)} · ${pct(share)}`;
    button.setAttribute("aria-label", `Score ${score}: ${fmt.format(count)} answers, ${pct(share)}`);
  }
}

function renderSeries({ body }) {
  const svg = $("series");
  const points = (body.metricsByIntervals || []).map((entry) => ({ t: entry.timestamp, m: totalsOf(entry.metricsData) }));
  svg.replaceChildren();
  if (!points.length) return;
  const W = 800, H = 240, top = 10, bottom = 24;
  const plot = H - top - bottom;
  const maxVolume = Math.max(1, ...points.map((p) => p.m.total_answers));
  const step = W / points.length;
  const ns = "http://www.w3.org/2000/svg";
  const el = (tag, attrs) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    svg.append(node);
    return node;
  };
  for (const level of [0, 0.5, 1]) el("line", { class: "grid-line", x1: 0, x2: W, y1: top + plot * (1 - level), y2: top + plot * (1 - level) });
  const line = [];
  points.forEach((p, i) => {
    const h = (p.m.total_answers / maxVolume) * plot;
    el("rect", { class: "vol", x: i * step + step * 0.15, width: step * 0.7, y: top + plot - h, height: h });
    if (p.m.total_answers) line.push(`${i * step + step / 2},${top + plot * (1 - p.m.csat_score)}`);
  });
  if (line.length) el("polyline", { class: "line", points: line.join(" ") });
  const labels = Math.min(points.length, 6);
  for (let k = 0; k < labels; k += 1) {
    const i = Math.round((k * (points.length - 1)) / Math.max(labels - 1, 1));
    const text = el("text", { x: i * step + step / 2, y: H - 6, "text-anchor": "middle" });
    text.textContent = time.format(new Date(points[i].t));
  }
  const scored = points.filter((p) => p.m.total_answers);
  $("series-summary").textContent = scored.length
    ? `${points.length} intervals; ${scored.length} with answers; score from ${pct(Math.min(...scored.map((p) => p.m.csat_score)))} to ${pct(Math.max(...scored.map((p) => p.m.csat_score)))}; most answers in one interval: ${maxVolume}.`
    : `${points.length} intervals, none with answers.`;
}

// ---------------------------------------------------------------- skill and agent tables
// One renderer for the four tables (Live and History): sortable headings, each score with its
// 95% Wilson interval (text and a small band), rows with fewer answers than the threshold
// greyed, and the "worst with confidence" order.

function node(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

// A table row's data: the id, its label and its numbers (m may be absent: no answers).
function metricRow(kind, id, m) {
  const total = m?.total_answers ?? 0;
  const positive = m?.positive_answers ?? 0;
  return {
    id: String(id),
    label: label(kind, id),
    total,
    positive,
    score: total ? m.csat_score : null,
    interval: wilson(positive, total),
    s5: m?.csat_score5_answers ?? 0,
    s4: m?.csat_score4_answers ?? 0,
    s3: m?.csat_score3_answers ?? 0,
    s2: m?.csat_score2_answers ?? 0,
    s1: m?.csat_score1_answers ?? 0,
  };
}

function scoreCell(td, row) {
  td.className = "score";
  if (row.score === null) {
    td.textContent = "–";
    td.classList.add("muted");
    return;
  }
  const [low, high] = row.interval;
  const band = node("span", "ci-band");
  band.setAttribute("aria-hidden", "true");
  const range = node("span", "range");
  range.style.left = `${(low * 100).toFixed(2)}%`;
  range.style.width = `${((high - low) * 100).toFixed(2)}%`;
  const mark = node("span", "mark");
  mark.style.left = `${(row.score * 100).toFixed(2)}%`;
  band.append(range, mark);
  const ci = node("span", "ci", rangeText(row.interval));
  ci.setAttribute("aria-hidden", "true");
  const spoken = node("span", "sr-only", ` (95% interval: ${Math.round(low * 100)} to ${Math.round(high * 100)}%)`);
  td.append(node("span", "pct", pct(row.score)), " ", ci, spoken, band);
  td.title = `95% interval (Wilson) from ${pct(low)} to ${pct(high)}, from ${fmt.format(row.total)} answer${row.total === 1 ? "" : "s"}`;
}

const count = (key) => (td, row) => {
  td.textContent = fmt.format(row[key]);
};

const LIVE_COLUMNS = [
  { key: "label", title: "" },
  { key: "total", title: "Answers", cell: count("total") },
  { key: "score", title: "CSAT · 95% range", cell: scoreCell },
  { key: "positive", title: "Positive", cell: count("positive") },
  { key: "s5", title: "5", cell: count("s5") },
  { key: "s4", title: "4", cell: count("s4") },
  { key: "s3", title: "3", cell: count("s3") },
  { key: "s2", title: "2", cell: count("s2") },
  { key: "s1", title: "1", cell: count("s1") },
];

// Rows without the value (no answers, no previous period) go last in either direction.
function byColumn(key, direction) {
  const sign = direction === "ascending" ? 1 : -1;
  return (a, b) => {
    if (key === "label") return sign * collator.compare(a.label, b.label) || Number(a.id) - Number(b.id);
    const x = a[key], y = b[key];
    if (x === null || y === null) return (x === null) - (y === null) || collator.compare(a.label, b.label);
    return sign * (x - y) || collator.compare(a.label, b.label);
  };
}

// "Worst with confidence": the lowest upper end of the 95% interval first, i.e. who is surely
// worst — even the most favourable reading of its answers is that low. One of two answers
// positive (50 %, upper end 91 %) comes after 400 answers at 72 % (upper end 76 %): the 400 are
// surely below 76 %, the two may well be fine. (The lower end would answer "who might be worst"
// and put every tiny sample first.) Rows without answers have no evidence and go last.
function worstWithConfidence(a, b) {
  const top = (row) => (row.interval ? row.interval[1] : 2);
  return top(a) - top(b) || (a.score ?? 2) - (b.score ?? 2) || b.total - a.total || collator.compare(a.label, b.label);
}

// spec: {table (its id), kind, rows, columns, drill (rows open the answers), onSort, empty}
function renderMetricTable(spec) {
  const table = $(spec.table);
  const state = spec.table.replace(/-table$/, "");
  // Rebuilt on every update: put focus back on the same button afterwards.
  const focused = table.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
  const [key, direction] = sortState[state];
  const worst = prefs.order === "worst";
  const rows = [...spec.rows].sort(worst ? worstWithConfidence : byColumn(key, direction));
  const noun = spec.kind === "skills" ? "Skill" : "Agent";
  const caption = node("caption", "sr-only");
  const head = document.createElement("thead");
  const headRow = head.insertRow();
  for (const column of spec.columns) {
    const th = document.createElement("th");
    th.scope = "col";
    const title = column.key === "label" ? noun : column.title;
    if (!worst && column.key === key) {
      th.setAttribute("aria-sort", direction);
      caption.textContent = `${spec.kind === "skills" ? "Skills" : "Agents"}, by ${title.toLowerCase()}, ${direction}.`;
    }
    const button = node("button", "link", title);
    button.type = "button";
    button.dataset.focusKey = `sort:${column.key}`;
    button.addEventListener("click", () => {
      const same = !worst && sortState[state][0] === column.key;
      sortState[state] = [column.key, same && direction === "descending" ? "ascending" : "descending"];
      if (worst) setOrder("column");
      spec.onSort();
      document.querySelector(`#${spec.table} th[aria-sort] button`)?.focus();
    });
    th.append(button);
    headRow.append(th);
  }
  if (worst) {
    caption.textContent = `${spec.kind === "skills" ? "Skills" : "Agents"}, worst with confidence first: by the top of the 95% interval, lowest first.`;
  }
  const minimum = prefs.minAnswers;
  const tbody = document.createElement("tbody");
  for (const row of rows) {
    const tr = tbody.insertRow();
    tr.dataset.id = row.id;
    const name = document.createElement("th");
    name.scope = "row";
    if (spec.drill) {
      tr.className = "drill";
      const open = node("button", "link", row.label);
      open.type = "button";
      open.dataset.focusKey = `row:${row.id}`;
      open.setAttribute("aria-haspopup", "dialog");
      open.setAttribute("aria-describedby", "drill-hint");
      name.append(open);
    } else {
      name.textContent = row.label;
    }
    if (row.total < minimum) {
      tr.classList.add("thin");
      tr.title = `Fewer than ${fmt.format(minimum)} answers: too few to judge`;
      name.append(node("span", "sr-only", ` (fewer than ${fmt.format(minimum)} answers: too few to judge)`));
    }
    tr.append(name);
    for (const column of spec.columns.slice(1)) column.cell(tr.insertCell(), row);
  }
  if (!rows.length) {
    const cell = tbody.insertRow().insertCell();
    cell.colSpan = spec.columns.length;
    cell.textContent = spec.empty;
  }
  table.replaceChildren(caption, head, tbody);
  if (focused) table.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();
}

function renderLiveTable(kind, rows) {
  renderMetricTable({
    table: `${kind}-table`,
    kind,
    rows,
    columns: LIVE_COLUMNS,
    drill: true,
    empty: `No ${kind} with answers in this window.`,
    onSort: () => latest.main && renderMain(latest.main),
  });
}

// The table options shared by every table: the grey-out threshold and the order.
function setOrder(order) {
  savePrefs({ order });
  $("order").value = order;
}

function rerenderTables() {
  if (latest.main) renderMain(latest.main);
  if (trend.data) renderHistoryTables();
}

function wireTableTools() {
  $("min-answers").value = String(prefs.minAnswers);
  $("order").value = prefs.order === "worst" ? "worst" : "column";
  $("min-answers").addEventListener("input", () => {
    const value = Math.floor(Number($("min-answers").value));
    if (!Number.isFinite(value) || value < 1 || value > 100000) return; // keep the last good one
    savePrefs({ minAnswers: value });
    rerenderTables();
  });
  $("order").addEventListener("change", () => {
    savePrefs({ order: $("order").value });
    rerenderTables();
  });
}

function notice(text, isError = false) {
  const box = $("notice");
  box.hidden = !text;
  box.textContent = text;
  box.classList.toggle("error", isError);
}

function setLive(text, kind) {
  const live = $("live");
  live.textContent = text;
  live.className = `live ${kind}`;
}

// ---------------------------------------------------------------- History
// Reports over calendar periods in a time zone (GET …/csat/report). Four requests per view:
//  1. the range by period, compare=previous: the chart, the headline, and the previous range
//     (its exact from/to and totals);
//  2. the range in total by skill and by agent: the tables;
//  3. the previous range by period: the dashed line. compare=previous gives the previous range's
//     totals only; its own report, aligned period by period, draws it. Both ranges end on a
//     period boundary (the previous one ends where this one starts) while the previous one may
//     start inside a period (a DST hour makes the ranges 1 h longer or shorter than whole days),
//     so periods are matched counting from the end;
//  4. the previous range in total by skill and by agent: each row's change.
// The chart's request names skills/agents only when filtered (their series are not needed), so
// a long hourly range is not refused for the series of every agent.

const trend = { controller: null, data: null, active: -1, pending: 0 };

// Names ICU (so Chromium) still reports for some zones, and their current IANA names.
const CURRENT_ZONE_NAMES = {
  "Asia/Calcutta": "Asia/Kolkata",
  "Asia/Katmandu": "Asia/Kathmandu",
  "Asia/Saigon": "Asia/Ho_Chi_Minh",
  "Asia/Rangoon": "Asia/Yangon",
  "Europe/Kiev": "Europe/Kyiv",
  "America/Godthab": "America/Nuuk",
  "Atlantic/Faeroe": "Atlantic/Faroe",
  "Pacific/Enderbury": "Pacific/Kanton",
  "Pacific/Truk": "Pacific/Chuuk",
  "Pacific/Ponape": "Pacific/Pohnpei",
  "America/Buenos_Aires": "America/Argentina/Buenos_Aires",
  "America/Indianapolis": "America/Indiana/Indianapolis",
  "America/Louisville": "America/Kentucky/Louisville",
};

function browserZone() {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  return CURRENT_ZONE_NAMES[zone] || zone;
}

function fillZones() {
  let zones = [];
  try {
    zones = Intl.supportedValuesOf("timeZone");
  } catch {
    // an older browser: any IANA name can still be typed
  }
  const names = new Set(zones.map((zone) => CURRENT_ZONE_NAMES[zone] || zone));
  names.add("UTC");
  $("h-tz-list").replaceChildren(...[...names].sort().map((zone) => new Option(zone, zone)));
}

function formatter(tz, options) {
  try {
    return new Intl.DateTimeFormat(undefined, { ...options, timeZone: tz });
  } catch {
    return new Intl.DateTimeFormat(undefined, { ...options, timeZone: "UTC" }); // the server knows it; this browser does not
  }
}

// Today's date in `tz`, "YYYY-MM-DD" (the API reads a date as midnight in tz).
function todayIn(tz) {
  const parts = formatter(tz, { year: "numeric", month: "2-digit", day: "2-digit" }).formatToParts(Date.now());
  const part = (type) => parts.find((p) => p.type === type).value;
  return `${part("year")}-${part("month")}-${part("day")}`;
}

function addDays(date, days) {
  const [y, m, d] = date.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d + days)).toISOString().slice(0, 10);
}

function firstOfNextMonth(date) {
  const [y, m] = date.split("-").map(Number);
  return new Date(Date.UTC(y, m, 1)).toISOString().slice(0, 10);
}

// The range as dates: presets end with today (whole days in tz), custom "through" is inclusive.
function historyQuery() {
  const tz = $("h-tz").value.trim() || "UTC";
  const range = $("h-range").value;
  const today = todayIn(tz);
  let from;
  let to;
  if (range === "7d" || range === "30d") {
    from = addDays(today, range === "7d" ? -6 : -29);
    to = addDays(today, 1);
  } else if (range === "month") {
    from = `${today.slice(0, 8)}01`;
    to = firstOfNextMonth(today);
  } else {
    from = $("h-from").value;
    to = $("h-to").value && addDays($("h-to").value, 1);
  }
  return { tz, range, from, to, granularity: $("h-granularity").value, skills: picked("h-skills"), agents: picked("h-agents") };
}

const FIELDS = { from: "h-from", to: "h-to", tz: "h-tz", granularity: "h-granularity", skillIds: "h-skills", agentIds: "h-agents", compare: "h-range" };

function fieldOf(param) {
  if ((param === "from" || param === "to") && $("h-range").value !== "custom") return "h-range";
  return FIELDS[param];
}

function fieldError(control, text) {
  const box = $(`${control}-error`);
  box.textContent = box.textContent ? `${box.textContent} ${text}` : text;
  box.hidden = false;
  $(control).setAttribute("aria-invalid", "true");
}

function clearFieldErrors() {
  for (const control of new Set(Object.values(FIELDS))) {
    $(`${control}-error`).textContent = "";
    $(`${control}-error`).hidden = true;
    $(control).removeAttribute("aria-invalid");
  }
  $("h-error").hidden = true;
}

function reportUrl(params) {
  return `/api/account/${credentials.account}/csat/report?${new URLSearchParams(params)}`;
}

async function getReport(params, signal) {
  const response = await fetchPatiently(reportUrl(params), { headers: authHeaders(), signal }, (wait) => {
    $("h-status").textContent = `The server is busy (429) — retrying in ${wait} s.`;
  });
  return response.json();
}

let historyTimer = 0;
function scheduleHistory() {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(loadHistory, 0); // a change and a submit from one Enter: one load
}

async function loadHistory() {
  if (!credentials) return;
  trend.controller?.abort();
  const controller = new AbortController();
  trend.controller = controller;
  const signal = controller.signal;
  clearFieldErrors();
  const q = historyQuery();
  savePrefs({ range: q.range, granularity: q.granularity, tz: $("h-tz").value.trim() });
  if (q.range === "custom" && (!q.from || !q.to)) {
    if (!q.from) fieldError("h-from", "Choose the first day.");
    if (!q.to) fieldError("h-to", "Choose the last day.");
    return;
  }
  const base = { from: q.from, to: q.to, tz: q.tz };
  const filters = {};
  if (q.skills !== "all") filters.skillIds = q.skills;
  if (q.agents !== "all") filters.agentIds = q.agents;
  const groups = { skillIds: q.skills, agentIds: q.agents };
  $("history-view").setAttribute("aria-busy", "true");
  $("h-status").textContent = "Loading the report…";
  try {
    let note = "";
    const seriesRequest = getReport({ ...base, granularity: q.granularity, ...filters, compare: "previous" }, signal).catch((error) => {
      // Only the comparison is impossible (it would reach before the history): show the range alone.
      if (error.status !== 400 || !error.invalid.length || error.invalid.some((p) => p.name !== "compare")) throw error;
      note = `No previous period: ${error.invalid.map((p) => p.reason).join("; ")}`;
      return getReport({ ...base, granularity: q.granularity, ...filters }, signal);
    });
    const [current, totals] = await Promise.all([seriesRequest, getReport({ ...base, granularity: "total", ...groups }, signal)]);
    if (signal.aborted) return;
    trend.data = { query: q, current, totals, previous: null, previousTotals: null, note, at: Date.now() };
    $("history-view").classList.remove("stale");
    trend.active = -1;
    renderHistory();
    if (current.previous) {
      const range = { from: String(current.previous.from), to: String(current.previous.to), tz: q.tz };
      const [previous, previousTotals] = await Promise.all([
        getReport({ ...range, granularity: q.granularity, ...filters }, signal),
        getReport({ ...range, granularity: "total", ...groups }, signal),
      ]);
      if (signal.aborted) return;
      Object.assign(trend.data, { previous, previousTotals });
      renderHistory();
    }
    $("h-status").textContent = note;
  } catch (error) {
    if (signal.aborted) return;
    if (error.status === 401) {
      showSignIn("Your credential was refused or has expired. Sign in again.");
      return;
    }
    // What is on screen is no longer what the controls say: dimmed, and said so.
    $("h-status").textContent = trend.data ? `Still showing the last report that loaded (${rangeNamer(trend.data.query.tz)(trend.data.current)}, ${trend.data.current.tz}).` : "";
    $("history-view").classList.toggle("stale", Boolean(trend.data));
    if (error.status === 400 && error.invalid.length) {
      for (const problem of error.invalid) {
        const control = fieldOf(problem.name);
        if (control) fieldError(control, problem.reason);
        else showHistoryError(`The server refused this report: ${problem.name} ${problem.reason}`);
      }
      $(fieldOf(error.invalid[0].name) || "h-range").focus();
    } else {
      showHistoryError(`Could not load the report: ${error.message}`);
    }
  } finally {
    if (trend.controller === controller) {
      trend.controller = null;
      $("history-view").removeAttribute("aria-busy");
    }
  }
}

function showHistoryError(text) {
  const box = $("h-error");
  box.textContent = box.hidden ? text : `${box.textContent} ${text}`;
  box.hidden = false;
}

function resetHistory() {
  trend.controller?.abort();
  trend.controller = null;
  trend.data = null;
  trend.active = -1;
  clearFieldErrors();
  $("h-status").textContent = "";
  $("history-view").classList.remove("stale");
  for (const id of ["h-score", "h-total", "h-change"]) $(id).textContent = "–";
  for (const id of ["h-range-ci", "h-previous", "h-window", "h-chart-summary", "h-readout"]) $(id).textContent = "";
  for (const id of ["h-chart", "h-periods", "h-skills-table", "h-agents-table"]) $(id).replaceChildren();
  $("h-tip").hidden = true;
}

// Periods: the chart's, each with the previous range's period at the same place from the end.
function historyPoints() {
  const { current, previous } = trend.data;
  const before = previous?.series || [];
  const offset = before.length - current.series.length;
  return current.series.map((period, i) => ({ ...period, previous: previous ? before[i + offset] || null : undefined }));
}

const PERIOD_FORMATS = {
  hour: { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" },
  day: { weekday: "short", month: "short", day: "numeric" },
  week: { month: "short", day: "numeric" },
  month: { month: "long", year: "numeric" },
};
const AXIS_FORMATS = {
  hour: { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" },
  day: { month: "short", day: "numeric" },
  week: { month: "short", day: "numeric" },
  month: { month: "short", year: "numeric" },
};

function periodNamer(tz, granularity) {
  const format = formatter(tz, PERIOD_FORMATS[granularity] || PERIOD_FORMATS.day);
  return (period) => (granularity === "week" ? `Week of ${format.format(period.start)}` : format.format(period.start));
}

// A period ({start, end}) or a report's range ({from, to}) in words: whole days as dates
// ("Tue, Nov 24", "Nov 16 – Nov 22, 2026", the last day included), anything else to the minute.
function rangeNamer(tz) {
  const clock = formatter(tz, { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  const oneDay = formatter(tz, { weekday: "short", month: "short", day: "numeric" });
  const dayOnly = formatter(tz, { month: "short", day: "numeric" });
  const withYear = formatter(tz, { month: "short", day: "numeric", year: "numeric" });
  const exact = formatter(tz, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  const timeOnly = formatter(tz, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  const zone = formatter(tz, { timeZoneName: "short" });
  const midnight = (instant) => {
    const parts = clock.formatToParts(instant);
    return parts.find((p) => p.type === "hour").value === "00" && parts.find((p) => p.type === "minute").value === "00";
  };
  return (period) => {
    const start = period.start ?? period.from;
    const end = period.end ?? period.to;
    if (midnight(start) && midnight(end)) {
      const last = end - 3_600_000 * 12; // inside the last day, whatever its length
      if (dayOnly.format(start) === dayOnly.format(last)) return oneDay.format(start);
      return `${dayOnly.format(start)} – ${withYear.format(last)}`;
    }
    const zoneName = zone.formatToParts(end).find((p) => p.type === "timeZoneName")?.value || "";
    const sameDay = dayOnly.format(start) === dayOnly.format(end - 1);
    return `${exact.format(start)} – ${(sameDay ? timeOnly : exact).format(end)} ${zoneName}`.trim();
  };
}

function changeOf(now, before) {
  if (!now?.total_answers || !before?.total_answers) return null;
  return (now.csat_score - before.csat_score) * 100;
}

// "▲ 3.2 pts": the arrow and the words carry the direction, the colour only repeats it.
function changeParts(points) {
  if (points === null) return { text: "–", spoken: "no change to show", className: "muted" };
  const rounded = Math.round(points * 10) / 10;
  if (rounded === 0) return { text: "= 0.0 pts", spoken: "unchanged", className: "same" };
  const up = rounded > 0;
  const size = Math.abs(rounded).toFixed(1);
  return { text: `${up ? "▲" : "▼"} ${size} pts`, spoken: `${up ? "up" : "down"} ${size} points`, className: up ? "up" : "down" };
}

function changeCell(td, row) {
  const change = changeParts(row.change);
  td.className = `change ${change.className}`;
  const shown = node("span", "", change.text);
  shown.setAttribute("aria-hidden", "true");
  td.append(shown, node("span", "sr-only", change.spoken));
}

function previousCell(td, row) {
  if (row.previousScore === null) {
    td.textContent = "–";
    td.className = "muted";
    return;
  }
  td.append(pct(row.previousScore), node("span", "muted small", ` of ${fmt.format(row.previousTotal)}`));
}

const HISTORY_COLUMNS = [
  { key: "label", title: "" },
  { key: "total", title: "Answers", cell: count("total") },
  { key: "score", title: "CSAT · 95% range", cell: scoreCell },
  { key: "previousScore", title: "Previous period", cell: previousCell },
  { key: "change", title: "Change", cell: changeCell },
];

function renderHistory() {
  const data = trend.data;
  const { current, query } = data;
  const totals = current.metricsTotals;
  const interval = wilson(totals.positive_answers, totals.total_answers);
  $("h-score").textContent = totals.total_answers ? pct(totals.csat_score) : "–";
  $("h-range-ci").textContent = interval ? `95% interval ${rangeText(interval)}%` : "";
  $("h-total").textContent = fmt.format(totals.total_answers);
  const before = current.previous?.metricsTotals;
  const change = changeParts(before ? changeOf(totals, before) : null);
  const changeBox = $("h-change");
  changeBox.textContent = before ? change.text : "–";
  changeBox.className = `kpi-value change ${before ? change.className : "muted"}`;
  const spanOf = rangeNamer(query.tz);
  $("h-previous").textContent = before
    ? `previous period ${spanOf(current.previous)}: ${before.total_answers ? pct(before.csat_score) : "–"} of ${fmt.format(before.total_answers)} answers`
    : data.note || "";
  const noun = query.granularity;
  const as = formatter(query.tz, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(data.at);
  $("h-window").textContent = `${spanOf(current)} (${current.tz}), per ${noun}, as of ${as}`;
  $("h-chart-title").textContent = `Score and answers per ${noun}`;
  for (const kind of ["skills", "agents"]) remember(kind, Object.keys(data.totals[kind] || {}));
  renderTrend();
  renderPeriods();
  renderHistoryTables();
}

function renderHistoryTables() {
  const data = trend.data;
  for (const kind of ["skills", "agents"]) {
    const now = data.totals[kind] || {};
    const before = data.previousTotals?.[kind] || {};
    const ids = new Set([...Object.keys(now), ...Object.keys(before)]);
    const rows = [...ids].map((id) => {
      const m = now[id]?.metricsTotals;
      const was = before[id]?.metricsTotals;
      return {
        ...metricRow(kind, id, m),
        previousScore: was?.total_answers ? was.csat_score : null,
        previousTotal: was?.total_answers ?? 0,
        change: data.previousTotals ? changeOf(m, was) : null,
      };
    });
    renderMetricTable({
      table: `h-${kind}-table`,
      kind,
      rows,
      columns: HISTORY_COLUMNS,
      drill: false,
      empty: `No ${kind} with answers in this range.`,
      onSort: renderHistoryTables,
    });
  }
}

function renderPeriods() {
  const { query } = trend.data;
  const name = periodNamer(query.tz, query.granularity);
  const table = $("h-periods");
  const head = document.createElement("thead");
  const headRow = head.insertRow();
  for (const title of ["Period", "Answers", "CSAT", "95% interval", "Previous period", "Its answers"]) {
    const th = node("th", "", title);
    th.scope = "col";
    headRow.append(th);
  }
  const tbody = document.createElement("tbody");
  for (const point of historyPoints()) {
    const tr = tbody.insertRow();
    const th = node("th", "", name(point));
    th.scope = "row";
    tr.append(th);
    const m = point.metrics;
    const interval = wilson(m.positive_answers, m.total_answers);
    tr.insertCell().textContent = fmt.format(m.total_answers);
    tr.insertCell().textContent = m.total_answers ? pct(m.csat_score) : "–";
    tr.insertCell().textContent = interval ? `${rangeText(interval)}%` : "–";
    const was = point.previous?.metrics;
    tr.insertCell().textContent = was?.total_answers ? pct(was.csat_score) : "–";
    tr.insertCell().textContent = was ? fmt.format(was.total_answers) : "–";
  }
  table.replaceChildren(node("caption", "sr-only", "The numbers per period"), head, tbody);
}

const SVG = "http://www.w3.org/2000/svg";
const CHART = { W: 800, H: 280, left: 46, right: 10, top: 12, bottom: 30 };

function renderTrend() {
  const svg = $("h-chart");
  svg.replaceChildren();
  const { query } = trend.data;
  const points = historyPoints();
  const { W, H, left, right, top, bottom } = CHART;
  const plotW = W - left - right;
  const plotH = H - top - bottom;
  const step = plotW / Math.max(points.length, 1);
  const x = (i) => left + step * (i + 0.5);
  const y = (v) => top + plotH * (1 - v);
  const draw = (tag, attrs, parent = svg) => {
    const element = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) element.setAttribute(k, String(v));
    parent.append(element);
    return element;
  };
  for (const level of [0, 0.25, 0.5, 0.75, 1]) {
    draw("line", { class: "grid-line", x1: left, x2: W - right, y1: y(level), y2: y(level) });
    if (level % 0.5 === 0) draw("text", { x: left - 6, y: y(level) + 4, "text-anchor": "end" }).textContent = `${level * 100}%`;
  }
  // Answers per period: bars in the lower half, on their own scale.
  const maxVolume = Math.max(1, ...points.map((p) => p.metrics.total_answers));
  const bars = draw("g", { class: "vol" });
  points.forEach((p, i) => {
    const h = (p.metrics.total_answers / maxVolume) * plotH * 0.5;
    if (h > 0) draw("rect", { x: x(i) - step * 0.35, width: Math.max(step * 0.7, 0.5), y: top + plotH - h, height: h }, bars);
  });
  $("h-volume-scale").textContent = `(the tallest bar: ${fmt.format(maxVolume)})`;
  // Runs of periods with answers: a line never bridges an empty period.
  const runsOf = (values) => {
    const runs = [];
    let run = [];
    values.forEach((value, i) => {
      if (value) {
        run.push([i, value]);
      } else if (run.length) {
        runs.push(run);
        run = [];
      }
    });
    if (run.length) runs.push(run);
    return runs;
  };
  const scored = points.map((p) => (p.metrics.total_answers ? p.metrics : null));
  const intervals = scored.map((m) => m && wilson(m.positive_answers, m.total_answers));
  for (const run of runsOf(intervals)) {
    if (run.length === 1) {
      const [i, [low, high]] = run[0];
      draw("line", { class: "band-whisker", x1: x(i), x2: x(i), y1: y(low), y2: y(high) });
    } else {
      const upper = run.map(([i, [, high]]) => `${x(i)},${y(high)}`);
      const lower = run.map(([i, [low]]) => `${x(i)},${y(low)}`).reverse();
      draw("polygon", { class: "band", points: [...upper, ...lower].join(" ") });
    }
  }
  const dots = points.length <= 62;
  const line = (values, className) => {
    for (const run of runsOf(values)) {
      if (run.length > 1) draw("polyline", { class: className, points: run.map(([i, m]) => `${x(i)},${y(m.csat_score)}`).join(" ") });
      if (run.length === 1 || (dots && className === "line")) {
        for (const [i, m] of run) draw("circle", { class: `${className}-dot`, cx: x(i), cy: y(m.csat_score), r: 3.5 });
      }
    }
  };
  if (trend.data.previous) line(points.map((p) => (p.previous?.metrics.total_answers ? p.previous.metrics : null)), "previous");
  line(scored, "line");
  // Labels on the time axis: at most 8, evenly spaced.
  const axis = formatter(query.tz, AXIS_FORMATS[query.granularity] || AXIS_FORMATS.day);
  const labels = Math.min(points.length, query.granularity === "hour" ? 6 : 8);
  for (let k = 0; k < labels; k += 1) {
    const i = Math.round((k * (points.length - 1)) / Math.max(labels - 1, 1));
    draw("text", { x: x(i), y: H - 8, "text-anchor": labels === 1 ? "middle" : k === 0 ? "start" : k === labels - 1 ? "end" : "middle" }).textContent = axis.format(points[i].start);
  }
  draw("line", { id: "h-cursor", class: "cursor", x1: 0, x2: 0, y1: top, y2: top + plotH, visibility: "hidden" });
  trend.geometry = { x, step, left, count: points.length };
  const withAnswers = scored.filter(Boolean);
  const name = periodNamer(query.tz, query.granularity);
  $("h-chart-summary").textContent = withAnswers.length
    ? `${points.length} periods, ${withAnswers.length} with answers; the score ranges from ${pct(Math.min(...withAnswers.map((m) => m.csat_score)))} to ${pct(Math.max(...withAnswers.map((m) => m.csat_score)))}; most answers in one period: ${fmt.format(maxVolume)}${trend.data.previous ? "; the dashed line is the previous period" : ""}. First period: ${name(points[0])}.`
    : `${points.length} periods, none with answers.`;
  if (trend.active >= points.length) trend.active = -1;
  if (trend.active >= 0) showPoint(trend.active, false);
}

function tipText(point) {
  const { query } = trend.data;
  const name = periodNamer(query.tz, query.granularity);
  const spanOf = rangeNamer(query.tz);
  const m = point.metrics;
  const interval = wilson(m.positive_answers, m.total_answers);
  // The exact span too when the name does not say it all (a week, a month, a clipped period).
  const spanned = spanOf(point);
  const head = query.granularity === "hour" || spanned === name(point) ? spanned : `${name(point)} (${spanned})`;
  const lines = [head];
  lines.push(m.total_answers ? `CSAT ${pct(m.csat_score)}, 95% interval ${rangeText(interval)}%` : "No answers");
  lines.push(`${fmt.format(m.total_answers)} answer${m.total_answers === 1 ? "" : "s"}, ${fmt.format(m.positive_answers)} positive`);
  if (point.previous) {
    const was = point.previous.metrics;
    lines.push(`Previous period (${name(point.previous)}): ${was.total_answers ? pct(was.csat_score) : "no answers"}, ${fmt.format(was.total_answers)} answer${was.total_answers === 1 ? "" : "s"}`);
  } else if (point.previous === null) {
    lines.push("Previous period: none at this place");
  }
  return lines;
}

function showPoint(index, announce) {
  const points = historyPoints();
  if (!points.length) return;
  trend.active = Math.max(0, Math.min(index, points.length - 1));
  const point = points[trend.active];
  const lines = tipText(point);
  const tip = $("h-tip");
  tip.replaceChildren(...lines.map((text, i) => node("span", i === 0 ? "tip-head" : "", text)));
  tip.hidden = false;
  const { x } = trend.geometry;
  const cursor = $("h-cursor");
  cursor.setAttribute("x1", x(trend.active));
  cursor.setAttribute("x2", x(trend.active));
  cursor.setAttribute("visibility", "visible");
  // Beside the cursor (right of it, or left where there is no room), not over the line.
  const box = $("h-chart").getBoundingClientRect();
  const at = (x(trend.active) / CHART.W) * box.width;
  const width = tip.offsetWidth;
  const gap = 12;
  tip.style.left = `${at + gap + width <= box.width ? at + gap : Math.max(0, at - gap - width)}px`;
  if (announce) $("h-readout").textContent = lines.join(". ");
}

function hidePoint() {
  $("h-tip").hidden = true;
  $("h-cursor")?.setAttribute("visibility", "hidden");
}

function wireTrend() {
  const svg = $("h-chart");
  svg.addEventListener("mousemove", (event) => {
    if (!trend.data || !trend.geometry) return;
    const box = svg.getBoundingClientRect();
    const at = ((event.clientX - box.left) / box.width) * CHART.W;
    const { step, left, count } = trend.geometry;
    const index = Math.floor((at - left) / step);
    if (index >= 0 && index < count) showPoint(index, false);
  });
  svg.addEventListener("mouseleave", () => {
    if (document.activeElement !== svg) hidePoint();
  });
  svg.addEventListener("focus", () => {
    if (!trend.data) return;
    const points = historyPoints();
    let last = points.length - 1;
    while (last > 0 && !points[last].metrics.total_answers) last -= 1; // the latest with answers
    showPoint(trend.active >= 0 ? trend.active : last, true);
  });
  svg.addEventListener("blur", hidePoint);
  svg.addEventListener("keydown", (event) => {
    if (!trend.data) return;
    const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowDown: -1, ArrowUp: 1 };
    const count = trend.geometry.count;
    let index = trend.active;
    if (event.key in moves) index += moves[event.key];
    else if (event.key === "Home") index = 0;
    else if (event.key === "End") index = count - 1;
    else if (event.key === "Escape") return hidePoint();
    else return;
    event.preventDefault();
    showPoint(index, true);
  });
}

// ---------------------------------------------------------------- views (tabs)

function showView(name) {
  const past = name === "history";
  for (const [tab, selected] of [["tab-live", !past], ["tab-history", past]]) {
    $(tab).setAttribute("aria-selected", String(selected));
    $(tab).tabIndex = selected ? 0 : -1;
  }
  $("live-view").hidden = past;
  $("history-view").hidden = !past;
  $(past ? "history-tables" : "live-tables").append($("table-tools"));
  history.replaceState(null, "", past ? "#history" : location.pathname);
  if (past && !trend.data && !trend.controller) loadHistory();
}

function wireViews() {
  const tabs = ["tab-live", "tab-history"];
  for (const id of tabs) {
    $(id).addEventListener("click", () => showView(id === "tab-history" ? "history" : "live"));
    $(id).addEventListener("keydown", (event) => {
      const at = tabs.indexOf(id);
      const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (to === undefined) return;
      event.preventDefault();
      const next = tabs[(to + tabs.length) % tabs.length];
      $(next).focus();
      showView(next === "tab-history" ? "history" : "live");
    });
  }
}

function wireHistory() {
  fillZones();
  $("h-tz").value = prefs.tz || browserZone();
  if (["7d", "30d", "month", "custom"].includes(prefs.range)) $("h-range").value = prefs.range;
  if (["hour", "day", "week", "month"].includes(prefs.granularity)) $("h-granularity").value = prefs.granularity;
  const showCustom = () => {
    const custom = $("h-range").value === "custom";
    for (const field of document.querySelectorAll("[data-custom]")) field.hidden = !custom;
    if (custom && !$("h-from").value && !$("h-to").value) {
      const today = todayIn($("h-tz").value.trim() || "UTC");
      $("h-from").value = addDays(today, -6);
      $("h-to").value = today;
    }
  };
  showCustom();
  $("h-range").addEventListener("change", () => {
    showCustom();
    scheduleHistory();
  });
  for (const id of ["h-granularity", "h-tz", "h-from", "h-to"]) $(id).addEventListener("change", scheduleHistory);
  $("h-controls").addEventListener("submit", (event) => {
    event.preventDefault();
    scheduleHistory();
  });
  wireTrend();
}

// ---------------------------------------------------------------- the answers behind a number
// A score bar, a skill row or an agent row opens the answer records behind its number: the
// clicked filter combined with the applied timeframe, skills and agents, read over the very
// window that number was counted in (a fixed `from`/`to`), so the list is its population and
// paging by cursor stays stable while time passes and answers arrive.

const PAGE_SIZE = 50;
const CHECK_SIZE = 100;
const stamp = new Intl.DateTimeFormat(undefined, {
  month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
});
let answers = null; // the open panel's state

function countFor(filter, body) {
  let metrics = totalsOf(body);
  if (filter.skill !== null) metrics = body.skillsMetricsPerAgent?.metricsPerSkill?.[filter.skill]?.metricsTotals;
  else if (filter.agent !== null) metrics = body.agentsMetrics?.metricsPerAgent?.[filter.agent];
  if (!metrics) return 0;
  return filter.score ? metrics[`csat_score${filter.score}_answers`] : metrics.total_answers;
}

function listingParams(filter, window) {
  const params = {
    from: String(window.start),
    to: String(window.end),
    skillIds: filter.skill ?? filter.skills,
    agentIds: filter.agent ?? filter.agents,
  };
  if (filter.score) params.scores = String(filter.score);
  return params;
}

function answersUrl(params) {
  return `/api/account/${credentials.account}/csat/answers?${new URLSearchParams(params)}`;
}

function minutes(m) {
  return m >= 120 && m % 60 === 0 ? `${m / 60} h` : `${m} min`;
}

// In the panel's title the kind is spelled out: "Billing (skill 12)", "agent 1015".
function whoLabel(kind, id) {
  if (id === "-1") return `unassigned ${kind}`;
  const name = directory[`${kind}s`].get(id);
  return name ? `${name} (${kind} ${id})` : `${kind} ${id}`;
}

function groupLabel(kind, ids) {
  const list = ids.split(",");
  if (list.length === 1) return whoLabel(kind, list[0]);
  return `${kind}s ${list.map((id) => (id === "-1" ? "unassigned" : label(`${kind}s`, id))).join(", ")}`;
}

function filterLabel(filter) {
  const parts = [];
  if (filter.score) parts.push(`score ${filter.score}`);
  if (filter.skill !== null) parts.push(whoLabel("skill", filter.skill));
  else if (filter.skills !== "all") parts.push(groupLabel("skill", filter.skills));
  if (filter.agent !== null) parts.push(whoLabel("agent", filter.agent));
  else if (filter.agents !== "all") parts.push(groupLabel("agent", filter.agents));
  parts.push(`last ${minutes(filter.timeframe)}`);
  const text = parts.join(" · ");
  return text[0].toUpperCase() + text.slice(1);
}

function fileName(filter, window) {
  const ids = (kind, value) => {
    const list = value.split(",").map((id) => (id === "-1" ? "unassigned" : id));
    return list.length > 4 ? `${list.length}-${kind}s` : `${kind}-${list.join("-")}`;
  };
  const parts = ["csat-answers", credentials.account];
  if (filter.score) parts.push(`score-${filter.score}`);
  const skills = filter.skill ?? filter.skills;
  const agents = filter.agent ?? filter.agents;
  if (skills !== "all") parts.push(ids("skill", skills));
  if (agents !== "all") parts.push(ids("agent", agents));
  parts.push(`${filter.timeframe}min`);
  parts.push(new Date(window.start).toISOString().slice(0, 16).replace(/[-:]/g, "") + "Z");
  return `${parts.join("_").replace(/[^A-Za-z0-9._-]/g, "")}.csv`;
}

// fetch, waiting as told (Retry-After, at least a doubling backoff) while the server says 429.
async function fetchPatiently(url, init, onBusy) {
  let backoff = 1;
  for (;;) {
    const response = await fetch(url, init);
    if (response.status !== 429) {
      if (!response.ok) throw await HttpError.of(response);
      return response;
    }
    const wait = Math.max(Number(response.headers.get("Retry-After")) || 0, backoff);
    backoff = Math.min(backoff * 2, 30);
    onBusy(wait);
    await sleep(wait * 1000, init.signal);
    init.signal?.throwIfAborted();
  }
}

// `opener`: [the id of the element holding what was clicked, its data-focus-key].
function openAnswers(filter, opener) {
  if (!latest.main || !credentials) return;
  finishAnswers();
  answers = { filter, opener, downloads: new AbortController() };
  resetAnswers(latest.main);
  $("answers-csv-status").textContent = "";
  $("answers").showModal();
  $("answers-title").focus();
  loadAnswers();
}

// Start over on `doc`'s window and numbers (on opening, and on Refresh).
function resetAnswers(doc) {
  const panel = answers;
  panel.pages?.abort();
  panel.pages = new AbortController();
  panel.window = { ...doc.window };
  panel.count = countFor(panel.filter, doc.body);
  panel.seen = new Set();
  panel.next = null;
  panel.loaded = false;
  panel.loading = false;
  panel.recheck = false;
  $("answers-table").removeAttribute("aria-busy");
  $("answers-more").removeAttribute("aria-disabled");
  $("answers-more").textContent = "Load more";
  $("answers-status").textContent = "";
  $("answers-rows").replaceChildren();
  $("answers-empty").hidden = true;
  $("answers-more").hidden = true;
  $("answers-error").hidden = true;
  showFresh("");
  renderAnswersHead();
}

function renderAnswersHead() {
  const panel = answers;
  const label = filterLabel(panel.filter);
  const count = `${fmt.format(panel.count)} answer${panel.count === 1 ? "" : "s"}`;
  $("answers-title").textContent = `${label} — ${count}`;
  $("answers-caption").textContent = `Answers: ${label}, newest first`;
  $("answers-window").textContent = `Answered ${span(panel.window)} (the window of the number), newest first.`;
}

function renderAnswersFoot() {
  const panel = answers;
  const shown = panel.seen.size;
  $("answers-empty").hidden = !panel.loaded || shown > 0;
  const more = $("answers-more");
  const hadFocus = document.activeElement === more;
  more.hidden = !panel.next;
  let status = "";
  if (panel.loaded && shown) {
    status = panel.next
      ? `Showing ${fmt.format(shown)} of ${fmt.format(Math.max(panel.count, shown))} answers.`
      : `All ${fmt.format(shown)} answer${shown === 1 ? "" : "s"} shown.`;
  }
  $("answers-status").textContent = status;
  if (hadFocus && more.hidden) $("answers-status").focus();
}

async function loadAnswers() {
  const panel = answers;
  if (!panel || panel.loading) return;
  const params = { ...listingParams(panel.filter, panel.window), limit: String(PAGE_SIZE) };
  if (panel.next) params.cursor = panel.next;
  panel.loading = true;
  $("answers-error").hidden = true;
  $("answers-table").setAttribute("aria-busy", "true");
  $("answers-more").setAttribute("aria-disabled", "true");
  $("answers-more").textContent = "Loading…";
  $("answers-status").textContent = panel.next ? "Loading more answers…" : "Loading the answers…";
  const signal = panel.pages.signal;
  try {
    const response = await fetchPatiently(answersUrl(params), { headers: authHeaders(), signal }, (wait) => {
      $("answers-status").textContent = `The server is busy (429) — retrying in ${wait} s.`;
    });
    const page = await response.json();
    if (signal.aborted) return;
    appendAnswers(page.answers);
    answersMetNames(page.answers);
    panel.next = page.next;
    panel.loaded = true;
    renderAnswersFoot();
    if (panel.recheck) checkForNewAnswers();
  } catch (error) {
    if (signal.aborted || answers !== panel) return;
    if (error.status === 401) {
      showSignIn("Your credential was refused or has expired. Sign in again.");
      return;
    }
    renderAnswersFoot();
    if (error.status === 400) {
      // The window the panel reads no longer fits: e.g. a 24-hour window's start has passed out
      // of retention a few minutes later. The current window does.
      showAnswersError(`The server refused this window: ${error.message}.`, "Refresh", refreshAnswers);
    } else {
      showAnswersError(`Could not load the answers: ${error.message}`, "Try again", loadAnswers);
    }
  } finally {
    if (answers === panel && panel.pages.signal === signal) {
      panel.loading = false;
      $("answers-table").removeAttribute("aria-busy");
      $("answers-more").removeAttribute("aria-disabled");
      $("answers-more").textContent = "Load more";
    }
  }
}

let answersRetry = () => {};

function showAnswersError(text, action, retry) {
  $("answers-error-text").textContent = text;
  $("answers-retry").textContent = action;
  answersRetry = retry;
  $("answers-error").hidden = false;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// The name the answer carried, else the directory's.
function whoCell(kind, id, name) {
  if (id === -1) return "Unassigned";
  return name ? `${name} (${id})` : label(kind, id);
}

function appendAnswers(records) {
  const body = $("answers-rows");
  const panel = answers;
  for (const record of records) {
    if (panel.seen.has(record.id)) continue; // a cursor never repeats one; be sure anyway
    panel.seen.add(record.id);
    const row = body.insertRow();
    row.dataset.id = record.id;
    const when = document.createElement("time");
    when.dateTime = new Date(record.time).toISOString();
    when.textContent = stamp.format(new Date(record.time));
    row.insertCell().append(when);
    cell(row, record.conversationId ?? "—", record.conversationId ? "mono" : "muted");
    cell(row, record.channel ?? "—", record.channel ? "" : "muted");
    cell(row, whoCell("skills", record.skillId, record.skillName));
    cell(row, whoCell("agents", record.agentId, record.agentName));
    const score = row.insertCell();
    score.className = "num";
    const badge = document.createElement("span");
    badge.className = `badge s${record.score}`;
    badge.textContent = String(record.score);
    score.append(badge);
    cell(row, record.comment ?? "—", record.comment ? "comment" : "muted");
  }
}

// New numbers while the panel is open: never reshuffle the list under the reader; count what is
// new (answers above the newest one listed) and offer a refresh.
function answersSeeNumbers(doc) {
  const panel = answers;
  if (!panel) return;
  const sameWindow = doc.window.start === panel.window.start && doc.window.end === panel.window.end;
  if (sameWindow && countFor(panel.filter, doc.body) === panel.count) return;
  panel.recheck = true;
  if (panel.loaded) checkForNewAnswers();
}

async function checkForNewAnswers() {
  const panel = answers;
  if (!panel || panel.checking || !latest.main) return;
  panel.checking = true;
  panel.recheck = false;
  const doc = latest.main;
  const params = { ...listingParams(panel.filter, doc.window), limit: String(CHECK_SIZE) };
  try {
    const response = await fetch(answersUrl(params), { headers: authHeaders(), signal: panel.pages.signal });
    if (response.status === 401) {
      showSignIn("Your credential was refused or has expired. Sign in again.");
      return;
    }
    if (!response.ok) return; // busy or failing: the next update looks again
    const page = await response.json();
    if (answers !== panel || !panel.loaded) return;
    let fresh = 0;
    for (const record of page.answers) {
      if (panel.seen.has(record.id)) break;
      fresh += 1;
    }
    const more = fresh === page.answers.length && page.next !== null;
    const count = countFor(panel.filter, doc.body);
    const sameWindow = doc.window.start === panel.window.start && doc.window.end === panel.window.end;
    if (fresh) {
      showFresh(`${fmt.format(fresh)}${more ? "+" : ""} new answer${fresh === 1 && !more ? "" : "s"}`);
    } else if (sameWindow && count > panel.count) {
      // Counted after the number was drawn but before the first page was read: listed already.
      panel.count = count;
      renderAnswersHead();
      renderAnswersFoot();
    } else if (!sameWindow || count !== panel.count) {
      showFresh(sameWindow ? "The numbers have changed" : "The window has moved on");
    }
  } catch {
    // aborted, or the network failed: the next update looks again
  } finally {
    panel.checking = false;
    if (answers === panel && panel.recheck && panel.loaded) checkForNewAnswers();
  }
}

function showFresh(text) {
  $("answers-fresh-text").textContent = text ? `${text} —` : "";
  $("answers-refresh").hidden = !text;
  $("answers-fresh").classList.toggle("on", Boolean(text));
}

function refreshAnswers() {
  if (!answers || !latest.main) return;
  resetAnswers(latest.main);
  $("answers-title").focus();
  loadAnswers();
}

async function downloadAnswers() {
  const panel = answers;
  const button = $("answers-csv");
  if (!panel || panel.downloading) return;
  panel.downloading = true;
  button.setAttribute("aria-disabled", "true");
  button.textContent = "Preparing CSV…";
  const status = $("answers-csv-status");
  status.textContent = "Preparing the CSV…";
  const name = fileName(panel.filter, panel.window);
  const signal = panel.downloads.signal;
  try {
    // The credential goes in a header, so this is a fetch, not a link: the file is saved from
    // a temporary object URL.
    const headers = { ...authHeaders(), Accept: "text/csv" };
    const response = await fetchPatiently(answersUrl(listingParams(panel.filter, panel.window)), { headers, signal }, (wait) => {
      status.textContent = `The server is busy (429) — retrying in ${wait} s.`;
    });
    const blob = await response.blob();
    if (answers !== panel) return;
    const href = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = href;
    link.download = name;
    link.hidden = true;
    $("answers").append(link); // inside the modal dialog: the rest of the page is inert
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(href), 60_000);
    status.textContent = `Saved ${name}.`;
  } catch (error) {
    if (signal.aborted || answers !== panel) return;
    if (error.status === 401) {
      showSignIn("Your credential was refused or has expired. Sign in again.");
      return;
    }
    status.textContent = `Could not download the CSV: ${error.message}`;
  } finally {
    panel.downloading = false;
    button.removeAttribute("aria-disabled");
    button.textContent = "Download CSV";
  }
}

// The panel's requests end with it (Escape, Close, the backdrop, signing out).
function finishAnswers() {
  if (!answers) return;
  answers.pages?.abort();
  answers.downloads.abort();
  answers = null;
}

function closeAnswers() {
  const dialog = $("answers");
  const opener = answers?.opener;
  finishAnswers();
  if (dialog.open) dialog.close();
  // Back to what opened it (rebuilt meanwhile, perhaps: found again by its key).
  if (opener && !$("main").hidden) {
    const [holder, key] = opener;
    $(holder).querySelector(`[data-focus-key="${CSS.escape(key)}"]`)?.focus();
  }
}

function drillFrom(event) {
  const bar = event.target.closest("#distribution button");
  if (bar) {
    const filter = { score: Number(bar.dataset.score), skill: null, agent: null };
    return [filter, ["distribution", bar.dataset.focusKey]];
  }
  const row = event.target.closest("tbody tr.drill");
  if (!row) return null;
  const table = row.closest("table").id;
  const kind = table === "skills-table" ? "skill" : "agent";
  const id = row.dataset.id;
  const filter = { score: null, skill: kind === "skill" ? id : null, agent: kind === "agent" ? id : null };
  return [filter, [table, `row:${id}`]];
}

function wireAnswers() {
  for (const id of ["distribution", "skills-table", "agents-table"]) {
    $(id).addEventListener("click", (event) => {
      const picked = drillFrom(event);
      if (!picked || !applied) return;
      const [clicked, opener] = picked;
      const filter = { ...clicked, timeframe: applied.timeframe, skills: applied.skills, agents: applied.agents };
      openAnswers(filter, opener);
    });
  }
  const dialog = $("answers");
  dialog.addEventListener("close", closeAnswers); // Escape closes a modal dialog by itself
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) closeAnswers(); // the backdrop
  });
  $("answers-close").addEventListener("click", closeAnswers);
  $("answers-more").addEventListener("click", () => loadAnswers());
  $("answers-retry").addEventListener("click", () => answersRetry());
  $("answers-refresh").addEventListener("click", refreshAnswers);
  $("answers-csv").addEventListener("click", () => downloadAnswers());
}

// ---------------------------------------------------------------- wiring

document.addEventListener("DOMContentLoaded", () => {
  fillIntervals();
  $("signin-form").addEventListener("submit", (event) => {
    signIn(event).catch((error) => {
      $("signin-message").textContent = `Could not reach the server: ${error.message}`;
    });
  });
  for (const radio of document.querySelectorAll("input[name=method]")) {
    radio.addEventListener("change", () => {
      const login = document.querySelector("input[name=method]:checked").value === "login";
      $("with-login").hidden = !login;
      $("with-key").hidden = login;
    });
  }
  $("timeframe").addEventListener("change", () => {
    fillIntervals();
    start();
  });
  $("interval").addEventListener("change", start);
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  $("sign-out").addEventListener("click", () => showSignIn("Signed out."));
  wireAnswers();
  wireTableTools();
  wireViews();
  wireHistory();
  if (credentials) showMain();
  else showSignIn("");
});
