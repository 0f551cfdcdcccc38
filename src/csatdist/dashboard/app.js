// csatdist dashboard: plain ES module, no dependencies, same origin only (strict CSP).
// Data arrives over the push stream (SSE read with fetch, so the credential travels in a
// header, never in a URL); if streaming fails it polls with conditional GET (ETag / 304).

const STORE_KEY = "csatdist.dashboard";
const POLL_SECONDS = 5;
const $ = (id) => document.getElementById(id);

let credentials = load();
let subscriptions = [];
let sortState = { skills: ["total", "descending"], agents: ["total", "descending"] };
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

// ---------------------------------------------------------------- sign in / out

function showSignIn(message) {
  closeAnswers();
  stopAll();
  for (const kind of ["skills", "agents"]) {
    known[kind].clear();
    $(kind).replaceChildren(new Option(`All ${kind}`, "all", true, true));
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
  start();
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

// The pick lists: "all", or the ids chosen among every skill and agent seen so far.
const known = { skills: new Set(), agents: new Set() };

function picked(id) {
  const values = [...$(id).selectedOptions].map((o) => o.value);
  return !values.length || values.includes("all") ? "all" : values.join(",");
}

function remember(kind, ids) {
  const before = known[kind].size;
  for (const id of ids) known[kind].add(id);
  if (known[kind].size === before) return;
  const select = $(kind);
  const chosen = new Set([...select.selectedOptions].map((o) => o.value));
  const label = kind === "skills" ? "skill" : "agent";
  const options = [new Option(`All ${kind}`, "all", false, chosen.has("all") || !chosen.size)];
  for (const id of [...known[kind]].sort((a, b) => Number(a) - Number(b))) {
    const text = id === "-1" ? "Unassigned" : `${label} ${id}`;
    options.push(new Option(text, id, false, chosen.has(id)));
  }
  select.replaceChildren(...options);
}

function selection() {
  const timeframe = Number($("timeframe").value);
  const interval = $("interval").value === "auto" ? autoInterval(timeframe) : Number($("interval").value);
  return { timeframe, interval, skills: picked("skills"), agents: picked("agents") };
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
  constructor(response, detail = "") {
    super(detail || `HTTP ${response.status}`);
    this.status = response.status;
    this.retryAfter = Number(response.headers.get("Retry-After")) || 0;
  }

  // With the problem document's detail (RFC 9457) as the message, when the reply has one.
  static async of(response) {
    let detail = "";
    try {
      const problem = await response.json();
      const broken = (problem.invalid_params || []).map((p) => `${p.name} ${p.reason}`);
      detail = problem.detail || broken.join("; ");
    } catch {
      // not a problem document: the status says enough
    }
    return new HttpError(response, detail);
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
  renderTable("skills", Object.entries(skills).map(([id, entry]) => [id, entry.metricsTotals]));
  const agents = body.agentsMetrics?.metricsPerAgent || {};
  renderTable("agents", Object.entries(agents));
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

const COLUMNS = [
  ["id", "Id"],
  ["total", "Answers"],
  ["score", "CSAT"],
  ["positive", "Positive"],
  ["s5", "5"],
  ["s4", "4"],
  ["s3", "3"],
  ["s2", "2"],
  ["s1", "1"],
];

function rowOf(id, m) {
  return {
    id: Number(id),
    name: id === "-1" ? "Unassigned" : id,
    total: m.total_answers,
    score: m.csat_score,
    positive: m.positive_answers,
    s5: m.csat_score5_answers,
    s4: m.csat_score4_answers,
    s3: m.csat_score3_answers,
    s2: m.csat_score2_answers,
    s1: m.csat_score1_answers,
  };
}

function renderTable(kind, entries) {
  const table = $(`${kind}-table`);
  // Rebuilt on every update: put focus back on the same button afterwards.
  const focused = table.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
  const [key, direction] = sortState[kind];
  const rows = entries.map(([id, m]) => rowOf(id, m));
  const sign = direction === "ascending" ? 1 : -1;
  rows.sort((a, b) => sign * (a[key] - b[key]) || a.id - b.id);
  const head = document.createElement("thead");
  const headRow = head.insertRow();
  for (const [column, title] of COLUMNS) {
    const th = document.createElement("th");
    th.scope = "col";
    if (column === key) th.setAttribute("aria-sort", direction);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.dataset.focusKey = `sort:${column}`;
    button.textContent = column === "id" ? (kind === "skills" ? "Skill" : "Agent") : title;
    button.addEventListener("click", () => {
      const same = sortState[kind][0] === column;
      sortState[kind] = [column, same && direction === "descending" ? "ascending" : "descending"];
      if (latest.main) renderMain(latest.main);
      document.querySelector(`#${kind}-table th[aria-sort] button`)?.focus();
    });
    th.append(button);
    headRow.append(th);
  }
  const tbody = document.createElement("tbody");
  for (const row of rows) {
    const tr = tbody.insertRow();
    tr.className = "drill";
    tr.dataset.id = String(row.id);
    const name = document.createElement("th");
    name.scope = "row";
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link";
    open.textContent = row.name;
    open.dataset.focusKey = `row:${row.id}`;
    open.setAttribute("aria-haspopup", "dialog");
    open.setAttribute("aria-describedby", "drill-hint");
    name.append(open);
    tr.append(name);
    for (const [column] of COLUMNS.slice(1)) {
      tr.insertCell().textContent = column === "score" ? pct(row.score) : fmt.format(row[column]);
    }
  }
  if (!rows.length) {
    const cell = tbody.insertRow().insertCell();
    cell.colSpan = COLUMNS.length;
    cell.textContent = `No ${kind} with answers in this window.`;
  }
  table.replaceChildren(head, tbody);
  if (focused) table.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();
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

// ---------------------------------------------------------------- the answers behind a number
// A score bar, a skill row or an agent row opens the answer records behind its number: the
// clicked filter combined with the applied timeframe, skills and agents, read over the very
// window that number was counted in (a fixed `from`/`to`), so the list is its population and
// paging by cursor stays stable while time passes and answers arrive.

const PAGE_SIZE = 50;
const CHECK_SIZE = 100;
const names = { skill: new Map(), agent: new Map() };
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

function whoLabel(kind, id) {
  if (id === "-1") return `unassigned ${kind}`;
  const name = names[kind].get(id);
  return name ? `${name} (${kind} ${id})` : `${kind} ${id}`;
}

function groupLabel(kind, ids) {
  const list = ids.split(",");
  if (list.length === 1) return whoLabel(kind, list[0]);
  return `${kind}s ${list.map((id) => (id === "-1" ? "unassigned" : names[kind].get(id) || id)).join(", ")}`;
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
    panel.next = page.next;
    panel.loaded = true;
    renderAnswersHead(); // names may be known now
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

function whoCell(id, name) {
  if (id === -1) return "Unassigned";
  return name ? `${name} (${id})` : String(id);
}

function appendAnswers(records) {
  const body = $("answers-rows");
  const panel = answers;
  for (const record of records) {
    if (panel.seen.has(record.id)) continue; // a cursor never repeats one; be sure anyway
    panel.seen.add(record.id);
    if (record.skillName) names.skill.set(String(record.skillId), record.skillName);
    if (record.agentName) names.agent.set(String(record.agentId), record.agentName);
    const row = body.insertRow();
    row.dataset.id = record.id;
    const when = document.createElement("time");
    when.dateTime = new Date(record.time).toISOString();
    when.textContent = stamp.format(new Date(record.time));
    row.insertCell().append(when);
    cell(row, record.conversationId ?? "—", record.conversationId ? "mono" : "muted");
    cell(row, record.channel ?? "—", record.channel ? "" : "muted");
    cell(row, whoCell(record.skillId, record.skillName));
    cell(row, whoCell(record.agentId, record.agentName));
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
  if (credentials) showMain();
  else showSignIn("");
});
