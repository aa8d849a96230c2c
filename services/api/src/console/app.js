"use strict";
// The admin console: plain DOM, text nodes only (nothing a user wrote is
// ever parsed as HTML), the public API with an access token from the token
// endpoint. The token lives in sessionStorage, never in a URL.

const KEY = "userstream.console";
const main = document.getElementById("main");
const status = document.getElementById("status");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== false && v !== undefined && v !== null) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function session() {
  try { return JSON.parse(sessionStorage.getItem(KEY) || "null"); } catch { return null; }
}

function base(s) {
  return `/service/platform/user/v1.0/company/${encodeURIComponent(s.company)}/application/${encodeURIComponent(s.application)}`;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// The access token expired or was revoked: keep what was typed on this
// page (never a password), sign in again, come back to it.
function expired() {
  const fields = {};
  for (const f of main.querySelectorAll("input[name], select[name], textarea[name]")) {
    if (f.type !== "password" && f.type !== "file" && f.value) fields[f.name] = f.value;
  }
  const s = session() || {};
  if (location.hash !== "#/signin") {
    sessionStorage.setItem(KEY + ".return", location.hash);
    sessionStorage.setItem(KEY + ".draft", JSON.stringify({ hash: location.hash, fields, company: s.company, application: s.application }));
  }
  sessionStorage.removeItem(KEY);
  location.hash = "#/signin";
  return new ApiError(401, "your session ended: sign in again");
}

// Puts back what `expired` kept, in the fields of `root` that have its names.
function restore(root) {
  let draft;
  try { draft = JSON.parse(sessionStorage.getItem(KEY + ".draft") || "null"); } catch { draft = null; }
  const s = session() || {};
  if (!draft || draft.hash !== location.hash || draft.company !== s.company || draft.application !== s.application) return;
  for (const f of root.querySelectorAll("input[name], select[name], textarea[name]")) {
    if (f.type !== "file" && f.name in draft.fields) { f.value = draft.fields[f.name]; delete draft.fields[f.name]; }
  }
  if (Object.keys(draft.fields).length) sessionStorage.setItem(KEY + ".draft", JSON.stringify(draft));
  else sessionStorage.removeItem(KEY + ".draft");
}

function headers(s, extra) {
  return { authorization: `Bearer ${s.token}`, ...extra };
}

async function api(path, options = {}) {
  const s = session();
  if (!s) throw expired();
  const extra = options.body ? { "content-type": "application/json" } : {};
  const r = await fetch(base(s) + path, { ...options, credentials: "omit", headers: headers(s, { ...extra, ...(options.headers || {}) }) });
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { message: text }; }
  if (r.status === 401) throw expired();
  if (!r.ok) {
    // The request id finds the server's log lines of this failure.
    const id = r.headers.get("x-request-id");
    throw new ApiError(r.status, `${(body && (body.message || body.error)) || `HTTP ${r.status}`}${id ? ` (request ${id})` : ""}`);
  }
  return body;
}

