// Tandem console: a small single-page app over the orchestrator's own API (no build step, no
// library). Routes: #/sagas?filters, #/saga/<id>, #/definitions. Live updates by polling.
"use strict";

const SETTLED = ["completed", "compensated", "failed"];
const STATUSES = ["running", "compensating", "completed", "compensated", "failed"];
let timer = null;

// h("tag.class", {attr: value}, child, …): an element; strings become text (never HTML).
function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag);
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const badge = (s) => h("span.badge.s-" + s, { "data-status": s }, s);
const fmtTime = (t) => (t ? new Date(t).toLocaleString() : "–");
const short = (id) => (id ? id.slice(0, 8) + "…" + id.slice(-4) : "");

function actor() {
  return localStorage.getItem("tandem-actor") || "dashboard";
}

// Bearer token (docs/security.md): kept for this tab only; asked for when the server answers
// 401, then the request is sent once more. An open server never asks.
async function api(path, options, asked) {
  const opts = Object.assign({}, options);
  const token = sessionStorage.getItem("tandem-token");
  if (token) opts.headers = Object.assign({}, opts.headers, { Authorization: "Bearer " + token });
  const r = await fetch(path, opts);
  if (r.status === 401 && !asked) {
    const entered = window.prompt("This Tandem server needs a token (operator, or client to read):");
    if (entered) {
      sessionStorage.setItem("tandem-token", entered.trim());
      return api(path, options, true);
    }
  }
  const body = await r.json().catch(() => null);
  if (!r.ok) {
    const msg = body && (body.detail || body.title) ? body.detail || body.title : r.statusText;
    throw new Error(r.status + ": " + msg);
  }
  return body;
}

function show(...nodes) {
  const view = document.getElementById("view");
  view.replaceChildren(...nodes.flat());
}

function setNav(which) {
  for (const n of ["sagas", "definitions"]) {
    document.getElementById("nav-" + n).classList.toggle("active", n === which);
  }
}

// Poll `fn` every `ms` while this view is shown.
function poll(fn, ms) {
  clearInterval(timer);
  timer = setInterval(fn, ms);
}

// ---- sagas list ---------------------------------------------------------------------------

function listQuery(params) {
  const q = new URLSearchParams();
  for (const k of ["status", "definition", "q"]) if (params.get(k)) q.set(k, params.get(k));
  for (const k of ["from", "to"]) {
    if (params.get(k)) q.set(k, new Date(params.get(k)).toISOString());
  }
  q.set("limit", "50");
  return q;
}

async function sagasView(params) {
  setNav("sagas");
  let defs = [];
  try {
    defs = (await api("/definitions")).items.map((d) => d.name);
  } catch (e) { /* the list still works */ }
  const field = (name, label, input) => h("label", {}, label, input);
  const select = (name, options) =>
    h("select", { name, id: "filter-" + name },
      h("option", { value: "" }, "any"),
      options.map((o) => h("option", { value: o, selected: params.get(name) === o }, o)));
  const form = h("form.filters", { id: "filters", onsubmit: (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
      location.hash = "#/sagas?" + q.toString();
    } },
    field("status", "status", select("status", STATUSES)),
    field("definition", "definition", select("definition", defs)),
    field("from", "created from", h("input", { type: "datetime-local", name: "from", value: params.get("from") || "" })),
    field("to", "created before", h("input", { type: "datetime-local", name: "to", value: params.get("to") || "" })),
    field("q", "saga id or business key", h("input", { name: "q", id: "filter-q", size: 30, value: params.get("q") || "" })),
    h("button.primary", { type: "submit", id: "apply" }, "Apply"));
  // Changing a select applies it at once.
  form.querySelectorAll("select").forEach((s) => s.addEventListener("change", () => form.requestSubmit()));
  const body = h("tbody", { id: "saga-rows" });
  const more = h("button", { id: "more", hidden: true }, "Load more");
  const info = h("p.muted", { id: "list-info" });
  show(h("h1", {}, "Sagas"), h("div.card", {}, form),
    h("table", {}, h("thead", {}, h("tr", {}, ["Saga", "Definition", "Status", "Business key", "Created", "Updated"].map((t) => h("th", {}, t)))), body),
    info, more);
  const base = listQuery(params);
  let cursor = null;
  const row = (s) => h("tr", { "data-saga": s.id },
    h("td.mono", {}, h("a", { href: "#/saga/" + s.id, title: s.id }, short(s.id))),
    h("td", {}, s.definition), h("td", {}, badge(s.status)),
    h("td.mono", {}, s.business_key || "–"), h("td", {}, fmtTime(s.created_at)), h("td", {}, fmtTime(s.updated_at)));
  async function load(append) {
    const q = new URLSearchParams(base);
    if (append && cursor) q.set("cursor", cursor);
    try {
      const page = await api("/sagas?" + q.toString());
      if (append) body.append(...page.items.map(row));
      else body.replaceChildren(...page.items.map(row));
      if (!append || page.next_cursor) cursor = page.next_cursor;
      more.hidden = !cursor;
      info.textContent = body.children.length ? "" : "No sagas match.";
      info.classList.remove("error");
    } catch (e) {
      info.textContent = String(e.message || e);
      info.classList.add("error");
    }
  }
  more.addEventListener("click", () => load(true));
  await load(false);
  // Live: refresh the first page while nothing more was loaded.
  poll(() => { if (body.children.length <= 50) load(false); }, 2000);
}

