// Tandem console: a small single-page app over the orchestrator's own API (no build step, no
// library). Routes: #/sagas?filters, #/saga/<id>, #/transactions?filters, #/transaction/<id>,
// #/definitions. Live updates by polling.
"use strict";

const SETTLED = ["completed", "compensated", "failed"];
const STATUSES = ["running", "compensating", "completed", "compensated", "failed"];
const TXN_SETTLED = ["committed", "aborted"];
const TXN_STATES = ["preparing", "committing", "aborting", "committed", "aborted"];
const PROTOCOLS = ["2pc", "3pc", "3pc-quorum", "paxos-commit"];
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
  view.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}

function setNav(which) {
  for (const n of ["sagas", "transactions", "definitions"]) {
    document.getElementById("nav-" + n).classList.toggle("active", n === which);
  }
}

// The Transactions page appears once a transaction (2PC, Paxos Commit, …) exists.
async function revealTransactions() {
  const nav = document.getElementById("nav-transactions");
  if (!nav.hidden) return;
  try {
    if ((await api("/transactions?limit=1")).items.length) nav.hidden = false;
  } catch (e) { /* stays hidden */ }
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

const field = (name, label, input) => h("label", {}, label, input);
// A filter's <select>: "any" or one of `options`, the current one from `params`.
const filterSelect = (params, name, options) =>
  h("select", { name, id: "filter-" + name },
    h("option", { value: "" }, "any"),
    options.map((o) => h("option", { value: o, selected: params.get(name) === o }, o)));

// A filter form that routes to `#/<route>?<its fields>`; changing a select applies it at once.
function filterForm(route, ...fields) {
  const form = h("form.filters", { id: "filters", onsubmit: (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
      location.hash = "#/" + route + "?" + q.toString();
    } }, ...fields);
  form.querySelectorAll("select").forEach((s) => s.addEventListener("change", () => form.requestSubmit()));
  return form;
}

// A newest-first, cursor-paged list of `path?query` into `body` (rows made by `row`), with its
// "Load more" button and a message line; refreshed every 2 s while only the first page shows.
async function pagedList(path, query, body, row, empty) {
  const more = h("button", { id: "more", hidden: true }, "Load more");
  const info = h("p.muted", { id: "list-info" });
  let cursor = null;
  async function load(append) {
    const q = new URLSearchParams(query);
    if (append && cursor) q.set("cursor", cursor);
    try {
      const page = await api(path + "?" + q.toString());
      if (append) body.append(...page.items.map(row));
      else body.replaceChildren(...page.items.map(row));
      if (!append || page.next_cursor) cursor = page.next_cursor;
      more.hidden = !cursor;
      info.textContent = body.children.length ? "" : empty;
      info.classList.remove("error");
    } catch (e) {
      info.textContent = String(e.message || e);
      info.classList.add("error");
    }
  }
  more.addEventListener("click", () => load(true));
  return { nodes: [info, more], start: async () => {
    await load(false);
    poll(() => { if (body.children.length <= 50) load(false); }, 2000);
  } };
}

const table = (headers, body) =>
  h("table", {}, h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))), body);

async function sagasView(params) {
  setNav("sagas");
  let defs = [];
  try {
    defs = (await api("/definitions")).items.map((d) => d.name);
  } catch (e) { /* the list still works */ }
  const select = (name, options) => filterSelect(params, name, options);
  const form = filterForm("sagas",
    field("status", "status", select("status", STATUSES)),
    field("definition", "definition", select("definition", defs)),
    field("from", "created from", h("input", { type: "datetime-local", name: "from", value: params.get("from") || "" })),
    field("to", "created before", h("input", { type: "datetime-local", name: "to", value: params.get("to") || "" })),
    field("q", "saga id or business key", h("input", { name: "q", id: "filter-q", size: 30, value: params.get("q") || "" })),
    h("button.primary", { type: "submit", id: "apply" }, "Apply"));
  const body = h("tbody", { id: "saga-rows" });
  const row = (s) => h("tr", { "data-saga": s.id },
    h("td.mono", {}, h("a", { href: "#/saga/" + s.id, title: s.id }, short(s.id))),
    h("td", {}, s.definition), h("td", {}, badge(s.status)),
    h("td.mono", {}, s.business_key || "–"), h("td", {}, fmtTime(s.created_at)), h("td", {}, fmtTime(s.updated_at)));
  const list = await pagedList("/sagas", listQuery(params), body, row, "No sagas match.");
  show(h("h1", {}, "Sagas"), h("div.card", {}, form),
    table(["Saga", "Definition", "Status", "Business key", "Created", "Updated"], body), list.nodes);
  await list.start();
}