// A file of the API (a job's export or error file) saved by the browser.
async function download(url, name) {
  const s = session();
  if (!s) throw expired();
  const r = await fetch(url, { credentials: "omit", headers: headers(s) });
  if (r.status === 401) throw expired();
  if (!r.ok) throw new ApiError(r.status, `HTTP ${r.status}`);
  const href = URL.createObjectURL(await r.blob());
  const a = el("a", { href, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}

// What the current page keeps running (a live stream, a poll): stopped when
// the page changes.
let running = new AbortController();

// The feed's head, where a live stream of what comes next starts: a page
// read past every position is empty and cheap, and still names the head.
async function head(query) {
  return (await api(`/events?after=${Number.MAX_SAFE_INTEGER}&limit=1${query ? "&" + query : ""}`)).head;
}

// Follows the feed live from `after` (Server-Sent Events read with fetch,
// since EventSource cannot send a bearer) until `signal` (the page's) is
// aborted, reconnecting from the last event seen; `onEvent` gets each
// event, `onState` "live" or "reconnecting". A refusal (4xx) ends it with
// the server's message.
async function follow(signal, query, after, onEvent, onState) {
  while (!signal.aborted) {
    try {
      const s = session();
      if (!s) throw expired();
      const r = await fetch(`${base(s)}/events?${query}`, { credentials: "omit", signal,
        headers: headers(s, { accept: "text/event-stream", "last-event-id": String(after) }) });
      if (r.status === 401) throw expired();
      if (r.status >= 400 && r.status < 500) {
        const body = await r.json().catch(() => ({}));
        throw new ApiError(r.status, body.message || `HTTP ${r.status}`);
      }
      if (!r.ok) throw new ApiError(r.status, `HTTP ${r.status}`);
      onState("live");
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (!data) continue;
          const event = JSON.parse(data);
          after = event.position;
          onEvent(event);
        }
      }
    } catch (e) {
      if (signal.aborted || e.status === 401) return;
      if (e.status >= 400 && e.status < 500) throw e;
    }
    onState("reconnecting");
    await new Promise((done) => setTimeout(done, 1000));
  }
}

// For loads that may overlap (a reload while another is on its way): each
// call of the returned function starts a load and gives a check that is
// true while no later load has started.
function turns() {
  let n = 0;
  return () => { const mine = ++n; return () => mine === n; };
}

function say(text, error) {
  status.textContent = text || "";
  status.className = error ? "error" : "";
}

function show(...nodes) {
  main.replaceChildren(...nodes);
  restore(main);
  main.focus();
}

function problem(e) {
  return el("p", { class: "error", role: "alert" }, e.message);
}

function name(u) {
  return [u.first_name, u.last_name].filter(Boolean).join(" ") || u.username || u._id;
}

function pager(page, go) {
  return el("div", { class: "row pager" },
    el("span", {}, page.item_total !== undefined ? `${page.item_total} in all` : ""),
    el("button", { type: "button", disabled: !(page.has_prev || page.current > 1), onclick: () => go(-1) }, "Previous"),
    el("button", { type: "button", disabled: !page.has_next, onclick: () => go(1) }, "Next"));
}

// -- sign in ------------------------------------------------------------------

function signin() {
  document.getElementById("nav").hidden = true;
  // The tenant of the last sign-in in this tab (never the secret).
  let last = {};
  try { last = JSON.parse(sessionStorage.getItem(KEY + ".tenant") || "{}"); } catch { last = {}; }
  const error = el("p", { class: "error", role: "alert" });
  const form = el("form", { "aria-label": "Sign in" },
    el("h1", {}, "Sign in"),
    el("label", {}, "Company id", el("input", { name: "company", value: last.company || "1", required: true, autocomplete: "off" })),
    el("label", {}, "Application id", el("input", { name: "application", value: last.application || "", required: true, autocomplete: "off" })),
    el("label", {}, "API key", el("input", { name: "key", required: true, autocomplete: "username" })),
    el("label", {}, "API secret", el("input", { name: "secret", type: "password", required: true, autocomplete: "current-password" })),
    el("button", { type: "submit" }, "Sign in"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = new FormData(form);
    const company = f.get("company").trim();
    // `omit`: the endpoint's 401 carries a Basic challenge, which would
    // make the browser prompt for a password instead of answering.
    let r;
    try {
      r = await fetch(`/service/panel/authentication/v1.0/company/${encodeURIComponent(company)}/oauth/token`, {
        method: "POST",
        credentials: "omit",
        headers: { authorization: "Basic " + btoa(`${f.get("key").trim()}:${f.get("secret")}`),
                   "content-type": "application/x-www-form-urlencoded" },
        body: "grant_type=client_credentials",
      });
    } catch (e) {
      // btoa refuses characters outside Latin-1; fetch fails when offline.
      error.textContent = e.name === "InvalidCharacterError" ? "Wrong API key or secret." : `Cannot reach the server: ${e.message}`;
      return;
    }
    const body = await r.json().catch(() => ({}));
    if (!r.ok || !body.access_token) {
      error.textContent = r.status === 401 ? "Wrong API key or secret." : (body.error_description || body.message || `HTTP ${r.status}`);
      return;
    }
    const application = f.get("application").trim();
    sessionStorage.setItem(KEY, JSON.stringify({ company, application, token: body.access_token }));
    sessionStorage.setItem(KEY + ".tenant", JSON.stringify({ company, application }));
    // Back to where the session ended, unless that was another tenant's page.
    let draft = {};
    try { draft = JSON.parse(sessionStorage.getItem(KEY + ".draft") || "{}"); } catch { draft = {}; }
    if (draft.hash && (draft.company !== company || draft.application !== application)) {
      sessionStorage.removeItem(KEY + ".draft");
      sessionStorage.removeItem(KEY + ".return");
    }
    const back = sessionStorage.getItem(KEY + ".return");
    sessionStorage.removeItem(KEY + ".return");
    location.hash = back && back !== "#/signin" ? back : "#/search";
  });
  show(section(form));
}

