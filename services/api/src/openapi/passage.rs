//! The operations of the Passage surface (relative to [`crate::passage::PREFIX`]).
//!
//! Passage's error model: `{code, error}` (and `message`), 400 rather than
//! 409 or 422 for a body it cannot take or a value that is taken.

use super::fynd::{int_in, Described};
use super::schemas::{PassageEmpty, PassagePaginatedUsers, PassageUserInfo};
use super::{string, Op, PASSAGE};
use crate::passage::UserArgs;
use axum::http::Method;
use userstream_projections::read_models::user_list::MAX_LIMIT;

const NO_USER: &str = "no live user of the app has this id (user_not_found; a malformed id too)";
const CONFLICT: &str = "too many concurrent changes to the user (conflict); retry";
const FILTER: &str = "a value, or an operator and a value: `ne:`, `gt:`, `lt:`, `like:` (contains, any case) or \
                      `not_like:`";

pub fn operations() -> Vec<Op> {
    let change = |method: Method, path: &'static str, summary: &'static str| {
        Op::new(method, path, PASSAGE, summary).command().reply::<PassageUserInfo>(200, "the user after the change")
    };
    vec![
        Op::new(Method::POST, "/users", PASSAGE, "Create a user")
            .describe(
                "The user's id is its username; it needs an email or a phone, both unverified. Answered once the \
                 users read model has it, so a GET right after sees it.",
            )
            .command()
            .body::<UserArgs>()
            .reply::<PassageUserInfo>(201, "the user")
            .done(&[
                (
                    400,
                    "neither an email nor a phone, an invalid email or phone, user_metadata that is no object or \
                     over 16 KiB, or an email or phone that is taken",
                ),
                (
                    404,
                    "the Idempotency-Key was used before by another request: the user of this one is not found \
                     (user_not_found)",
                ),
                (409, CONFLICT),
            ]),
        Op::new(Method::GET, "/users", PASSAGE, "List users")
            .describe(
                "Filters combine with and; the `_links` keep every parameter, with `created_before` pinned so the \
                 pages stay stable.",
            )
            .query("page", int_in(1, 1_000_000), "page number, from 1 (default 1)")
            .query("limit", int_in(1, MAX_LIMIT), "users per page (default 20)")
            .query(
                "created_before",
                int_in(0, 253_402_300_799),
                "Unix seconds: only users created before (default: now)",
            )
            .query("identifier", string(), "the email or phone: an exact value, or an operator and a value")
            .query("id", string(), FILTER)
            .query("login_count", string(), "an integer, or `ne:`, `gt:` or `lt:` and an integer")
            .query("status", string(), "`active`, `inactive` or `pending`, optionally after `ne:`")
            .query("email_verified", string(), "`true` or `false`, optionally after `ne:`")
            .query("created_at", string(), "an RFC 3339 time, optionally after `ne:`, `gt:` or `lt:`")
            .query("updated_at", string(), "an RFC 3339 time, optionally after `ne:`, `gt:` or `lt:`")
            .query("last_login_at", string(), "an RFC 3339 time, optionally after `ne:`, `gt:` or `lt:`")
            .query(
                "order_by",
                string(),
                "`field:ASC|DESC`, comma-separated; fields: id, created_at, updated_at, login_count, \
                 last_login_at, email, phone, status",
            )
            .consistent()
            .reply::<PassagePaginatedUsers>(200, "a page of users")
            .done(&[(
                400,
                "a page, limit or created_before out of range, an unknown operator, a filter value of the wrong \
                 kind, or an order_by naming an unknown field or direction",
            )]),
        Op::new(Method::GET, "/users/{user_id}", PASSAGE, "Get a user")
            .consistent()
            .reply::<PassageUserInfo>(200, "the user")
            .done(&[(404, NO_USER)]),
        change(Method::PATCH, "/users/{user_id}", "Update a user")
            .describe(
                "Only the fields sent change: an email or phone replaces the current one (unverified), `\"\"` \
                 removes it.",
            )
            .body::<UserArgs>()
            .done(&[
                (
                    400,
                    "an invalid email or phone, user_metadata that is no object or over 16 KiB, an email or phone \
                     that is taken, or neither an email nor a phone left",
                ),
                (404, NO_USER),
                (409, CONFLICT),
            ]),
        Op::new(Method::DELETE, "/users/{user_id}", PASSAGE, "Delete a user")
            .describe("Archives the user, as the Fynd archive does: it disappears, its email and phone become free.")
            .command()
            .reply::<PassageEmpty>(200, "`{}`: the user is deleted")
            .done(&[(404, NO_USER), (409, CONFLICT)]),
        change(Method::PATCH, "/users/{user_id}/activate", "Activate a user")
            .describe("Unblocks the user (`status: active`).")
            .done(&[(404, NO_USER), (409, CONFLICT)]),
        change(Method::PATCH, "/users/{user_id}/deactivate", "Deactivate a user")
            .describe("Blocks the user (`status: inactive`) and revokes its sessions.")
            .done(&[(404, NO_USER), (409, CONFLICT)]),
    ]
}
