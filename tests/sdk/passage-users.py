"""Drives the official Passage SDK (passage-identity 3.0.2) against a running
userstream: the generated client for all seven user calls and the list
filters, and the `Passage` wrapper as applications use it.

Usage: python passage-users.py BASE_URL APP_ID BEARER
Any failure raises, so the process exits non-zero.
"""

import json
import sys
import time
import urllib.error
import urllib.request

from passageidentity import Passage, PassageError
from passageidentity.openapi_client import ApiClient, Configuration, UsersApi
from passageidentity.openapi_client.exceptions import ApiException
from passageidentity.openapi_client.models import CreateUserArgs, UpdateUserArgs

base, app_id, bearer = sys.argv[1:4]


def refused(call, status, code, says=""):
    """The call fails with `status` and a parsed Passage error `code` whose text holds `says`."""
    try:
        call()
    except ApiException as e:
        assert e.status == status, (e.status, e.body)
        assert e.data is not None and e.data.code == code, e.body
        assert says in e.data.error, e.body
        return
    raise AssertionError(f"expected {status} {code}")


def raw_list(query):
    request = urllib.request.Request(
        f"{base}/v1/apps/{app_id}/users?{query}", headers={"Authorization": f"Bearer {bearer}"}
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


config = Configuration(host=base + "/v1", access_token=bearer)
users = UsersApi(ApiClient(config))

# No or a wrong key: 401 with Passage's code.
anonymous = UsersApi(ApiClient(Configuration(host=base + "/v1")))
refused(lambda: anonymous.list_paginated_users(app_id), 401, "invalid_access_token")
wrong = UsersApi(ApiClient(Configuration(host=base + "/v1", access_token=bearer + "x")))
refused(lambda: wrong.list_paginated_users(app_id), 401, "invalid_access_token")

# create (201) / get / update / deactivate / activate / delete
ada = users.create_user(app_id, CreateUserArgs(email="Ada@Example.com", user_metadata={"plan": "pro"})).user
assert ada.email == "ada@example.com" and ada.phone == "" and ada.status == "active", ada
assert ada.login_count == 0 and ada.last_login_at.year == 1, ada
assert ada.email_verified is False and ada.phone_verified is False, "a new Passage user starts unverified"
# A taken identifier and a body that is not JSON are Passage's 400, not 409/422.
refused(lambda: users.create_user(app_id, CreateUserArgs(email="ada@example.com")), 400, "invalid_request", "already taken")
unparsable = urllib.request.Request(
    f"{base}/v1/apps/{app_id}/users",
    data=b'{"email": ',
    headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    method="POST",
)
try:
    urllib.request.urlopen(unparsable)
    raise AssertionError("an unparsable body was accepted")
except urllib.error.HTTPError as e:
    assert e.code == 400 and json.load(e)["code"] == "invalid_request", e.code
bob = users.create_user(app_id, CreateUserArgs(phone="+12015550123")).user
assert bob.phone == "+12015550123" and bob.email == "", bob
carol = users.create_user(app_id, CreateUserArgs(email="carol@example.com", phone="+12015550124")).user

got = users.get_user(app_id, ada.id).user
assert got.id == ada.id and got.user_metadata == {"plan": "pro"}, got
updated = users.update_user(app_id, ada.id, UpdateUserArgs(phone="+12015550125", user_metadata={"plan": "team"})).user
assert updated.phone == "+12015550125" and updated.email == "ada@example.com", updated
assert updated.user_metadata == {"plan": "team"}, updated
assert users.deactivate_user(app_id, bob.id).user.status == "inactive"
assert users.get_user(app_id, bob.id).user.status == "inactive"
assert users.activate_user(app_id, bob.id).user.status == "active"

# list: paging, total, links, filters, order
page = users.list_paginated_users(app_id, limit=2, page=1, order_by="created_at:ASC")
assert page.total_users == 3 and page.limit == 2 and page.page == 1, page
assert [u.id for u in page.users] == [ada.id, bob.id], page.users
assert page.links.next.href and page.links.previous.href == "", page.links
second = users.list_paginated_users(app_id, limit=2, page=2, order_by="created_at:ASC", created_before=page.created_before)
assert [u.id for u in second.users] == [carol.id], second.users
assert users.list_paginated_users(app_id, identifier="ADA@example.com").total_users == 1
assert users.list_paginated_users(app_id, identifier="+12015550123").users[0].id == bob.id
assert users.list_paginated_users(app_id, identifier="like:example.com").total_users == 2
assert users.list_paginated_users(app_id, identifier="not_like:example.com").total_users == 1
assert users.list_paginated_users(app_id, id=f"ne:{ada.id}").total_users == 2
assert users.list_paginated_users(app_id, login_count=0).total_users == 3
# The SDK types login_count as an int; operators on it go over plain HTTP.
assert raw_list("login_count=gt%3A0")["total_users"] == 0
assert raw_list("login_count=lt%3A1")["total_users"] == 3
users.deactivate_user(app_id, carol.id)
assert [u.id for u in users.list_paginated_users(app_id, status="inactive").users] == [carol.id]
assert users.list_paginated_users(app_id, status="ne:inactive").total_users == 2
assert users.list_paginated_users(app_id, created_at="gt:2000-01-01T00:00:00.000000Z").total_users == 3
assert users.list_paginated_users(app_id, created_at="lt:2000-01-01T00:00:00.000000Z").total_users == 0
assert users.list_paginated_users(app_id, last_login_at="lt:2000-01-01T00:00:00.000000Z").total_users == 3
assert users.list_paginated_users(app_id, updated_at=f"gt:{time.strftime('%Y')}-01-01T00:00:00.000000Z").total_users == 3
by_id_desc = users.list_paginated_users(app_id, order_by="id:DESC")
assert [u.id for u in by_id_desc.users] == sorted([ada.id, bob.id, carol.id], reverse=True)

# bad input: 400 invalid_request, 404 user_not_found
refused(lambda: users.list_paginated_users(app_id, limit=501), 400, "invalid_request")
refused(lambda: users.list_paginated_users(app_id, order_by="identifier:ASC"), 400, "invalid_request")
refused(lambda: users.list_paginated_users(app_id, created_at="gt:not-a-date"), 400, "invalid_request")
refused(lambda: users.list_paginated_users(app_id, identifier="zz:ada"), 400, "invalid_request")
refused(lambda: users.create_user(app_id, CreateUserArgs(user_metadata={"x": 1})), 400, "invalid_request")
refused(lambda: users.get_user(app_id, "aaaaaaaaaaaaaaaaaaaaaaaa"), 404, "user_not_found")

# delete: gone for get and list; deleting again is a 404
users.delete_user(app_id, bob.id)
refused(lambda: users.get_user(app_id, bob.id), 404, "user_not_found")
refused(lambda: users.delete_user(app_id, bob.id), 404, "user_not_found")
assert users.list_paginated_users(app_id).total_users == 2

# The wrapper, as applications use it (it sends the key per call on the default configuration).
Configuration.set_default(Configuration(host=base + "/v1"))
passage = Passage(app_id, bearer)
assert passage.user.get_by_identifier("Ada@Example.com").id == ada.id
created = passage.user.create(CreateUserArgs(email="dan@example.com"))
assert passage.user.get(created.id).email == "dan@example.com"
assert passage.user.deactivate(created.id).status == "inactive"
passage.user.delete(created.id)
try:
    passage.user.get(created.id)
    raise AssertionError("deleted user still readable")
except PassageError as e:
    assert e.status_code == 404 and e.error_code == "user_not_found", (e.status_code, e.error_code)

print("passage sdk: all seven user calls and the list filters passed")