function section(...children) { return el("section", {}, ...children); }

// -- search -------------------------------------------------------------------

function userRows(users) {
  if (!users.length) return el("p", { class: "muted" }, "No customer found.");
  return el("table", {},
    el("thead", {}, el("tr", {}, ["Name", "Email", "Phone", "Status", "Id"].map((h) => el("th", {}, h)))),
    el("tbody", {}, users.map((u) => el("tr", {},
      el("td", {}, el("a", { href: `#/customer/${u._id}` }, name(u))),
      el("td", {}, (u.emails || []).map((e) => e.email).join(", ")),
      el("td", {}, (u.phone_numbers || []).map((p) => p.phone).join(", ")),
      el("td", {}, u.archive ? "archived" : u.status),
      el("td", {}, el("code", {}, u._id))))));
}

const OPERATORS = ["eq", "neq", "gt", "gte", "lt", "lte", "in", "nin", "contains", "exists", "not_exists", "between"];

function search(params) {
  const q = params.get("q") || "";
  const page = Number(params.get("page") || "1");
  const results = el("div", { id: "results", "aria-live": "polite" });
  const input = el("input", { name: "q", value: q, "aria-label": "Search customers",
    placeholder: "email, phone, username, id, or a JSON filter like {\"gender\":\"female\"}" });
  const form = el("form", { role: "search" }, el("div", { class: "row" }, input, el("button", { type: "submit" }, "Search")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/search?q=${encodeURIComponent(input.value.trim())}`;
  });
  const byAttribute = el("form", { "aria-label": "Search by attribute" }, el("p", { class: "muted" }, "Loading attributes…"));
  show(section(el("h1", {}, "Customers"), form), section(el("h2", {}, "By attribute"), byAttribute), section(results));
  input.focus();
  // The list below and a search by attribute both fill the results: the
  // latest asked wins.
  const turn = turns();
  attributeSearch(byAttribute, results, turn).catch((e) => byAttribute.replaceChildren(problem(e)));
  const current = turn();
  (async () => {
    let shown;
    try {
      if (q.startsWith("{") || q.startsWith("[") || !q) {
        const list = await api(`/customers/list?page_size=20&page_no=${page}${q ? "&q=" + encodeURIComponent(q) : ""}`);
        shown = [userRows(list.items), pager(list.page, (step) => {
          location.hash = `#/search?q=${encodeURIComponent(q)}&page=${page + step}`;
        })];
      } else {
        const found = await api(`/customers/search?query=${encodeURIComponent(q)}`);
        shown = [userRows(found.users)];
      }
    } catch (e) {
      shown = [problem(e)];
    }
    if (current()) results.replaceChildren(...shown);
  })();
}