// ---- one saga -----------------------------------------------------------------------------

function confirmAction(title, text, yes) {
  return new Promise((resolve) => {
    const m = document.getElementById("confirm");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    const y = document.getElementById("confirm-yes");
    const n = document.getElementById("confirm-no");
    y.textContent = yes;
    const done = (v) => { m.hidden = true; y.onclick = n.onclick = null; resolve(v); };
    y.onclick = () => done(true);
    n.onclick = () => done(false);
    m.hidden = false;
  });
}

const ACTIONS = [
  { path: "cancel", label: "Cancel saga", when: (s) => s.status === "running",
    text: "Every step whose action was sent (including a call in flight) is compensated, in reverse order. This cannot be undone." },
  { path: "retry-now", label: "Retry now", when: (s) => !SETTLED.includes(s.status) && s.next_attempt_at,
    text: "The waiting step is sent now instead of at its retry time; its retry budget is unchanged." },
  { path: "resume", label: "Resume", when: (s) => s.status === "failed",
    text: "The parked compensation gets a fresh retry budget and compensation resumes." },
];

function stepsGraph(s, def) {
  const steps = s.steps;
  const hasComp = (i) => !def || !!(def.steps[i] && def.steps[i].compensation);
  const forward = [];
  steps.forEach((st, i) => {
    if (i) forward.push(h("span.arrow", {}, "→"));
    forward.push(h("div.node", { "data-step": st.name, "data-kind": "action" },
      h("div.name", {}, st.name), badge(st.status),
      h("div.meta", {}, "attempts " + st.attempts + (st.last_error ? " · " + st.last_error : ""))));
  });
  // Compensations in the order they ran (the reverse of the actions), from the event log.
  const order = [];
  for (const e of s.events) {
    if (e.kind === "compensation_started" && e.step && !order.includes(e.step)) order.push(e.step);
  }
  const comp = [];
  order.forEach((name, k) => {
    const st = steps.find((x) => x.name === name);
    if (k) comp.push(h("span.arrow", {}, "→"));
    comp.push(h("div.node.comp", { "data-step": name, "data-kind": "compensation" },
      h("div.name", {}, (k + 1) + ". undo " + name), badge(st.status),
      h("div.meta", {}, "attempts " + st.compensation_attempts)));
  });
  // Steps that will not be compensated, and why.
  const none = steps.filter((st, i) => st.attempts > 0 && !hasComp(i)).map((st) =>
    h("div.node.none", {}, st.name + ": no compensation"));
  return h("div.card", { id: "steps" },
    h("div.lane", {}, h("span.label", {}, "actions →"), forward),
    h("div.lane", { id: "compensations" }, h("span.label", {}, "compensations (as run)"),
      comp.length ? comp : h("span.muted", {}, "none"), none));
}

function eventsTable(events) {
  return h("table", { id: "events" },
    h("thead", {}, h("tr", {}, ["#", "at", "event", "step", "detail"].map((t) => h("th", {}, t)))),
    h("tbody", {}, events.map((e) => {
      const d = Object.assign({}, e.detail);
      const by = d.by;
      delete d.by;
      return h("tr", { "data-kind": e.kind },
        h("td", {}, e.seq), h("td", {}, fmtTime(e.at)), h("td.mono", {}, e.kind),
        h("td.mono", {}, e.step || ""),
        h("td.mono", {}, by ? h("span.ev-by", {}, "by " + by + " ") : null,
          Object.keys(d).length ? JSON.stringify(d) : ""));
    })));
}

