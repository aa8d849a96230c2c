#!/usr/bin/env bash
# Loads a few example customers into a running userstream.
#   US_KEY=… US_SECRET=… deploy/example-data.sh [BASE_URL]   (default http://127.0.0.1:8080)
# US_KEY/US_SECRET: the development key `userstream serve` printed on its
# first start, or one from `userstream apikey create --company 1`.
set -euo pipefail
: "${US_KEY:?set US_KEY and US_SECRET to an API key of company 1}"
: "${US_SECRET:?set US_KEY and US_SECRET to an API key of company 1}"
base=${1:-http://127.0.0.1:8080}
p="$base/service/platform/user/v1.0/company/1/application/000000000000000000000001"
token=$(curl -sf -u "$US_KEY:$US_SECRET" -d grant_type=client_credentials \
  "$base/service/panel/authentication/v1.0/company/1/oauth/token" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
i=0
for person in "asha:Asha:Rao:female" "ben:Ben:Okafor:male" "chen:Chen:Wei:other" "dana:Dana:Levi:female" "emil:Emil:Berg:male"; do
  IFS=: read -r user first last gender <<<"$person"
  i=$((i + 1))
  curl -sf -X POST "$p/customers" -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    -d "{\"phone_number\":\"98000000$i$i\",\"username\":\"$user\",\"email\":\"$user@example.com\",\"first_name\":\"$first\",\"last_name\":\"$last\",\"gender\":\"$gender\",\"meta\":{\"source\":\"example\"}}" \
    >/dev/null && echo "created $user"
done
echo "list them: curl -s -H 'Authorization: Bearer $US_KEY.$US_SECRET' '$base/v1/apps/000000000000000000000001/users?limit=5'"