// ---- transactions (2PC, Paxos Commit, …) --------------------------------------------------

const fmtMs = (ms) => (ms === null || ms === undefined ? "–" : ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(1) + " s");

async function transactionsView(params) {
  setNav("transactions");
  const protocols = PROTOCOLS.concat(params.get("protocol") && !PROTOCOLS.includes(params.get("protocol")) ? [params.get("protocol")] : []);
  const form = filterForm("transactions",
    field("protocol", "protocol", filterSelect(params, "protocol", protocols)),
    field("state", "state", filterSelect(params, "state", TXN_STATES)));
  const query = new URLSearchParams();
  for (const k of ["protocol", "state"]) if (params.get(k)) query.set(k, params.get(k));
  query.set("limit", "50");
  const body = h("tbody", { id: "txn-rows" });
  const row = (t) => h("tr", { "data-txn": t.id },
    h("td.mono", {}, h("a", { href: "#/transaction/" + t.id, title: t.id }, short(t.id))),
    h("td.mono", {}, t.protocol), h("td", {}, t.definition), h("td", {}, badge(t.state)),
    h("td", {}, t.decision || "–"), h("td.mono", {}, t.business_key || "–"), h("td", {}, t.participants),
    h("td", {}, fmtTime(t.created_at)),
    h("td" + (t.holding_locks_ms ? ".error" : ""), {}, t.holding_locks_ms ? "for " + fmtMs(t.holding_locks_ms) : "–"));
  const list = await pagedList("/transactions", query, body, row, "No transactions match.");
  show(h("h1", {}, "Transactions"), h("div.card", {}, form),
    table(["Transaction", "Protocol", "Definition", "State", "Decision", "Business key", "Participants", "Created", "Holding locks"], body),
    list.nodes);
  await list.start();
}

