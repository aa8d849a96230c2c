// Write-then-read rounds through the unmodified official Fynd platform SDK,
// with no consistency header: writes go to WRITE_BASE, reads to READ_BASE
// (the same URL for one instance, two instances for a load balancer's worst
// case). Prints the misses of each kind as one JSON line.
// Usage: node fynd-read-your-writes.js WRITE_BASE READ_BASE API_KEY API_SECRET ROUNDS
"use strict";
const { PlatformClient } = require("@gofynd/fdk-client-javascript");

const [writeBase, readBase, apiKey, apiSecret, rawRounds] = process.argv.slice(2);
if (!rawRounds) throw new Error("usage: node fynd-read-your-writes.js WRITE_BASE READ_BASE API_KEY API_SECRET ROUNDS");
const rounds = Number(rawRounds);

async function users(domain) {
  const client = new PlatformClient(
    { companyId: "1", apiKey, apiSecret, domain, useAutoRenewTimer: false, logLevel: "ERROR" },
    { strictResponseCheck: true }
  );
  client.setToken(await client.getAccesstokenObj({ grant_type: "client_credentials" }));
  return client.application("000000000000000000000001").user;
}

async function main() {
  const writer = await users(writeBase);
  const reader = await users(readBase);
  const misses = { create_search: 0, update_list: 0, archive_list: 0 };
  const stamp = Date.now() % 100000;
  for (let n = 0; n < rounds; n++) {
    const email = `ryw${stamp}-${n}@example.com`;
    const created = await writer.createUser({
      body: { email, phone_number: String(9000000000 + stamp * 10000 + n), username: `ryw${stamp}x${n}`, first_name: "Old" },
    });
    const id = created.user._id;
    const found = await reader.searchUsers({ q: email });
    if (!found.users.some((u) => u._id === id)) misses.create_search++;

    await writer.updateUser({ userId: id, body: { first_name: "New" } });
    const listed = await reader.getCustomers({ q: email });
    if (!listed.items.some((u) => u._id === id && u.first_name === "New")) misses.update_list++;

    await writer.archiveUser({ body: { user_id: id } });
    const after = await reader.getCustomers({ q: email });
    if (after.items.some((u) => u._id === id)) misses.archive_list++;
  }
  console.log(JSON.stringify({ rounds, ...misses }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
