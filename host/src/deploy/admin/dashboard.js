// The dashboard's script: reads /ui/api/state every REFRESH_MS while the page is visible and
// draws it; the buttons call the admin API with the login cookie and the CSRF token the state
// carries. Everything is drawn with textContent, never HTML, so nothing an app or a deployer
// named (an app name, a version message) can run here.
"use strict";

const REFRESH_MS = 2000;
let csrf = null;
let timer = null;
let busy = false;

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function show(loggedIn) {
  $("#login").hidden = loggedIn;
  $("#fleet").hidden = !loggedIn;
  $("#logout").hidden = !loggedIn;
  if (!loggedIn) {
    csrf = null;
    $("#updated").textContent = "";
  }
}

function notice(text, isError = false) {
  const node = $("#notice");
  node.textContent = text;
  node.className = isError ? "error" : "";
}

function millis(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const ms = seconds * 1000;
  return ms < 1 ? `${Math.round(ms * 1000)} µs` : ms < 100 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

function trafficCells(traffic) {
  const none = traffic.requests === 0;
  const errors = (traffic.error_rate * 100).toFixed(1) + " %";
  return [
    el("td", { class: "num" }, none ? "0" : traffic.rate.toFixed(traffic.rate < 10 ? 2 : 0)),
    el("td", { class: "num" + (traffic.error_rate > 0.01 ? " bad" : "") }, none ? "–" : errors),
    el("td", { class: "num" }, millis(traffic.p50)),
    el("td", { class: "num" }, millis(traffic.p99)),
  ];
}

// Whether a rollback has somewhere to go: a kept version older than the active one.
function olderThanActive(app) {
  const number = (id) => Number((id || "v0").slice(1));
  return app.active !== null && app.versions.some((v) => number(v.id) < number(app.active));
}

// An app's canary, e.g. "v4 at 10% (10,50,100): 2 of 212 failed, v3 1 of 1890, last 30 s".
function canaryText(app) {
  const c = app.canary;
  if (!c) return "";
  let text = `${c.version} at ${c.percent}% (${c.steps.join(",")})`;
  const f = c.figures;
  if (f) {
    text += `: ${f.canary.errors} of ${f.canary.requests} failed, ${app.active} ` +
      `${f.active.errors} of ${f.active.requests}, last ${f.seconds} s`;
  }
  return text;
}

function drawApps(state) {
  const body = $("#apps tbody");
  body.replaceChildren();
  for (const app of state.apps) {
    body.append(el("tr", { "data-app": app.name },
      el("td", {}, app.name),
      el("td", { class: "mono" }, app.route || ""),
      el("td", { class: "active" }, app.active || "–"),
      el("td", { class: "pending" }, app.pending || ""),
      el("td", { class: "canary" }, canaryText(app)),
      ...trafficCells(app.traffic),
      el("td", {},
        app.canary
          ? el("button", { type: "button", class: "promote", onclick: () => promote(app.name) }, "Promote")
          : null,
        app.canary || olderThanActive(app)
          ? el("button", { type: "button", class: "rollback", onclick: () => activate(app.name, null) },
            app.canary ? "End canary" : "Roll back")
          : null,
        " ",
        el("button", { type: "button", class: "remove danger", onclick: () => remove(app.name) }, "Remove"))));
  }
  for (const app of state.fixed) {
    body.append(el("tr", { "data-app": app.name },
      el("td", {}, app.name),
      el("td", {}, ""),
      el("td", { class: "active" }, "command line"),
      el("td", {}, ""),
      el("td", {}, ""),
      ...trafficCells(app.traffic),
      el("td", {})));
  }
  $("#window").textContent = state.window_seconds;
}

function drawReplicas(state) {
  const body = $("#replicas tbody");
  body.replaceChildren();
  for (const replica of state.replicas) {
    const serving = Object.entries(replica.running).map(([app, version]) =>
      replica.canary[app] ? `${app} ${version} + ${replica.canary[app]}` : `${app} ${version}`);
    for (const name of replica.fixed) serving.push(`${name} (command line)`);
    const age = replica.age_ms / 1000;
    body.append(el("tr", { "data-replica": replica.id },
      el("td", { class: "mono" }, replica.id),
      el("td", { class: "mono" }, replica.group),
      el("td", { class: "mono" }, replica.address),
      el("td", { class: "num" + (age > 3 ? " stale" : "") }, `${age.toFixed(1)} s ago`),
      el("td", { class: "serving" }, serving.join(", ") || "nothing deployed")));
  }
}

function drawHistory(state) {
  const history = $("#history");
  const open = new Set([...history.querySelectorAll("details[open]")].map((d) => d.dataset.app));
  history.replaceChildren();
  for (const app of state.apps) {
    const rows = app.versions.map((v) => el("tr", { "data-version": v.id },
      el("td", {}, v.id === app.active ? `${v.id} (active)` : v.id),
      el("td", {}, new Date(v.created * 1000).toLocaleString()),
      el("td", { class: "mono" }, v.source),
      el("td", {}, v.message),
      el("td", { class: "mono" }, v.digest.slice(0, 12)),
      el("td", {}, v.id === app.active ? "" :
        el("button", { type: "button", class: "activate", onclick: () => activate(app.name, v.id) }, "Activate"))));
    const last = app.last_canary;
    const details = el("details", { "data-app": app.name },
      el("summary", {}, `${app.name}: ${app.versions.length} version${app.versions.length === 1 ? "" : "s"} kept`),
      last ? el("p", { class: "last-canary" },
        `Last canary: ${last.version} ${last.outcome} at ${last.percent}%, ` +
        `${new Date(last.at * 1000).toLocaleString()}: ${last.reason}`) : null,
      el("table", {},
        el("thead", {}, el("tr", {}, ...["Version", "When", "Who, from where", "Message", "Digest", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
    details.open = open.has(app.name);
    history.append(details);
  }
}

async function refresh() {
  clearTimeout(timer);
  timer = null;
  try {
    const response = await fetch("/ui/api/state", { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      show(false);
      return;
    }
    if (!response.ok) throw new Error((await response.json()).error || response.statusText);
    const state = await response.json();
    csrf = state.csrf;
    show(true);
    drawApps(state);
    drawReplicas(state);
    drawHistory(state);
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("#updated").textContent = `not updated: ${e.message}`;
  }
  schedule();
}

function schedule() {
  if (timer === null && !document.hidden && csrf !== null) timer = setTimeout(refresh, REFRESH_MS);
}

// A change through the admin API, as the CLI makes it, with the cookie and the CSRF token.
async function change(method, path, body) {
  if (busy) return;
  busy = true;
  try {
    const response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-tabula-csrf": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    // Deploys answer one JSON object per line, progress then the outcome: the last one counts.
    const lines = (await response.text()).trim().split("\n");
    const last = JSON.parse(lines[lines.length - 1] || "{}");
    if (!response.ok || last.event === "error") throw new Error(last.error || last.message || response.statusText);
    return last;
  } finally {
    busy = false;
  }
}

async function activate(app, version) {
  notice(version ? `activating ${app} ${version}…` : `rolling ${app} back…`);
  try {
    const done = await change("POST", `/v1/apps/${encodeURIComponent(app)}/activate`, version ? { version } : {});
    notice(`${done.app} ${done.version} is active (${(done.switched || []).length} replicas switched)`);
  } catch (e) {
    notice(`${app}: ${e.message}`, true);
  }
  refresh();
}

async function promote(app) {
  notice(`promoting ${app}'s canary…`);
  try {
    const done = await change("POST", `/v1/apps/${encodeURIComponent(app)}/promote`);
    notice(`${done.app} ${done.version} is active (${(done.switched || []).length} replicas switched)`);
  } catch (e) {
    notice(`${app}: ${e.message}`, true);
  }
  refresh();
}

async function remove(app) {
  if (!confirm(`Remove ${app} from every replica?`)) return;
  try {
    await change("DELETE", `/v1/apps/${encodeURIComponent(app)}`);
    notice(`${app} removed`);
  } catch (e) {
    notice(`${app}: ${e.message}`, true);
  }
  refresh();
}

$("#login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const field = $("#token");
  const response = await fetch("/ui/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token: field.value }),
  });
  // The token is not kept: the cookie stands for it from now on.
  field.value = "";
  if (!response.ok) {
    $("#login-error").textContent = (await response.json()).error || response.statusText;
    return;
  }
  $("#login-error").textContent = "";
  refresh();
});

$("#logout").addEventListener("click", async () => {
  await fetch("/ui/logout", { method: "POST", credentials: "same-origin", headers: { "x-tabula-csrf": csrf || "" } });
  clearTimeout(timer);
  timer = null;
  show(false);
});

document.addEventListener("visibilitychange", () => (document.hidden ? clearTimeout(timer) : refresh()));

refresh();