// Conditions on attribute values (all must hold): POST /user_attribute/users.
async function attributeSearch(form, results, turn) {
  const definitions = (await api("/user_attribute/definition?page_size=100")).items;
  if (!definitions.length) return form.replaceChildren(el("p", { class: "muted" }, "No attribute is defined."));
  const rows = el("div", {});
  const addRow = () => {
    const n = rows.children.length;
    rows.append(el("div", { class: "row" },
      el("label", {}, "Attribute", el("select", { name: `attribute_${n}` },
        definitions.map((d) => el("option", { value: d._id }, `${d.name} (${d.slug})`)))),
      el("label", {}, "Operator", el("select", { name: `operator_${n}` }, OPERATORS.map((o) => el("option", { value: o }, o)))),
      el("label", {}, "Value", el("input", { name: `value_${n}`, placeholder: "pune, or 18,30 for between/in" }))));
  };
  addRow();
  let page = 1;
  const run = async () => {
    const conditions = [...rows.children].map((row) => {
      const [definition, operator, value] = row.querySelectorAll("select, input");
      return { definition_id: definition.value, type: operator.value, value: value.value };
    });
    const current = turn();
    let shown;
    try {
      const found = await api("/user_attribute/users", { method: "POST",
        body: JSON.stringify({ query: { type: "and", limit: 20, page, conditions } }) });
      shown = [userRows(found.items), pager(found.page, (step) => { page += step; run(); })];
    } catch (e) {
      shown = [problem(e)];
    }
    if (current()) results.replaceChildren(...shown);
  };
  form.replaceChildren(rows, el("div", { class: "row" },
    el("button", { type: "button", onclick: addRow }, "Add a condition"),
    el("button", { type: "submit" }, "Find")));
  form.addEventListener("submit", (event) => { event.preventDefault(); page = 1; run(); });
  restore(form);
}

// -- a customer -----------------------------------------------------------------

async function customer(id) {
  const page = el("div", {});
  show(page);
  let user;
  try {
    user = await profile(id);
  } catch (e) {
    page.replaceChildren(section(el("h1", {}, "Customer"), problem(e)));
    return;
  }
  const act = (label, run) => el("button", { type: "button", onclick: async () => {
    try { await run(); say(`${label}: done`); customer(id); } catch (e) { say(e.message, true); }
  } }, label);
  const blocked = user.status === "blocked";
  const body = (value) => ({ method: "PUT", body: JSON.stringify(value) });
  page.append(section(
    el("h1", {}, name(user)),
    el("table", {}, el("tbody", {},
      [["Id", user._id], ["Username", user.username], ["Emails", (user.emails || []).map((e) => e.email).join(", ")],
       ["Phones", (user.phone_numbers || []).map((p) => p.phone).join(", ")], ["Status", user.archive ? "archived" : user.status],
       ["Meta", JSON.stringify(user.meta || {})], ["Created", user.created_at], ["Updated", user.updated_at]]
        .map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))))),
    el("div", { class: "row" },
      user.archive ? null : act(blocked ? "Unblock" : "Block", () => api("/customers/activation",
        body({ user_id: [id], status: blocked, reason: "console" }))),
      user.archive ? act("Restore", () => api("/customers/undelete", body({ user_id: id, reason: "console" })))
        : act("Archive", () => api("/customers/archive", body({ user_id: id })))))); 
  const definitions = api("/user_attribute/definition?page_size=100").then((d) => d.items);
  definitions.catch(() => {});
  const parts = [
    ["Attributes", attributes], ["Groups, and why", groupsOf], ["Sessions", sessions], ["History", history],
  ].map(([title, load]) => {
    const part = el("div", {}, el("p", { class: "muted" }, "Loading…"));
    page.append(section(el("h2", {}, title), part));
    return load(id, part, definitions).catch((e) => part.replaceChildren(problem(e)));
  });
  await Promise.all(parts);
}

// The customer; an archived one (the API answers 404 for it) as it was
// just before it was archived, read from its history, so it can be restored.
async function profile(id) {
  const path = `/customers/${encodeURIComponent(id)}`;
  try {
    return (await api(path)).user;
  } catch (e) {
    if (e.status !== 404) throw e;
    const events = (await api(`${path}/history`).catch(() => ({ history: [] }))).history;
    // Archiving also revokes the sessions (events after the archive).
    const last = events.filter((h) => ["user.archived", "user.restored", "user.erased"].includes(h.type)).pop();
    if (!last || last.type !== "user.archived") throw e;
    return { ...(await api(`${path}?as_of=${last.position - 1}`)).user, archive: true };
  }
}

