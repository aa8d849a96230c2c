// Drives the admin console in headless Chromium (Debian's, through
// playwright-core) against a server the Rust test prepared: sign in (a
// wrong secret first), find a customer by email, see a timeline entry
// appear after an update, block, archive and restore it, find it by an
// attribute, watch a rule group gain it live, follow the event feed, run an
// import and download its error file, sign in again after the token
// expired without losing a half-filled form, another tenant's id, and a
// name full of HTML shown as text, an invalid filter's 400.
// Usage: node console.mjs SETUP_JSON (see tests/tests/console.rs)
import { launch } from "./browser.mjs";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";

const setup = JSON.parse(process.argv[2]);
const { base, company, application, key, secret, email, screenshots: shots } = setup;
const fynd = `${base}/service/platform/user/v1.0/company/${company}/application/${application}`;
const call = async (method, path, body) => {
  const r = await fetch(`${fynd}${path}`, {
    method, headers: { authorization: `Bearer ${setup.token}`, "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  const text = await r.text();
  assert.ok(r.ok, `${method} ${path}: ${r.status} ${text}`);
  return JSON.parse(text);
};
const shot = async (page, name, fullPage = true) => {
  if (shots) await page.screenshot({ path: `${shots}/${name}.png`, fullPage });
};

const browser = await launch();
const failures = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
  await page.goto(`${base}/console`);
  const signIn = async (withSecret) => {
    await page.getByLabel("Company id").fill(company);
    await page.getByLabel("Application id").fill(application);
    await page.getByLabel("API key").fill(key);
    await page.getByLabel("API secret").fill(withSecret);
    await page.getByLabel("API secret").press("Enter");
  };

  // A wrong secret: a clear message, no token kept.
  await signIn("not-the-secret");
  await page.getByRole("alert").filter({ hasText: "Wrong API key or secret." }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("userstream.console")), null);

  // Sign in with the keyboard (Enter in the secret field).
  await page.getByLabel("API secret").fill(secret);
  await page.getByLabel("API secret").press("Enter");
  await page.getByLabel("Search customers").waitFor();
  assert.ok(!page.url().includes(await page.evaluate(() => JSON.parse(sessionStorage.getItem("userstream.console")).token)),
    "the token is never in the URL");

  // Find the customer by email, open it.
  await page.getByLabel("Search customers").fill(email);
  await page.getByLabel("Search customers").press("Enter");
  const link = page.locator("#results a").first();
  await link.waitFor();
  await shot(page, "console-search", false);
  await link.press("Enter");
  await page.getByRole("heading", { level: 1 }).waitFor();
  const id = page.url().split("/").pop();
  await page.getByRole("heading", { name: "History" }).waitFor();
  await page.getByText("user.created").first().waitFor();
  // Attributes: values shown, an encrypted one masked.
  await page.locator("td", { hasText: /^"goa"$/ }).waitFor();
  await page.locator("td", { hasText: "•••• (encrypted)" }).waitFor();
  assert.ok(!(await page.locator("main").textContent()).includes("ABCDE1234F"), "the encrypted value is not shown");
  await shot(page, "console-customer");

  // An update through the API appears in the history.
  await call("PUT", `/customers/${id}`, { first_name: "Augusta" });
  await page.reload();
  await page.getByText("user.updated").first().waitFor();
  await page.getByText('"Augusta"').first().waitFor();

  // Revoke one of its two sessions.
  const revokes = (n) => page.waitForFunction(
    (n) => [...document.querySelectorAll("button")].filter((b) => b.textContent === "Revoke").length === n, n);
  await revokes(2);
  await page.getByRole("button", { name: "Revoke" }).first().click();
  await page.getByText("Session revoked").waitFor();
  await revokes(1);

  // Archive it (which also ends its other session), restore it, block it.
  await page.getByRole("button", { name: "Archive" }).click();
  await page.getByRole("button", { name: "Restore" }).click();
  await page.getByRole("button", { name: "Archive" }).waitFor();
  await page.getByText("user.restored").first().waitFor();
  await page.getByText("user.sessions_revoked").first().waitFor();
  // Blocking with the keyboard alone: Tab from the top of the page to the
  // button, then Enter.
  await page.getByRole("button", { name: "Block" }).waitFor();
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  let reached = false;
  for (let i = 0; i < 40 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement && document.activeElement.textContent === "Block");
  }
  assert.ok(reached, "the Block button is reachable with Tab");
  await page.keyboard.press("Enter");
  await page.getByRole("button", { name: "Unblock" }).waitFor();
  await page.locator("td", { hasText: /^blocked$/ }).first().waitFor();

  // Find it by an attribute condition.
  await page.goto(`${base}/console#/search`);
  await page.getByRole("combobox", { name: /^Attribute/ }).selectOption(setup.city);
  await page.getByRole("combobox", { name: /^Operator/ }).selectOption("eq");
  await page.getByLabel("Value").fill("goa");
  await page.getByRole("button", { name: "Find" }).click();
  await page.locator(`#results a[href="#/customer/${id}"]`).waitFor();

  // A rule group gains the customer live, with why.
  await page.goto(`${base}/console#/group/${setup.group_id}`);
  await page.locator("#group-live", { hasText: "live" }).waitFor();
  assert.equal(await page.locator("#total").textContent(), "0");
  await page.getByText("city eq \"pune\"").waitFor();
  await call("PUT", `/user_attribute/definition/${setup.city}/user/${id}`, { attribute: { value: "pune" }, customer_overridden: true });
  const change = page.locator("#changes li", { hasText: id });
  await change.waitFor();
  assert.match(await change.textContent(), /joined at position \d+ .*attribute/);
  await page.locator("#total", { hasText: /^1$/ }).waitFor();
  await page.locator(`#members a[href="#/customer/${id}"]`).waitFor();
  await shot(page, "console-group");

  // A group's members in cursor pages of 20.
  await page.goto(`${base}/console#/group/${setup.paged_group_id}`);
  const members = page.locator("#members li");
  const count = async (n) => page.waitForFunction((n) => document.querySelectorAll("#members li").length === n, n);
  await count(20);
  const firstPage = await members.allTextContents();
  await page.locator("#members").getByRole("button", { name: "Next" }).click();
  await count(setup.paged_total - 20);
  assert.ok(!firstPage.includes(await members.first().textContent()), "the next page has other members");
  await page.locator("#members").getByRole("button", { name: "Previous" }).click();
  await count(20);
  assert.deepEqual(await members.allTextContents(), firstPage);

  // The event feed, live, filtered by type.
  await page.goto(`${base}/console#/events?types=user.*&from=now`);
  await page.locator("#feed-live", { hasText: "live" }).waitFor();
  await call("PUT", `/user_attribute/definition/${setup.city}/user/${id}`, { attribute: { value: "goa" }, customer_overridden: true });
  await call("PUT", `/customers/${id}`, { last_name: "Live" });
  // The attribute change came first: once the update is shown, it would be too.
  await page.locator("#feed li", { hasText: "user.updated" }).first().waitFor();
  await shot(page, "console-events", false);
  assert.equal(await page.locator("#feed li", { hasText: "attribute." }).count(), 0, "the type filter holds");

  // An import: progress, then the error file.
  await page.goto(`${base}/console#/jobs`);
  await page.getByLabel("or its URL").fill("file://users.csv");
  await page.getByRole("button", { name: "Start the import" }).click();
  await page.locator("#jobs td", { hasText: /^completed$/ }).waitFor();
  await page.getByText("1 done, 1 rejected of 2").waitFor();
  const [download] = await Promise.all([page.waitForEvent("download"),
    page.getByRole("button", { name: "Download the errors" }).click()]);
  const errors = await readFile(await download.path(), "utf8");
  assert.match(errors, /^3,email is not a valid email/m, "the error file names the rejected row and why");
  // An upload from this machine: the file is the request's body.
  await page.getByLabel("Upload a file").setInputFiles({ name: "more.csv", mimeType: "text/csv",
    buffer: Buffer.from("username,phone_number,email\nuploaded,9100000003,uploaded@x.io\n") });
  await page.getByLabel("or its URL").fill("");
  await page.getByRole("button", { name: "Start the import" }).click();
  await page.locator("#jobs tr", { hasText: "more.csv" }).locator("td", { hasText: /^completed$/ }).waitFor();
  await page.locator("#jobs tr", { hasText: "more.csv" }).getByText("1 done, 0 rejected of 1").waitFor();
  assert.equal((await call("GET", "/customers/search?query=uploaded@x.io")).users.length, 1);
  await page.getByLabel("Upload a file").setInputFiles([]);

  // An export, then its file.
  await page.getByRole("button", { name: "Start the export" }).click();
  await page.locator("#jobs tr", { hasText: "export" }).locator("td", { hasText: /^completed$/ }).waitFor();
  const [exported] = await Promise.all([page.waitForEvent("download"),
    page.getByRole("button", { name: "Download the file" }).click()]);
  assert.match(await readFile(await exported.path(), "utf8"), /alice@example\.com/i, "the export has the customers");
  await shot(page, "console-jobs", false);

  // The token expires while a form is half filled: sign in again, the
  // form is as it was, and nothing was started with the dead token.
  await page.getByLabel("or its URL").fill("file://later.csv");
  await page.evaluate((token) => {
    const s = JSON.parse(sessionStorage.getItem("userstream.console"));
    sessionStorage.setItem("userstream.console", JSON.stringify({ ...s, token }));
  }, setup.expired_token);
  await page.getByRole("button", { name: "Start the import" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  assert.equal(await page.getByLabel("Application id").inputValue(), application, "the tenant is kept, not the secret");
  assert.equal(await page.getByLabel("API secret").inputValue(), "");
  await signIn(secret);
  await page.getByRole("heading", { name: "Bulk jobs" }).waitFor();
  assert.equal(await page.getByLabel("or its URL").inputValue(), "file://later.csv");
  assert.equal((await call("GET", "/users/jobs/import?search=later")).items.length, 0);

  // An invalid filter: the server's 400 message, not a blank page.
  await page.goto(`${base}/console#/search?q=${encodeURIComponent("{\"$where\": 1}")}`);
  await page.locator("#results [role=alert]").waitFor();
  assert.match(await page.locator("#results [role=alert]").textContent(), /q:/, "the server's message");

  // Another tenant's customer: the 404 is shown.
  await page.goto(`${base}/console#/customer/${setup.other_id}`);
  await page.getByRole("alert").filter({ hasText: /not found \(request [0-9a-f-]+\)/i }).waitFor();

  // HTML in a name, in meta and in an attribute value is text: nothing runs.
  await page.goto(`${base}/console#/customer/${setup.xss_id}`);
  await page.getByRole("heading", { level: 1 }).waitFor();
  assert.match(await page.getByRole("heading", { level: 1 }).textContent(), /<img src=x onerror=/);
  await page.getByText("<script>window.__xss=2</script>").first().waitFor();
  await page.getByText("<svg onload=window.__xss=3>").first().waitFor();
  assert.equal(await page.evaluate(() => window.__xss), undefined, "the injected handler never ran");

  // Phone width: the customer page still shows its sections.
  await page.setViewportSize({ width: 390, height: 800 });
  await page.goto(`${base}/console#/customer/${id}`);
  await page.getByRole("heading", { name: "History" }).waitFor();
  await shot(page, "console-phone", false);
} catch (e) {
  // What the page showed when a step failed, and its status line.
  const [page] = browser.contexts().flatMap((c) => c.pages());
  if (page) {
    await shot(page, "console-failed").catch(() => {});
    e.message += `\nat ${page.url()}; status: ${await page.locator("#status").textContent().catch(() => "?")}`;
  }
  throw e;
} finally {
  await browser.close();
}
assert.deepEqual(failures, []);
console.log("console: every step passed");