async function sagaView(id) {
  setNav("sagas");
  let def = null;
  const msg = h("p", { id: "action-result" });
  async function render() {
    let s;
    try {
      s = await api("/sagas/" + encodeURIComponent(id));
    } catch (e) {
      show(h("h1", {}, "Saga"), h("p.error", {}, String(e.message || e)));
      return;
    }
    if (!def) {
      try {
        def = (await api("/definitions/" + encodeURIComponent(s.definition))).definition;
        if (def.version !== undefined && def.version !== s.version) def = null;
      } catch (e) { def = null; }
    }
    const actions = ACTIONS.filter((a) => a.when(s)).map((a) =>
      h("button" + (a.path === "cancel" ? ".danger" : ".primary"), { id: "action-" + a.path, onclick: async () => {
        if (!(await confirmAction(a.label + "?", a.text, a.label))) return;
        try {
          await api("/sagas/" + id + "/" + a.path, { method: "POST", headers: { "Tandem-Actor": actor() } });
          msg.textContent = a.label + ": done.";
          msg.className = "muted";
        } catch (e) {
          msg.textContent = a.label + " refused: " + (e.message || e);
          msg.className = "error";
        }
        render();
      } }, a.label));
    const lease = s.lease || {};
    show(
      h("h1", {}, "Saga ", h("span.mono", {}, s.id), " ", h("span", { id: "saga-status" }, badge(s.status))),
      h("div.card", {},
        h("dl.kv", {},
          h("dt", {}, "definition"), h("dd", {}, s.definition + " @ " + s.version.slice(0, 12)),
          h("dt", {}, "business key"), h("dd.mono", {}, s.business_key || "–"),
          h("dt", {}, "created"), h("dd", {}, fmtTime(s.created_at)),
          h("dt", {}, "updated"), h("dd", {}, fmtTime(s.updated_at)),
          s.reason ? [h("dt", {}, "reason"), h("dd", { id: "saga-reason" }, s.reason)] : null,
          s.next_attempt_at ? [h("dt", {}, "next attempt"), h("dd", {}, fmtTime(s.next_attempt_at))] : null,
          h("dt", {}, "lease"), h("dd.mono", { id: "saga-lease" },
            (lease.owner || "free") + " · epoch " + lease.epoch + (lease.until ? " · until " + fmtTime(lease.until) : ""))),
        h("div.actions", { style: "margin-top:10px" }, actions.length ? actions : h("span.muted", {}, "No action applies now.")),
        msg),
      h("h2", {}, "Steps"), stepsGraph(s, def),
      h("div.grid", {},
        h("div", {}, h("h2", {}, "Input"), h("pre", { id: "saga-input" }, JSON.stringify(s.input, null, 2))),
        h("div", {}, h("h2", {}, "Outputs"), h("pre", { id: "saga-outputs" }, JSON.stringify(s.outputs, null, 2)))),
      h("h2", {}, "Events"), eventsTable(s.events));
    if (SETTLED.includes(s.status) && !actions.length) clearInterval(timer);
  }
  await render();
  poll(render, 1000);
}

// ---- definitions --------------------------------------------------------------------------

async function definitionsView() {
  setNav("definitions");
  clearInterval(timer);
  let items;
  try {
    items = (await api("/definitions")).items;
  } catch (e) {
    show(h("h1", {}, "Definitions"), h("p.error", {}, String(e.message || e)));
    return;
  }
  const cards = [];
  for (const d of items) {
    let full = null;
    try { full = (await api("/definitions/" + encodeURIComponent(d.name))).definition; } catch (e) { /* shown without */ }
    const steps = full ? full.steps : d.steps.map((name) => ({ name }));
    const call = (c) => (c ? c.method + " " + c.service + c.path : "no compensation");
    const fwd = [], back = [];
    steps.forEach((st, i) => {
      if (i) fwd.push(h("span.arrow", {}, "→"));
      fwd.push(h("div.node", {}, h("div.name", {}, st.name), h("div.meta.mono", {}, call(st.action))));
    });
    steps.slice().reverse().forEach((st, i) => {
      if (i) back.push(h("span.arrow", {}, "→"));
      back.push(h("div.node" + (st.compensation ? ".comp" : ".none"), {}, h("div.name", {}, "undo " + st.name),
        h("div.meta.mono", {}, call(st.compensation))));
    });
    cards.push(h("div.card", { "data-definition": d.name },
      h("h2", {}, d.name, " ", h("span.muted.mono", {}, d.version.slice(0, 12))),
      d.description ? h("p.muted", {}, d.description) : null,
      h("div.lane", {}, h("span.label", {}, "actions"), fwd),
      h("div.lane", {}, h("span.label", {}, "on failure"), back),
      full && full.business_key ? h("p.muted", {}, "business key: " + full.business_key) : null));
  }
  show(h("h1", {}, "Definitions"), ...(cards.length ? cards : [h("p.muted", {}, "No definitions.")]));
}

// ---- routing ------------------------------------------------------------------------------

function route() {
  clearInterval(timer);
  const hash = location.hash.slice(1) || "/sagas";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  if (path.startsWith("/saga/")) return sagaView(decodeURIComponent(path.slice(6)));
  if (path === "/definitions") return definitionsView();
  return sagasView(params);
}

document.addEventListener("DOMContentLoaded", () => {
  const a = document.getElementById("actor");
  a.value = actor();
  a.addEventListener("change", () => localStorage.setItem("tandem-actor", a.value.trim() || "dashboard"));
  window.addEventListener("hashchange", route);
  route();
});
