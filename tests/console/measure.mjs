// How long the console's search takes to show results, in Debian's
// Chromium: from pressing Enter (or Find) to the first frame with the
// result row, timed in the page (not through the automation protocol), over
// a service loaded with `userstream bench --import` (users user{i},
// user{i}@bench.example, 9{i:09}; attributes score0..score9). Not a test:
// deploy/console-bench.sh runs it and docs/benchmarks.md has its figures.
// Usage: node measure.mjs BASE COMPANY APPLICATION KEY SECRET USERS [ROUNDS]
import { launch } from "./browser.mjs";

const [base, company, application, key, secret, users, rounds = "30"] = process.argv.slice(2);
const n = Number(users);
const pick = () => Math.floor(Math.random() * n);
const fynd = `${base}/service/platform/user/v1.0/company/${company}/application/${application}`;

const browser = await launch();
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
await page.goto(`${base}/console`);
await page.getByLabel("Company id").fill(company);
await page.getByLabel("Application id").fill(application);
await page.getByLabel("API key").fill(key);
await page.getByLabel("API secret").fill(secret);
await page.getByLabel("API secret").press("Enter");
const input = page.getByLabel("Search customers");
await input.waitFor();
const token = await page.evaluate(() => JSON.parse(sessionStorage.getItem("userstream.console")).token);
const idOf = async (i) => {
  const r = await fetch(`${fynd}/customers/search?query=user${i}@bench.example`, { headers: { authorization: `Bearer ${token}` } });
  return (await r.json()).users[0]._id;
};

// Arms a clock in the page: it starts at the next submit (Enter, Find) or
// hash change, and stops at the first frame after a result cell containing
// `needle` is in the page.
const arm = (needle) => page.evaluate((needle) => {
  window.__took = new Promise((resolve) => {
    let t0 = 0;
    const start = () => { t0 = t0 || performance.now(); };
    document.addEventListener("submit", start, { capture: true, once: true });
    window.addEventListener("hashchange", start, { capture: true, once: true });
    const seen = () => [...document.querySelectorAll("#results td")].some((td) => td.textContent.includes(needle));
    const observer = new MutationObserver(() => {
      if (t0 && seen()) {
        observer.disconnect();
        requestAnimationFrame(() => resolve(performance.now() - t0));
      }
    });
    observer.observe(document.getElementById("main"), { childList: true, subtree: true });
  });
}, needle);
const took = () => page.evaluate(() => window.__took);

// One search: type the term, press Enter, the row of user i on screen.
const timed = async (term, i) => {
  await page.goto(`${base}/console#/search`);
  await input.fill(term);
  await arm(`user${i}@bench.example`);
  await input.press("Enter");
  return took();
};

const kinds = {
  email: (i) => `user${i}@bench.example`,
  phone: (i) => `9${String(i).padStart(9, "0")}`,
  username: (i) => `user${i}`,
  "JSON q": (i) => JSON.stringify({ username: `user${i}` }),
};
const results = {};
for (const [kind, term] of Object.entries(kinds)) {
  results[kind] = [];
  for (let r = 0; r < Number(rounds); r++) {
    const i = pick();
    results[kind].push(await timed(term(i), i));
  }
}
results.id = [];
for (let r = 0; r < Number(rounds); r++) {
  const i = pick();
  results.id.push(await timed(await idOf(i), i));
}

// The first screen (every customer, with the total) and an attribute condition.
results["all customers, page 1 with the total"] = [];
results["attribute condition (score1 gt 90), page 1"] = [];
for (let r = 0; r < Number(rounds); r++) {
  await page.goto(`${base}/console#/groups`);
  await page.getByRole("heading", { name: "Groups" }).waitFor();
  await arm("@bench.example");
  await page.goto(`${base}/console#/search`);
  results["all customers, page 1 with the total"].push(await took());
  await page.getByRole("combobox", { name: /^Attribute/ }).selectOption({ label: "Score 1 (score1)" });
  await page.getByRole("combobox", { name: /^Operator/ }).selectOption("gt");
  await page.getByLabel("Value").fill("90");
  await page.evaluate(() => document.getElementById("results").replaceChildren());
  await arm("@bench.example");
  await page.getByRole("button", { name: "Find" }).click();
  results["attribute condition (score1 gt 90), page 1"].push(await took());
}
await browser.close();

const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };
console.log(`| console search, ${n.toLocaleString("en")} users, ${rounds} each | p50 | p99 | max |`);
console.log("| --- | --- | --- | --- |");
for (const [kind, xs] of Object.entries(results)) {
  console.log(`| ${kind} | ${pct(xs, 0.5).toFixed(1)} ms | ${pct(xs, 0.99).toFixed(1)} ms | ${Math.max(...xs).toFixed(1)} ms |`);
}
