// Drives the admin console in headless Chromium (Debian's, through
// playwright-core): sign in (a wrong secret first), find a customer by
// email, see a timeline entry appear after an update, block the customer,
// an invalid filter's 400 message, and a name full of HTML shown as text.
// Usage: node console.mjs BASE COMPANY APPLICATION KEY SECRET EMAIL XSS_USER_ID [SCREENSHOT_DIR]
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const [base, company, application, key, secret, email, xssId, shots] = process.argv.slice(2);
const token = async () => {
  const r = await fetch(`${base}/service/panel/authentication/v1.0/company/${company}/oauth/token`, {
    method: "POST",
    headers: { authorization: "Basic " + Buffer.from(`${key}:${secret}`).toString("base64"),
               "content-type": "application/x-www-form-urlencoded" },
    body: "grant_type=client_credentials",
  });
  return (await r.json()).access_token;
};
const fynd = `${base}/service/platform/user/v1.0/company/${company}/application/${application}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const failures = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
  await page.goto(`${base}/console`);

  // A wrong secret: a clear message, no token kept.
  await page.getByLabel("Company id").fill(company);
  await page.getByLabel("Application id").fill(application);
  await page.getByLabel("API key").fill(key);
  await page.getByLabel("API secret").fill("not-the-secret");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "Wrong API key or secret." }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("userstream.console")), null);

  // Sign in with the keyboard.
  await page.getByLabel("API secret").fill(secret);
  await page.getByLabel("API secret").press("Enter");
  await page.getByRole("searchbox", { name: "Search customers" }).or(page.getByLabel("Search customers")).waitFor();
  assert.ok(!page.url().includes(await page.evaluate(() => JSON.parse(sessionStorage.getItem("userstream.console")).token)),
    "the token is never in the URL");

  // Find the customer by email, open it.
  await page.getByLabel("Search customers").fill(email);
  await page.getByLabel("Search customers").press("Enter");
  const link = page.locator("#results a").first();
  await link.waitFor();
  await link.click();
  await page.getByRole("heading", { level: 1 }).waitFor();
  const id = page.url().split("/").pop();
  if (shots) await page.screenshot({ path: `${shots}/console-customer.png`, fullPage: true });

  // An update through the API appears in the history.
  const bearer = await token();
  const r = await fetch(`${fynd}/customers/${id}`, {
    method: "PUT", headers: { authorization: `Bearer ${bearer}`, "content-type": "application/json" },
    body: JSON.stringify({ first_name: "Augusta" }),
  });
  assert.equal(r.status, 200);
  await page.reload();
  await page.getByText("user.updated").first().waitFor();
  await page.getByText('"Augusta"').first().waitFor();

  // Block it.
  await page.getByRole("button", { name: "Block" }).click();
  await page.getByRole("button", { name: "Unblock" }).waitFor();
  await page.locator("td", { hasText: /^blocked$/ }).first().waitFor();

  // An invalid filter: the server's 400 message, not a blank page.
  await page.goto(`${base}/console#/search?q=${encodeURIComponent("{\"$where\": 1}")}`);
  const alert = page.getByRole("alert");
  await alert.waitFor();
  assert.match(await alert.textContent(), /q:/, "the server's message");

  // HTML in a name is text: nothing runs.
  await page.goto(`${base}/console#/customer/${xssId}`);
  await page.getByRole("heading", { level: 1 }).waitFor();
  assert.match(await page.getByRole("heading", { level: 1 }).textContent(), /<img src=x onerror=/);
  assert.equal(await page.evaluate(() => window.__xss), undefined, "the injected handler never ran");

  // Phone width: the customer page still shows its sections.
  await page.setViewportSize({ width: 390, height: 800 });
  await page.goto(`${base}/console#/customer/${id}`);
  await page.getByRole("heading", { name: "History" }).waitFor();
  if (shots) await page.screenshot({ path: `${shots}/console-phone.png`, fullPage: false });
} finally {
  await browser.close();
}
assert.deepEqual(failures, []);
console.log("console: sign-in, search, history, block, bad filter and HTML-as-text passed");
