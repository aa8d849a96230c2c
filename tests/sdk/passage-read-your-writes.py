"""Write-then-read rounds through the unmodified official Passage SDK
(passage-identity), with no consistency header: writes go to WRITE_BASE,
reads to READ_BASE (the same URL for one instance, two instances for a load
balancer's worst case). Prints the misses of each kind as one JSON line.

Usage: python passage-read-your-writes.py WRITE_BASE READ_BASE APP_ID BEARER ROUNDS
"""

import json
import sys
import time

from passageidentity.openapi_client import ApiClient, Configuration, UsersApi
from passageidentity.openapi_client.models import CreateUserArgs, UpdateUserArgs

write_base, read_base, app_id, bearer, rounds = sys.argv[1:6]
rounds = int(rounds)
writer = UsersApi(ApiClient(Configuration(host=write_base + "/v1", access_token=bearer)))
reader = UsersApi(ApiClient(Configuration(host=read_base + "/v1", access_token=bearer)))

misses = {"create_search": 0, "update_list": 0, "archive_list": 0}
stamp = int(time.time() * 1000) % 100000
for n in range(rounds):
    email = f"pyw{stamp}-{n}@example.com"
    user = writer.create_user(app_id, CreateUserArgs(email=email, user_metadata={"plan": "old"})).user
    if not any(u.id == user.id for u in reader.list_paginated_users(app_id, identifier=email).users):
        misses["create_search"] += 1
    writer.update_user(app_id, user.id, UpdateUserArgs(user_metadata={"plan": "new"}))
    listed = reader.list_paginated_users(app_id, identifier=email).users
    if not any(u.id == user.id and u.user_metadata == {"plan": "new"} for u in listed):
        misses["update_list"] += 1
    writer.delete_user(app_id, user.id)
    if any(u.id == user.id for u in reader.list_paginated_users(app_id, identifier=email).users):
        misses["archive_list"] += 1

print(json.dumps({"rounds": rounds, **misses}))
