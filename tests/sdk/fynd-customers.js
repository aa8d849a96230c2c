// Drives every customers method of the official Fynd platform SDK (3.4.2)
// against a running userstream, with strictResponseCheck on: any response
// that does not fit the SDK's models rejects. Usage: node fynd-customers.js BASE_URL
"use strict";
const assert = require("node:assert/strict");
const { PlatformClient } = require("@gofynd/fdk-client-javascript");

const base = process.argv[2];
if (!base) throw new Error("usage: node fynd-customers.js BASE_URL");

// Credentials arrive with the access issue; until then the service is open
// and the SDK, never given a token, sends `Bearer null`.
const client = new PlatformClient(
  { companyId: "1", apiKey: "key", apiSecret: "secret", domain: base, useAutoRenewTimer: false, logLevel: "ERROR" },
  { strictResponseCheck: true }
);
const user = client.application("000000000000000000000001").user;

async function main() {
  const [created, headers] = await user.createUser(
    {
      body: {
        phone_number: "9876543210",
        email: "sdk@example.com",
        first_name: "Sdk",
        last_name: "User",
        gender: "male",
        username: "sdkuser",
        meta: { plan: "gold" },
        external_id: "ext-sdk",
        rr_id: "rr-sdk",
      },
    },
    { responseHeaders: true }
  );
  const id = created.user._id;
  assert.match(id, /^[0-9a-f]{24}$/);
  assert.equal(created.user.phone_numbers[0].country_code, 91);
  const seen = { "x-min-position": headers["x-event-position"] };

  const list = await user.getCustomers({ pageNo: 1, pageSize: 10, requestHeaders: seen });
  assert.equal(list.page.item_total, 1);
  assert.equal(list.items[0]._id, id);

  const byQ = await user.getCustomers({ q: "sdk@example.com", requestHeaders: seen });
  assert.equal(byQ.items.length, 1);
  const byJson = await user.getCustomers({
    q: JSON.stringify({ $or: [{ "emails.email": "sdk@example.com" }, { "phoneNumbers.phone": "9876543210" }] }),
    requestHeaders: seen,
  });
  assert.equal(byJson.items.length, 1);

  const one = await user.searchUsers({ q: "9876543210", requestHeaders: seen });
  assert.equal(one.users.length, 1);
  const many = await user.searchUsers({ query: ["sdk@example.com", "sdkuser", "nobody@example.com"], requestHeaders: seen });
  assert.equal(many.users.length, 1);

  const updated = await user.updateUser({
    userId: id,
    body: {
      first_name: "Sdk2",
      phone_numbers: [{ phone: "9876543211", country_code: "91", primary: true, verified: true, active: true }],
      emails: [{ email: "sdk2@example.com", primary: true, verified: true, active: true }],
    },
  });
  assert.equal(updated.user.first_name, "Sdk2");
  assert.equal(updated.user.emails[0].email, "sdk2@example.com");

  assert.equal((await user.blockOrUnblockUsers({ body: { user_id: [id], status: false, reason: "sdk" } })).success, true);
  assert.equal((await user.blockOrUnblockUsers({ body: { user_id: [id], status: true, reason: "sdk" } })).success, true);
  assert.equal((await user.archiveUser({ body: { user_id: id } })).success, true);
  assert.equal((await user.unDeleteUser({ body: { user_id: id, reason: "sdk", reason_id: "1" } })).success, true);

  // Errors reach the caller as FDKServerResponseError with the status and our message.
  await assert.rejects(
    user.createUser({ body: { phone_number: "9000000001", username: "bad", email: "not-an-email" } }),
    (e) => e.code === 400 && /email/.test(e.message)
  );
  await assert.rejects(
    user.createUser({ body: { phone_number: "9876543211", username: "dup" } }),
    (e) => e.code === 409 && /phone/.test(e.message)
  );
  await assert.rejects(
    user.blockOrUnblockUsers({ body: { user_id: ["aaaaaaaaaaaaaaaaaaaaaaaa"], status: false, reason: "x" } }),
    (e) => e.code === 404 && /aaaaaaaaaaaaaaaaaaaaaaaa/.test(e.message)
  );
  console.log("fynd sdk: customers methods passed with strictResponseCheck");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
