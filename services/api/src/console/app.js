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

async function api(path, options = {}) {
  const s = session();
  if (!s) { location.hash = "#/signin"; throw new ApiError(401, "signed out"); }
  const headers = { authorization: `Bearer ${s.token}`, ...(options.body ? { "content-type": "application/json" } : {}) };
  const r = await fetch(base(s) + path, { ...options, credentials: "omit", headers: { ...headers, ...(options.headers || {}) } });
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { message: text }; }
  if (r.status === 401) {
    sessionStorage.removeItem(KEY);
    sessionStorage.setItem(KEY + ".return", location.hash);
    location.hash = "#/signin";
    throw new ApiError(401, "your session ended: sign in again");
  }
  if (!r.ok) throw new ApiError(r.status, (body && (body.message || body.error)) || `HTTP ${r.status}`);
  return body;
}

function say(text, error) {
  status.textContent = text || "";
  status.className = error ? "error" : "";
}

function show(...nodes) {
  main.replaceChildren(...nodes);
  main.focus();
}

// -- sign in ------------------------------------------------------------------

function signin() {
  document.getElementById("nav").hidden = true;
  const error = el("p", { class: "error", role: "alert" });
  const form = el("form", { "aria-label": "Sign in" },
    el("h1", {}, "Sign in"),
    el("label", {}, "Company id", el("input", { name: "company", value: "1", required: true, autocomplete: "off" })),
    el("label", {}, "Application id", el("input", { name: "application", required: true, autocomplete: "off" })),
    el("label", {}, "API key", el("input", { name: "key", required: true, autocomplete: "username" })),
    el("label", {}, "API secret", el("input", { name: "secret", type: "password", required: true, autocomplete: "current-password" })),
    el("button", { type: "submit" }, "Sign in"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = new FormData(form);
    const company = f.get("company").trim();
    // `omit`: the endpoint's 401 carries a Basic challenge, which would
    // make the browser prompt for a password instead of answering.
    const r = await fetch(`/service/panel/authentication/v1.0/company/${encodeURIComponent(company)}/oauth/token`, {
      method: "POST",
      credentials: "omit",
      headers: { authorization: "Basic " + btoa(`${f.get("key").trim()}:${f.get("secret")}`),
                 "content-type": "application/x-www-form-urlencoded" },
      body: "grant_type=client_credentials",
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok || !body.access_token) {
      error.textContent = r.status === 401 ? "Wrong API key or secret." : (body.error_description || body.message || `HTTP ${r.status}`);
      return;
    }
    sessionStorage.setItem(KEY, JSON.stringify({ company, application: f.get("application").trim(), token: body.access_token }));
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
      el("td", {}, el("a", { href: `#/customer/${u._id}` }, [u.first_name, u.last_name].filter(Boolean).join(" ") || u.username)),
      el("td", {}, (u.emails || []).map((e) => e.email).join(", ")),
      el("td", {}, (u.phone_numbers || []).map((p) => p.phone).join(", ")),
      el("td", {}, u.archive ? "archived" : u.status),
      el("td", {}, el("code", {}, u._id))))));
}

function search(params) {
  const q = params.get("q") || "";
  const page = Number(params.get("page") || "1");
  const results = el("div", { id: "results" });
  const input = el("input", { name: "q", value: q, "aria-label": "Search customers",
    placeholder: "email, phone, username, id, or a JSON filter like {\"gender\":\"female\"}" });
  const form = el("form", { role: "search" }, el("div", { class: "row" }, input, el("button", { type: "submit" }, "Search")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/search?q=${encodeURIComponent(input.value.trim())}`;
  });
  show(section(el("h1", {}, "Customers"), form), section(results));
  input.focus();
  (async () => {
    try {
      if (q.startsWith("{") || q.startsWith("[") || !q) {
        const list = await api(`/customers/list?page_size=20&page_no=${page}${q ? "&q=" + encodeURIComponent(q) : ""}`);
        const pager = el("p", {}, `${list.page.item_total} customers `,
          page > 1 ? el("a", { href: `#/search?q=${encodeURIComponent(q)}&page=${page - 1}` }, "previous") : null, " ",
          list.page.has_next ? el("a", { href: `#/search?q=${encodeURIComponent(q)}&page=${page + 1}` }, "next") : null);
        results.replaceChildren(userRows(list.items), pager);
      } else {
        const found = await api(`/customers/search?query=${encodeURIComponent(q)}`);
        results.replaceChildren(userRows(found.users));
      }
    } catch (e) {
      results.replaceChildren(el("p", { class: "error", role: "alert" }, e.message));
    }
  })();
}