async function attributes(id, body, definitions) {
  const values = await api(`/user_attribute/user/${encodeURIComponent(id)}?page_size=100`);
  const encrypted = new Set((await definitions).filter((d) => d.encrypted).map((d) => d._id));
  if (!values.items.length) return body.replaceChildren(el("p", { class: "muted" }, "No attribute values."));
  body.replaceChildren(el("table", {}, el("tbody", {}, values.items.map((v) => el("tr", {},
    el("th", {}, v.name || v.user_attribute_definition_id),
    el("td", {}, encrypted.has(v.user_attribute_definition_id) ? "•••• (encrypted)" : JSON.stringify((v.attribute || {}).value)))))));
}

function why(cause) {
  cause = cause || {};
  return cause.kind === "event" ? `${cause.event_type} at position ${cause.position}`
    : cause.kind === "evaluation" ? `evaluation of rule version ${cause.rule_version}` : cause.kind || "";
}

// The attribute definitions' slugs by id (for rules).
async function definitionNames(definitions) {
  const list = await (definitions || api("/user_attribute/definition?page_size=100").then((d) => d.items));
  return new Map(list.map((d) => [d._id, d.slug]));
}

function rule(g, names) {
  return g.conditions && g.conditions.length
    ? el("code", {}, g.conditions.map((c) =>
      `${names.get(c.user_attribute_definition_id) || c.user_attribute_definition_id} ${c.type} ${JSON.stringify(c.value)}`).join(" and "))
    : "manual";
}

async function groupsOf(id, body, definitions) {
  const [mine, names] = await Promise.all([api(`/customers/${encodeURIComponent(id)}/groups`), definitionNames(definitions)]);
  if (!mine.groups.length) return body.replaceChildren(el("p", { class: "muted" }, "In no group."));
  body.replaceChildren(el("table", {}, el("tbody", {}, mine.groups.map((g) => el("tr", {},
    el("th", {}, el("a", { href: `#/group/${g._id}` }, g.name)),
    el("td", {}, rule(g, names)),
    el("td", {}, `joined at position ${g.joined.position}${g.joined.at ? " (" + g.joined.at + ")" : ""}: ${why(g.joined.cause)}`))))));
}

async function sessions(id, body) {
  const list = await api(`/customers/sessions?id=${encodeURIComponent(id)}`);
  if (!list.items.length) return body.replaceChildren(el("p", { class: "muted" }, "No active session."));
  body.replaceChildren(el("table", {}, el("tbody", {}, list.items.map((s) => el("tr", {},
    el("td", {}, el("code", {}, s.session_id)), el("td", {}, s.domain), el("td", {}, `until ${s.expire_in}`),
    el("td", {}, el("button", { type: "button", onclick: async () => {
      try {
        await api(`/customers/session?id=${encodeURIComponent(id)}&session_id=${encodeURIComponent(s.session_id)}&reason=console`, { method: "DELETE" });
        say("Session revoked");
        await sessions(id, body);
      } catch (e) { say(e.message, true); }
    } }, "Revoke")))))));
}

async function history(id, body) {
  const h = await api(`/customers/${encodeURIComponent(id)}/history`);
  body.replaceChildren(el("ol", { reversed: true }, h.history.slice().reverse().map((e) => el("li", {},
    el("strong", {}, e.type), ` at ${e.recorded_at} by ${e.actor} (position ${e.position})`,
    e.changes.length ? el("ul", {}, e.changes.map((c) => el("li", {},
      el("code", {}, c.field), ": ", JSON.stringify(c.from), " → ", JSON.stringify(c.to)))) : null))));
}

// -- groups -----------------------------------------------------------------------

