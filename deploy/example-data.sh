#!/usr/bin/env bash
# Loads a few example customers into a running userstream.
#   deploy/example-data.sh [BASE_URL]   (default http://127.0.0.1:8080)
set -euo pipefail
base=${1:-http://127.0.0.1:8080}
p="$base/service/platform/user/v1.0/company/1/application/000000000000000000000001"
i=0
for person in "asha:Asha:Rao:female" "ben:Ben:Okafor:male" "chen:Chen:Wei:other" "dana:Dana:Levi:female" "emil:Emil:Berg:male"; do
  IFS=: read -r user first last gender <<<"$person"
  i=$((i + 1))
  curl -sf -X POST "$p/customers" -H 'content-type: application/json' \
    -d "{\"phone_number\":\"98000000$i$i\",\"username\":\"$user\",\"email\":\"$user@example.com\",\"first_name\":\"$first\",\"last_name\":\"$last\",\"gender\":\"$gender\",\"meta\":{\"source\":\"example\"}}" \
    >/dev/null && echo "created $user"
done
echo "list them: curl -s '$p/customers/list?page_size=5'"