async function transactionView(id) {
  setNav("transactions");
  async function render() {
    let t;
    try {
      t = await api("/transactions/" + encodeURIComponent(id));
    } catch (e) {
      show(h("h1", {}, "Transaction"), h("p.error", {}, String(e.message || e)));
      clearInterval(timer);
      return;
    }
    const lease = t.lease || {};
    const hz = t.heuristic;
    const participants = table(["#", "Step", "Service", "Vote", "State", "Prepared", "Finished", "Lock hold", "Last error"],
      h("tbody", { id: "txn-participants" }, t.participants.map((p) =>
        h("tr", { "data-step": p.step, "data-vote": p.vote || "" },
          h("td", {}, p.index), h("td.mono", {}, p.step), h("td.mono", {}, p.service + " " + p.action),
          h("td", {}, p.vote ? h("span.badge.v-" + p.vote, {}, p.vote) : "–"), h("td", {}, badge(p.state)),
          h("td", {}, fmtTime(p.prepared_at)), h("td", {}, fmtTime(p.finished_at)),
          h("td" + (p.holding_locks ? ".error" : ""), {}, fmtMs(p.lock_hold_ms) + (p.holding_locks ? " (holding)" : "")),
          h("td.mono", {}, p.last_error || "")))));
    const log = table(["#", "at", "peer", "", "message", "detail"],
      h("tbody", { id: "txn-messages" }, t.messages.map((m) =>
        h("tr", { "data-kind": m.kind },
          h("td", {}, m.seq), h("td", {}, fmtTime(m.at)), h("td.mono", {}, m.peer),
          h("td", {}, m.dir === "out" ? "→" : "←"), h("td.mono", {}, m.kind),
          h("td.mono", {}, m.detail && Object.keys(m.detail).length ? JSON.stringify(m.detail) : "")))));
    show(
      h("h1", {}, "Transaction ", h("span.mono", {}, t.id), " ", h("span", { id: "txn-state" }, badge(t.state))),
      h("div.card", {},
        h("dl.kv", {},
          h("dt", {}, "protocol"), h("dd.mono", { id: "txn-protocol" }, t.protocol),
          h("dt", {}, "definition"), h("dd", {}, t.definition + " @ " + t.version.slice(0, 12)),
          h("dt", {}, "business key"), h("dd.mono", {}, t.business_key || "–"),
          h("dt", {}, "decision"), h("dd", { id: "txn-decision" }, t.decision ? t.decision + " at " + fmtTime(t.decided_at) : "none logged (presumed abort if asked)"),
          h("dt", {}, "created"), h("dd", {}, fmtTime(t.created_at)),
          h("dt", {}, "updated"), h("dd", {}, fmtTime(t.updated_at)),
          h("dt", {}, "messages"), h("dd", {}, t.counts.messages + " · coordinator forced writes " + t.counts.coordinator_forced_writes),
          h("dt", {}, "lease"), h("dd.mono", {},
            (lease.owner || "free") + " · epoch " + lease.epoch + (lease.until ? " · until " + fmtTime(lease.until) : "")))),
      hz ? h("div.card.heuristic", { id: "txn-heuristic" }, h("h2", {}, "Heuristic decision by an operator"),
        h("p", {}, fmtTime(hz.at) + ": " + JSON.stringify(hz.detail))) : null,
      h("h2", {}, "Participants"), participants,
      h("h2", {}, "Coordinator's log"), log,
      h("h2", {}, "Input"), h("pre", { id: "txn-input" }, JSON.stringify(t.input, null, 2)));
    if (TXN_SETTLED.includes(t.state)) clearInterval(timer);
  }
  await render();
  poll(render, 1000);
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
        // The saga's own version (it stays on the one it started with).
        def = (await api("/definitions/" + encodeURIComponent(s.definition) + "?version=" + encodeURIComponent(s.version))).definition;
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

// One version's steps and compensations as a graph: the actions left to right, and under
// them the compensations in the order they run (the reverse), a dashed node where a step has
// none.
function definitionGraph(def) {
  const call = (c) => (c ? c.method + " " + c.service + c.path : "no compensation");
  const fwd = [], back = [];
  def.steps.forEach((st, i) => {
    if (i) fwd.push(h("span.arrow", {}, "→"));
    fwd.push(h("div.node", { "data-step": st.name }, h("div.name", {}, st.name), h("div.meta.mono", {}, call(st.action))));
  });
  def.steps.slice().reverse().forEach((st, i) => {
    if (i) back.push(h("span.arrow", {}, "→"));
    back.push(h("div.node" + (st.compensation ? ".comp" : ".none"), { "data-undo": st.name },
      h("div.name", {}, "undo " + st.name), h("div.meta.mono", {}, call(st.compensation))));
  });
  return [h("div.lane", {}, h("span.label", {}, "actions"), fwd),
    h("div.lane", {}, h("span.label", {}, "on failure"), back)];
}

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
    // Every stored version (runs stay on the version they started with), newest first.
    let versions;
    try {
      versions = (await api("/definitions/" + encodeURIComponent(d.name) + "/versions")).items;
    } catch (e) {
      versions = [{ version: d.version, current: true, definition: { steps: d.steps.map((name) => ({ name })) } }];
    }
    const sections = versions.map((v) => h("div.version", { "data-version": v.version, "data-current": v.current ? "true" : "false" },
      h("h3", {}, h("span.mono", {}, v.version.slice(0, 12)), " ",
        v.current ? h("span.badge.s-completed", {}, "current") : h("span.badge", {}, "older"),
        v.created_at ? h("span.muted", {}, " loaded " + fmtTime(v.created_at)) : null),
      definitionGraph(v.definition),
      v.definition.business_key ? h("p.muted", {}, "business key: " + v.definition.business_key) : null));
    cards.push(h("div.card", { "data-definition": d.name },
      h("h2", {}, d.name, " ", h("span.muted", {}, versions.length + (versions.length === 1 ? " version" : " versions"))),
      d.description ? h("p.muted", {}, d.description) : null,
      sections));
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
  if (path.startsWith("/transaction/")) return transactionView(decodeURIComponent(path.slice(13)));
  if (path === "/transactions") return transactionsView(params);
  if (path === "/definitions") return definitionsView();
  return sagasView(params);
}

document.addEventListener("DOMContentLoaded", () => {
  const a = document.getElementById("actor");
  a.value = actor();
  a.addEventListener("change", () => localStorage.setItem("tandem-actor", a.value.trim() || "dashboard"));
  window.addEventListener("hashchange", route);
  revealTransactions();
  setInterval(revealTransactions, 5000);
  route();
});