// -- a customer -----------------------------------------------------------------

async function customer(id) {
  const page = el("div", {});
  show(page);
  let user;
  try {
    user = (await api(`/customers/${encodeURIComponent(id)}`)).user;
  } catch (e) {
    page.replaceChildren(section(el("p", { class: "error", role: "alert" }, e.message)));
    return;
  }
  const act = (label, run) => el("button", { type: "button", onclick: async () => {
    try { await run(); say(`${label}: done`); customer(id); } catch (e) { say(e.message, true); }
  } }, label);
  const blocked = user.status === "blocked";
  page.append(section(
    el("h1", {}, [user.first_name, user.last_name].filter(Boolean).join(" ") || user.username),
    el("table", {}, el("tbody", {},
      [["Id", user._id], ["Username", user.username], ["Emails", (user.emails || []).map((e) => e.email).join(", ")],
       ["Phones", (user.phone_numbers || []).map((p) => p.phone).join(", ")], ["Status", user.status],
       ["Meta", JSON.stringify(user.meta || {})], ["Created", user.created_at], ["Updated", user.updated_at]]
        .map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))))),
    el("div", { class: "row" },
      act(blocked ? "Unblock" : "Block", () => api("/customers/activation", { method: "PUT",
        body: JSON.stringify({ user_id: [id], status: blocked, reason: "console" }) })),
      act("Archive", () => api("/customers/archive", { method: "PUT", body: JSON.stringify({ user_id: id }) })))));
  const parts = [
    ["Attributes", attributes], ["Groups, and why", groups], ["Sessions", sessions], ["History", history],
  ].map(([title, load]) => {
    const body = el("div", {}, el("p", { class: "muted" }, "Loading…"));
    page.append(section(el("h2", {}, title), body));
    return load(id, body).catch((e) => body.replaceChildren(el("p", { class: "error" }, e.message)));
  });
  await Promise.all(parts);
}

async function attributes(id, body) {
  const [values, definitions] = await Promise.all([
    api(`/user_attribute/user/${encodeURIComponent(id)}?page_size=100`),
    api("/user_attribute/definition?page_size=100"),
  ]);
  const encrypted = new Set(definitions.items.filter((d) => d.encrypted).map((d) => d._id));
  if (!values.items.length) return body.replaceChildren(el("p", { class: "muted" }, "No attribute values."));
  body.replaceChildren(el("table", {}, el("tbody", {}, values.items.map((v) => el("tr", {},
    el("th", {}, v.name || v.user_attribute_definition_id),
    el("td", {}, encrypted.has(v.user_attribute_definition_id) ? "•••• (encrypted)" : JSON.stringify(v.value)))))));
}

async function groups(id, body) {
  const mine = await api(`/customers/${encodeURIComponent(id)}/groups`);
  if (!mine.groups.length) return body.replaceChildren(el("p", { class: "muted" }, "In no group."));
  body.replaceChildren(el("table", {}, el("tbody", {}, mine.groups.map((g) => {
    const cause = g.joined.cause || {};
    const why = cause.kind === "event" ? `${cause.event_type} at position ${cause.position}`
      : cause.kind === "evaluation" ? `evaluation of rule version ${cause.rule_version}` : cause.kind || "";
    return el("tr", {},
      el("th", {}, el("a", { href: `#/group/${g._id}` }, g.name)),
      el("td", {}, g.conditions && g.conditions.length ? el("code", {}, JSON.stringify(g.conditions)) : "manual"),
      el("td", {}, `joined at position ${g.joined.position}${g.joined.at ? " (" + g.joined.at + ")" : ""}: ${why}`));
  }))));
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

// -- routing ------------------------------------------------------------------

function route() {
  say("");
  const [path, query] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  if (!session() || path === "/signin") return signin();
  document.getElementById("nav").hidden = false;
  const customerMatch = path.match(/^\/customer\/([^/]+)$/);
  if (customerMatch) return customer(decodeURIComponent(customerMatch[1]));
  return search(params);
}

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.hash = "#/signin";
});
window.addEventListener("hashchange", route);
route();
