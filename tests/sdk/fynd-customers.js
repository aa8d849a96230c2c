// Drives every customers, session and platform-config method of the official
// Fynd platform SDK (3.4.2) against a running userstream, with
// strictResponseCheck on: any response that does not fit the SDK's models
// rejects. Usage: node fynd-customers.js BASE_URL API_KEY API_SECRET FILES_DIR
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const assert = require("node:assert/strict");
const { PlatformClient } = require("@gofynd/fdk-client-javascript");

const [base, apiKey, apiSecret, filesDir] = process.argv.slice(2);
if (!filesDir) throw new Error("usage: node fynd-customers.js BASE_URL API_KEY API_SECRET FILES_DIR");

const config = { companyId: "1", apiKey, apiSecret, domain: base, useAutoRenewTimer: false, logLevel: "ERROR" };
const client = new PlatformClient(config, { strictResponseCheck: true });
const user = client.application("000000000000000000000001").user;

async function main() {
  // Without a token the SDK sends `Bearer null`: refused.
  await assert.rejects(user.getCustomers({}), (e) => e.code === 401);
  // The package README's recipe: client credentials, then setToken.
  const wrong = new PlatformClient({ ...config, apiSecret: "wrong" }, { strictResponseCheck: true });
  await assert.rejects(wrong.getAccesstokenObj({ grant_type: "client_credentials" }), (e) => /401/.test(String(e.message)) || e.code === 401);
  const token = await client.getAccesstokenObj({ grant_type: "client_credentials" });
  assert.equal(token.token_type, "Bearer");
  assert.ok(token.expires_in > 0);
  assert.equal(token.refresh_token, undefined, "no refresh token: the SDK would refresh before the first call");
  client.setToken(token);

  // Platform config: defaults, then an update the following calls obey.
  const defaults = await user.getPlatformConfig();
  assert.equal(defaults.register_required_fields.mobile.is_required, true);
  assert.equal(defaults.delete_account_day, 30);
  const changed = await user.updatePlatformConfig({
    body: {
      ...defaults,
      name: "Sdk shop",
      login: { password: true, otp: false },
      session_config: { duration: 2, type: "Days", is_rolling: true },
      social_tokens: { google: { app_id: "g-app", app_secret: "g-secret" } },
    },
  });
  assert.equal(changed.name, "Sdk shop");
  assert.equal(changed.login.otp, false);
  assert.equal(changed.session_config.type, "Days");
  assert.notEqual(changed.social_tokens.google.app_secret, "g-secret", "secrets are never returned");
  assert.equal((await user.getPlatformConfig()).social_tokens.google.app_secret, "********");

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

  // Sessions: create two, list, delete one, delete the rest.
  const session = await user.createUserSession({ body: { user_id: id, domain: "shop.example.com" } });
  assert.equal(session.max_age, 2 * 86400, "platform session_config decides the default lifetime");
  assert.equal(session.secure, true);
  assert.equal(typeof session.cookie["f.session"], "string");
  await user.createUserSession({ body: { user_id: id, domain: "m.shop.example.com", max_age: 600 } });
  const active = await user.getActiveSessions({ id });
  assert.equal(active.items.length, 2);
  assert.equal(typeof active.items[0].expire_in, "string");
  const web = active.items.find((s) => s.domain === "shop.example.com");
  const deleted = await user.deleteSession({ id, sessionId: web.session_id, reason: "logout" });
  assert.deepEqual(deleted, { user_id: id, session_id: web.session_id });
  await assert.rejects(user.deleteSession({ id, sessionId: web.session_id, reason: "again" }), (e) => e.code === 404);
  const rest = await user.deleteActiveSessions({ id, reason: "logout everywhere" });
  assert.equal(rest.session_ids.length, 1);
  assert.equal((await user.getActiveSessions({ id })).items.length, 0);

  // Attribute definitions and values.
  const ageDef = await user.createUserAttributeDefinition({
    body: { name: "Age", slug: "age", type: "number", description: "years", is_multi_value: false, customer_editable: true, pinned: true, pin_order: 1, validations: [{ type: "min", value: 0 }], default_value: "18" },
  });
  assert.match(ageDef._id, /^[0-9a-f]{24}$/);
  const cityDef = await user.createUserAttributeDefinition({ body: { name: "City", slug: "city", type: "string" } });
  const defs = await user.getUserAttributeDefinitions({ pageNo: 1, pageSize: 10 });
  assert.equal(defs.items.length, 2);
  assert.equal((await user.getUserAttributeDefinitionById({ attributeDefId: ageDef._id })).slug, "age");
  const renamed = await user.updateUserAttributeDefinition({ attributeDefId: cityDef._id, body: { name: "Town", slug: "city", type: "string" } });
  assert.equal(renamed.name, "Town");
  const value = await user.updateUserAttribute({ attributeDefId: ageDef._id, userId: id, body: { customer_overridden: true, attribute: { value: 30 } } });
  assert.equal(value.attribute.value, 30);
  assert.equal(value.customer_overridden, true);
  await user.updateUserAttribute({ attributeDefId: cityDef._id, userId: id, body: { attribute: { value: "Pune" } } });
  assert.equal((await user.getUserAttribute({ attributeDefId: ageDef._id, userId: id })).attribute.value, 30);
  assert.equal((await user.getUserAttributeById({ attributeId: value._id })).user_id, id);
  assert.equal((await user.getUserAttributesForUser({ userId: id })).items.length, 2);

  const filtered = await user.filterUsersByAttributes({
    body: { query: { type: "and", limit: 10, page: 1, conditions: [{ definition_id: ageDef._id, type: "gte", value: "18" }, { definition_id: cityDef._id, type: "eq", value: "Pune" }] } },
  });
  assert.equal(filtered.items.length, 1);
  assert.equal(filtered.items[0]._id, id);
  assert.equal(filtered.items[0].attributes.length, 2);

  // Groups: a rule group the engine fills, and a manual one.
  const adults = await user.createUserGroup({
    body: { name: "Adults", description: "18+", conditions: [{ user_attribute_definition_id: ageDef._id, type: "gte", value: "18" }] },
  });
  assert.equal(typeof adults.uid, "number");
  assert.equal(adults.conditions[0].value, "18");
  let settled = adults;
  for (let i = 0; i < 100 && !(settled.status === "active" && settled.total_users === 1); i++) {
    await new Promise((r) => setTimeout(r, 20));
    settled = await user.getUserGroupById({ groupId: adults._id });
  }
  assert.equal(settled.total_users, 1, "the engine put the user in the rule group");
  const groups = await user.getUserGroups({ pageNo: "1", pageSize: "10", status: "active" });
  assert.ok(groups.items.some((g) => g._id === adults._id));
  const edited = await user.updateUserGroup({
    groupId: adults._id,
    body: { name: "Thirty plus", description: "30+", conditions: [{ user_attribute_definition_id: ageDef._id, type: "gte", value: "30" }] },
  });
  assert.equal(edited.name, "Thirty plus");
  const manual = await user.createUserGroup({ body: { name: "Beta", description: "hand-picked" } });
  const patched = await user.updateUserGroupPartially({ groupId: manual._id, body: { type: "json", user_data: [{ user_id: id, action: "add" }, { email: "ghost@example.com", action: "add" }] } });
  assert.equal(patched.error.count, 1);
  const members = await client.request({ method: "GET", url: `/service/platform/user/v1.0/company/1/application/000000000000000000000001/user_group/${manual._id}/users` });
  assert.equal(members.items[0].user_id, id);

  const bulk = await user.updateUserAttributes({
    userId: id,
    body: { attributes: [{ definition_id: ageDef._id, value: 31 }, { definition_id: cityDef._id, value: "Mumbai" }] },
  });
  assert.equal(bulk.success, true);
  assert.deepEqual(bulk.attributes.map((a) => a.attribute.value), [31, "Mumbai"]);
  assert.equal(typeof (await user.deleteUserAttribute({ attributeDefId: cityDef._id, userId: id })).success, "string");
  assert.equal(typeof (await user.deleteUserAttributeDefinitionById({ attributeDefId: cityDef._id })).success, "string");
  assert.equal(typeof (await user.deleteUserAttributesInBulk({ userId: id, body: { definition_ids: [ageDef._id] } })).success, "string");
  assert.equal((await user.getUserAttributesForUser({ userId: id })).items.length, 0);

  await user.createUserSession({ body: { user_id: id, domain: "shop.example.com" } });
  assert.equal((await user.blockOrUnblockUsers({ body: { user_id: [id], status: false, reason: "sdk" } })).success, true);
  assert.equal((await user.getActiveSessions({ id })).items.length, 0, "blocking revokes sessions");
  await assert.rejects(
    user.createUserSession({ body: { user_id: id, domain: "shop.example.com" } }),
    (e) => e.code === 403 && /blocked/.test(e.message)
  );
  assert.equal((await user.blockOrUnblockUsers({ body: { user_id: [id], status: true, reason: "sdk" } })).success, true);
  assert.equal((await user.archiveUser({ body: { user_id: id } })).success, true);
  assert.equal((await user.unDeleteUser({ body: { user_id: id, reason: "sdk", reason_id: "1" } })).success, true);

  // The timeline: a readable view of the user's events, newest first.
  const timeline = await user.getUserTimeline({ userId: id });
  assert.equal(timeline.delete_on, "", "restored: nothing scheduled for deletion");
  const titles = timeline.timeline.map((t) => t.title);
  assert.deepEqual(titles.slice(0, 3), ["Account restored", "Account deleted", "Account unblocked"]);
  assert.ok(timeline.timeline.every((t) => t.visible === true && t.date.length > 0));
  assert.equal(timeline.timeline[timeline.timeline.length - 1].title, "Account created");

  // Bulk jobs: an import from the files directory, followed to its end; the lists; an export.
  fs.writeFileSync(path.join(filesDir, "sdk-import.csv"), "username,phone_number,email\nsdkbulk1,9555000001,b1@example.com\nsdkbulk2,9555000002,nope\n");
  const job = await user.bulkImportStoreFrontUsers({
    body: { absolute_url: "file://sdk-import.csv", file_format: "csv", relative_url: "sdk-import.csv" },
  });
  assert.equal(job.action_type, "import");
  let done = job;
  for (let i = 0; i < 200 && done.status !== "completed"; i++) {
    await new Promise((r) => setTimeout(r, 50));
    done = await user.getUsersJobByJobId({ jobId: job._id });
  }
  assert.equal(done.status, "completed");
  assert.deepEqual(done.count, { total: 2, success: 1, error: 1 });
  assert.ok(done.links.error.absolute_url.startsWith(base));
  const imports = await user.getBulkImportUsersList({ pageNo: "1", pageSize: "10", fileFormat: "csv", status: "completed" });
  assert.equal(imports.items[0]._id, job._id);
  const exportJob = await user.createBulkExportUsers({ body: { file_format: "jsonl" } });
  assert.equal(exportJob.action_type, "export");
  const exports = await user.getBulkExportUsersList({ search: "users" });
  assert.equal(exports.items[0]._id, exportJob._id);

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
  console.log("fynd sdk: customers, timeline, session, config, attribute, group and bulk job methods passed with strictResponseCheck");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