async function groups(params) {
  const page = Number(params.get("page") || "1");
  const body = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  show(section(el("h1", {}, "Groups"), body));
  try {
    const list = await api(`/user_group?page_size=50&page_no=${page}`);
    body.replaceChildren(list.items.length ? el("table", {},
      el("thead", {}, el("tr", {}, ["Name", "Type", "Members", "Status"].map((h) => el("th", {}, h)))),
      el("tbody", {}, list.items.map((g) => el("tr", {},
        el("td", {}, el("a", { href: `#/group/${g._id}` }, g.name)), el("td", {}, g.type),
        el("td", {}, String(g.total_users)), el("td", {}, g.status))))) : el("p", { class: "muted" }, "No group."),
    pager(list.page, (step) => { location.hash = `#/groups?page=${page + step}`; }));
  } catch (e) {
    body.replaceChildren(problem(e));
  }
}

// A group: its rule, its members (cursor pages) and the changes of its
// membership as the engine appends them.
async function group(id) {
  const signal = running.signal;
  const page = el("div", {});
  show(page);
  let g, after, names;
  try {
    // The feed's head first: the live stream starts there, so no change
    // between the two reads is missed.
    after = await head("types=group.membership_changed");
    [g, names] = await Promise.all([api(`/user_group/${encodeURIComponent(id)}`), definitionNames()]);
  } catch (e) {
    page.replaceChildren(section(el("h1", {}, "Group"), problem(e)));
    return;
  }
  if (signal.aborted) return;
  const total = el("span", { id: "total" }, String(g.total_users));
  const state = el("span", { class: "muted", id: "group-live" }, "connecting…");
  const changes = el("ul", { id: "changes" });
  const members = el("div", { id: "members" }, el("p", { class: "muted" }, "Loading…"));
  page.append(
    section(el("h1", {}, g.name), el("p", {}, g.description || ""),
      el("table", {}, el("tbody", {},
        el("tr", {}, el("th", {}, "Rule"), el("td", {}, rule(g, names))),
        el("tr", {}, el("th", {}, "Type"), el("td", {}, g.type)),
        el("tr", {}, el("th", {}, "Status"), el("td", {}, g.status)),
        el("tr", {}, el("th", {}, "Members"), el("td", {}, total))))),
    section(el("h2", {}, "Membership changes, live ", state), changes),
    section(el("h2", {}, "Members"), members));
  let shown = [];
  const turn = turns();
  const load = async (cursor, direction) => {
    shown = [cursor, direction];
    const current = turn();
    let view;
    try {
      const q = cursor ? `&cursor=${encodeURIComponent(cursor)}&direction=${direction}` : "";
      const list = await api(`/user_group/${encodeURIComponent(id)}/users?page_size=20${q}`);
      view = [list.items.length ? el("ul", {}, list.items.map((u) => el("li", {},
        el("a", { href: `#/customer/${u.user_id}` }, el("code", {}, u.user_id)), " ",
        (u.emails || []).map((e) => e.email).join(", ")))) : el("p", { class: "muted" }, "No member."),
      pager(list.page, (step) => step > 0 ? load(list.page.next_cursor, "next") : load(list.page.prev_cursor, "prev"))];
    } catch (e) {
      view = [problem(e)];
    }
    if (current() && !signal.aborted) members.replaceChildren(...view);
  };
  load();
  const totals = turns();
  follow(signal, "types=group.membership_changed", after, async (e) => {
    if (e.data.group_id !== id) return;
    const who = (ids, verb) => ids.map((u) => el("li", {}, el("a", { href: `#/customer/${u}` }, el("code", {}, u)),
      ` ${verb} at position ${e.position} (${e.occurred_at}): ${why(e.data.cause)}`));
    changes.prepend(...who(e.data.left || [], "left"), ...who(e.data.joined || [], "joined"));
    while (changes.children.length > 200) changes.lastChild.remove();
    load(...shown);
    // The total as the read model has it once it has this change.
    const current = totals();
    const now = await api(`/user_group/${encodeURIComponent(id)}`, { headers: { "x-min-position": String(e.position) } })
      .catch(() => null);
    if (now && current()) total.textContent = String(now.total_users);
  }, (s) => { state.textContent = s; }).catch((e) => { state.textContent = e.message; });
}

