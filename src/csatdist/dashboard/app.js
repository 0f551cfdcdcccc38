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

function plans() {
  const s = selection();
  const main = { timeframe: String(s.timeframe), skillIds: s.skills, agentIds: s.agents };
  const series = { timeframe: String(s.timeframe), interval: String(s.interval) };
  if (s.skills !== "all") series.skillIds = s.skills;
  if (s.agents !== "all") series.agentIds = s.agents;
  return { main, series };
}

function start() {
  stopAll();
  notice("");
  const { main, series } = plans();
  subscriptions = [subscribe("main", main, renderMain), subscribe("series", series, renderSeries)];
}

function stopAll() {
  for (const sub of subscriptions) sub.stop();
  subscriptions = [];
}

class HttpError extends Error {
  constructor(response) {
    super(`HTTP ${response.status}`);
    this.status = response.status;
    this.retryAfter = Number(response.headers.get("Retry-After")) || 0;
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

function totalsOf(body) {
  return body.metricsTotals || body.skillsMetricsPerAgent?.metricsTotals || body.agentsMetrics?.metricsTotals;
}

function renderMain({ window, body }) {
  const totals = totalsOf(body);
  $("score").textContent = totals.total_answers ? pct(totals.csat_score) : "–";
  $("total").textContent = fmt.format(totals.total_answers);
  $("positive").textContent = fmt.format(totals.positive_answers);
  $("empty").hidden = totals.total_answers > 0;
  const start = new Date(window.start);
  const end = new Date(window.end);
  $("window").textContent =
    `Window ${day.format(start)} ${time.format(start)} – ${time.format(end)} (whole 5-minute buckets; updated ${time.format(new Date())})`;
  renderBars(totals);
  const skills = body.skillsMetricsPerAgent?.metricsPerSkill || {};
  remember("skills", Object.keys(skills));
  remember("agents", Object.keys(body.agentsMetrics?.metricsPerAgent || {}));
  renderTable("skills", Object.entries(skills).map(([id, entry]) => [id, entry.metricsTotals]));
  const agents = body.agentsMetrics?.metricsPerAgent || {};
  renderTable("agents", Object.entries(agents));
}

function renderBars(totals) {
  const list = $("distribution");
  list.replaceChildren();
  for (let score = 5; score >= 1; score -= 1) {
    const count = totals[`csat_score${score}_answers`];
    const share = totals.total_answers ? count / totals.total_answers : 0;
    const item = document.createElement("li");
    item.className = `s${score}`;
    const label = document.createElement("span");
    label.textContent = `${score}`;
    label.setAttribute("aria-label", `score ${score}`);
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(share * 100).toFixed(2)}%`;
    fill.style.display = "block";
    track.append(fill);
    const value = document.createElement("span");
    value.className = "count";
    value.textContent = `${fmt.format(count)} · ${pct(share)}`;
    item.append(label, track, value);
    list.append(item);
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
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = row.name;
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
  if (credentials) showMain();
  else showSignIn("");
});