// -- the event feed ---------------------------------------------------------------

function events(params) {
  const signal = running.signal;
  const types = params.get("types") || "";
  const from = params.get("from") || "now";
  const list = el("ul", { id: "feed" });
  const state = el("span", { class: "muted", id: "feed-live" }, "connecting…");
  const form = el("form", { "aria-label": "Filter events" }, el("div", { class: "row" },
    el("label", {}, "Types", el("input", { name: "types", value: types, placeholder: "user.*, group.membership_changed" })),
    el("label", {}, "From", el("select", { name: "from" },
      el("option", { value: "now", selected: from === "now" }, "now"),
      el("option", { value: "start", selected: from === "start" }, "the first event"))),
    el("button", { type: "submit" }, "Follow")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const f = new FormData(form);
    location.hash = `#/events?types=${encodeURIComponent(f.get("types").trim())}&from=${f.get("from")}`;
  });
  show(section(el("h1", {}, "Events"), form), section(el("h2", {}, "Live ", state), list));
  const query = types ? `types=${encodeURIComponent(types)}` : "";
  (async () => {
    try {
      const after = from === "start" ? 0 : await head(query);
      await follow(signal, query, after, (e) => {
        const link = e.stream.startsWith("user-") ? `#/customer/${e.stream.slice(5)}`
          : e.stream.startsWith("group-") ? `#/group/${e.stream.slice(6)}` : null;
        list.prepend(el("li", {},
          el("strong", {}, e.type), ` ${e.occurred_at} by ${e.actor}, position ${e.position}, `,
          link ? el("a", { href: link }, e.stream) : e.stream,
          el("details", {}, el("summary", {}, "data"), el("pre", {}, JSON.stringify(e.data, null, 2)))));
        while (list.children.length > 200) list.lastChild.remove();
      }, (s) => { state.textContent = s; });
    } catch (e) {
      if (!signal.aborted) list.replaceChildren(problem(e));
    }
  })();
}

// -- bulk jobs --------------------------------------------------------------------

function jobs() {
  const signal = running.signal;
  const list = el("div", { id: "jobs" }, el("p", { class: "muted" }, "Loading…"));
  const start = (kind, form, request) => form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const [query, options] = request(new FormData(form));
      await api(`/users/jobs/${kind}${query}`, { method: "POST", ...options });
      say(`${kind} started`);
      refresh();
    } catch (e) { say(e.message, true); }
  });
  const formats = (name) => el("select", { name }, el("option", { value: "csv" }, "CSV"), el("option", { value: "jsonl" }, "JSON lines"));
  const importForm = el("form", { "aria-label": "Import users" },
    el("h2", {}, "Import users"),
    el("div", { class: "row" },
      el("label", {}, "Upload a file", el("input", { name: "upload", type: "file", accept: ".csv,.jsonl,.ndjson,text/csv,application/x-ndjson" })),
      el("label", {}, "or its URL", el("input", { name: "file",
        placeholder: "file://users.csv (in the server's files directory) or an http(s) URL" }))),
    el("div", { class: "row" }, el("label", {}, "Format", formats("import_format")), el("button", { type: "submit" }, "Start the import")));
  start("import", importForm, (f) => {
    const upload = f.get("upload"), file = f.get("file").trim(), format = f.get("import_format");
    if (upload && upload.size) {
      // The file itself is the body; the server keeps it with the job.
      return [`?file_name=${encodeURIComponent(upload.name)}`,
        { body: upload, headers: { "content-type": format === "jsonl" ? "application/x-ndjson" : "text/csv" } }];
    }
    if (!file) throw new ApiError(400, "Choose a file to upload, or name one.");
    return ["", { body: JSON.stringify({ absolute_url: file, file_format: format, relative_url: file.split("/").pop() }) }];
  });
  const exportForm = el("form", { "aria-label": "Export users" },
    el("h2", {}, "Export users"),
    el("label", {}, "Filter (optional)", el("input", { name: "export_q", placeholder: "a JSON filter as in the search" })),
    el("div", { class: "row" }, el("label", {}, "Format", formats("export_format")), el("button", { type: "submit" }, "Start the export")));
  start("export", exportForm, (f) => ["", { body: JSON.stringify({ file_format: f.get("export_format"),
    ...(f.get("export_q").trim() ? { q: f.get("export_q").trim() } : {}) }) }]);
  show(section(el("h1", {}, "Bulk jobs"), importForm), section(exportForm), section(el("h2", {}, "Recent jobs"), list));
  // One poll at a time: a refresh (a new job, the timer) supersedes any
  // other, and leaving the page stops them.
  let timer = null;
  const turn = turns();
  const refresh = async () => {
    clearTimeout(timer);
    const current = turn();
    let again = false, view;
    try {
      const [imports, exports] = await Promise.all([api("/users/jobs/import?page_size=10"), api("/users/jobs/export?page_size=10")]);
      const all = [...imports.items, ...exports.items].sort((a, b) => b.created_at.localeCompare(a.created_at));
      view = all.length ? el("table", {},
        el("thead", {}, el("tr", {}, ["Job", "Status", "Progress", "Files"].map((h) => el("th", {}, h)))),
        el("tbody", {}, all.map(jobRow))) : el("p", { class: "muted" }, "No job yet.");
      again = all.some((j) => j.status === "pending" || j.status === "running");
    } catch (e) {
      // A passing failure (a read model behind, the network): try again.
      view = problem(e);
      again = e.status !== 401;
    }
    if (!current() || signal.aborted) return;
    list.replaceChildren(view);
    if (again) timer = setTimeout(refresh, 1000);
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  refresh();
}

function jobRow(j) {
  const done = j.count.success + j.count.error;
  // The job's files on this service, by the job's id: a link's absolute
  // URL may name another host (an import's source; a proxy's Host).
  const file = (label, name, saveAs) => el("button", { type: "button", onclick: () => {
    const s = session();
    if (s) download(`${base(s)}/jobs/${encodeURIComponent(j._id)}/files/${name}`, saveAs).catch((e) => say(e.message, true));
  } }, label);
  return el("tr", {},
    el("td", {}, `${j.action_type} `, el("code", {}, j.file_name || j._id), el("br", {}), el("span", { class: "muted" }, j.created_at)),
    el("td", {}, j.status, j.reason ? el("div", { class: "error" }, j.reason) : null),
    el("td", {}, el("progress", { max: j.count.total || 1, value: j.status === "completed" ? j.count.total || 1 : done }),
      ` ${j.count.success} done, ${j.count.error} rejected of ${j.count.total}`),
    el("td", {}, j.action_type === "export" && j.status === "completed" ? file("Download the file", "file", `${j._id}.${j.file_format}`) : null,
      j.count.error ? file("Download the errors", "error", `${j._id}-errors.csv`) : null));
}

// -- routing ------------------------------------------------------------------

function route() {
  running.abort();
  running = new AbortController();
  say("");
  const [path, query] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  if (!session() && path !== "/signin" && path) sessionStorage.setItem(KEY + ".return", location.hash);
  if (!session() || path === "/signin") return signin();
  document.getElementById("nav").hidden = false;
  const match = (re) => { const m = path.match(re); return m && decodeURIComponent(m[1]); };
  const customerId = match(/^\/customer\/([^/]+)$/);
  if (customerId) return customer(customerId);
  const groupId = match(/^\/group\/([^/]+)$/);
  if (groupId) return group(groupId);
  if (path === "/groups") return groups(params);
  if (path === "/events") return events(params);
  if (path === "/jobs") return jobs();
  return search(params);
}

document.getElementById("signout").addEventListener("click", () => {
  for (const k of ["", ".return", ".draft"]) sessionStorage.removeItem(KEY + k);
  location.hash = "#/signin";
});
window.addEventListener("hashchange", route);
route();
