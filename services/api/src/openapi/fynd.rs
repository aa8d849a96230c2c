//! The operations of the Fynd surface (relative to [`crate::fynd::PREFIX`]),
//! the token endpoint and the operational routes.

use super::schemas::*;
use super::{boolean, integer, one_of, string, Errors, Op, Security};
use crate::attributes::{BulkDeleteBody, BulkUpsertBody, DefinitionBody, FilterBody, UpsertBody};
use crate::dto::{ArchiveBody, BlockBody, CreateUserBody, EraseBody, UndeleteBody, UpdateUserBody};
use crate::groups::{GroupBody, PatchBody};
use crate::jobs::http::{BulkAttributesBody, ExportBody, ImportBody};
use crate::sessions::CreateSessionBody;
use axum::http::Method;
use userstream_projections::read_models::users::MAX_PAGE_SIZE;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};

const CUSTOMERS: &str = "Customers";
const SESSIONS: &str = "Sessions";
const CONFIG: &str = "Platform config";
const ATTRIBUTES: &str = "Attributes";
const GROUPS: &str = "Groups";
const JOBS: &str = "Jobs";
const EVENTS: &str = "Events";

/// An integer from `min` to `max`.
pub(super) fn int_in(min: i64, max: i64) -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(min)).maximum(Some(max)).into()
}

/// A list of strings (a repeated query parameter).
pub(super) fn strings() -> RefOr<Schema> {
    ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String)).into()
}

/// A string of at most `max` characters.
fn string_up_to(max: usize) -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).max_length(Some(max)).into()
}

/// What operations of both surfaces share: the envelope headers of
/// commands, read-your-writes, `as_of`, and the statuses every operation
/// of a surface can answer besides those of [`Op::common_failures`].
pub(super) trait Described: Sized {
    /// `Idempotency-Key` and `X-Correlation-Id`, read by every command.
    fn command(self) -> Self;
    /// `X-Min-Position` / `X-Consistency` (and their query spellings).
    fn consistent(self) -> Self;
    /// `as_of`: the state rebuilt from the log at a position or a time.
    fn rebuilt_as_of(self) -> Self;
    /// `page_no` and `page_size`, with the largest page size.
    fn paged(self, max: i64) -> Self;
    /// `X-Event-Position` on the last answer added.
    fn position(self) -> Self;
    /// The answer's links are built from `Host` and `X-Forwarded-Proto`.
    fn forwarded_proto(self) -> Self;
    /// A cookie parameter.
    fn cookie(self, name: &'static str, description: &'static str) -> Self;
    /// [`Op::fails`], with the 400 (and 422) causes every operation of the
    /// surface shares added: the path's tenant ids, the body, the headers.
    fn done(self, failures: &[(u16, &str)]) -> Self;
}

impl Described for Op {
    fn command(self) -> Self {
        self.header(
            "Idempotency-Key",
            string_up_to(255),
            "at most 255 characters: a retry with the same key appends nothing again and answers as the first \
             request did",
        )
        .header(
            "X-Correlation-Id",
            string(),
            "recorded in the events' envelope (first 128 characters); the request's X-Request-Id otherwise",
        )
    }

    fn consistent(self) -> Self {
        self.header(
            "X-Min-Position",
            int_in(0, i64::MAX),
            "wait (at most --min-position-wait-ms, then 503) until the read model has this log position \
             (an X-Event-Position of a command); by default the log's head when the request arrives",
        )
        .header("X-Consistency", one_of(&["", "latest", "eventual"]), "`eventual`: never wait (default `latest`)")
        .query("min_position", int_in(0, i64::MAX), "the same as X-Min-Position (the header wins)")
        .query(
            "consistency",
            one_of(&["", "latest", "eventual"]),
            "the same as X-Consistency (the header wins)",
        )
    }

    fn rebuilt_as_of(self) -> Self {
        self.query(
            "as_of",
            string(),
            "a log position (0 up to the head) or an RFC 3339 time not in the future: the state rebuilt from \
             the events up to then",
        )
    }

    fn paged(self, max: i64) -> Self {
        self.query("page_no", int_in(1, 1_000_000), "page number, from 1 (default 1)").query(
            "page_size",
            int_in(1, max),
            "items per page (default 10)",
        )
    }

    fn position(self) -> Self {
        self.reply_header(
            "X-Event-Position",
            "the log position that makes the change visible: send it as X-Min-Position to read it back",
        )
    }

    fn forwarded_proto(self) -> Self {
        self.header("X-Forwarded-Proto", string(), "the scheme of the links to job files: https, else http")
    }

    fn cookie(self, name: &'static str, description: &'static str) -> Self {
        self.param(name, ParameterIn::Cookie, false, string(), description)
    }

    fn done(self, failures: &[(u16, &str)]) -> Self {
        let passage = self.errors == Errors::Passage;
        let has = |name: &str| self.params.iter().any(|p| p.name == name);
        let mut causes: Vec<&str> = Vec::new();
        if !self.body.is_empty() {
            causes.push(if passage {
                "a body that is not JSON or not of this shape"
            } else {
                "a body field missing or of the wrong type (the message names it)"
            });
        }
        if has("Idempotency-Key") {
            causes.push("an Idempotency-Key over 255 characters");
        }
        if has("X-Min-Position") {
            causes.push(
                "an X-Min-Position (min_position) that is no integer of at least 0, or past the log's last \
                 position; an X-Consistency (consistency) other than latest or eventual",
            );
        }
        causes.push(if passage {
            "an app_id that is not 1 to 64 letters, digits, - or _"
        } else {
            "a company_id or application_id that is not 1 to 64 letters, digits, - or _; a query parameter that \
             takes one value given twice"
        });
        let shared = causes.join("; ");
        let mut list: Vec<(u16, String)> = failures.iter().map(|(s, d)| (*s, d.to_string())).collect();
        match list.iter_mut().find(|(s, _)| *s == 400) {
            Some((_, d)) => *d = format!("{d}; {shared}"),
            None => list.push((400, shared)),
        }
        let reused = "the Idempotency-Key was used for this kind of change to another target (idempotency_key_reused)";
        if !passage {
            let mut unprocessable = Vec::new();
            if !self.body.is_empty() {
                unprocessable.push("the body is not valid JSON (unparsable_json)");
            }
            if has("Idempotency-Key") {
                unprocessable.push(reused);
            }
            if !unprocessable.is_empty() && !list.iter().any(|(s, _)| *s == 422) {
                list.push((422, unprocessable.join("; ")));
            }
        }
        list.sort_by_key(|(s, _)| *s);
        let refs: Vec<(u16, &str)> = list.iter().map(|(s, d)| (*s, d.as_str())).collect();
        self.fails(&refs)
    }
}

const NO_USER: &str = "no live user of the application has this id (user_not_found; a malformed id too)";
const CONTENDED: &str = "too many concurrent changes to the stream (contended); retry";
const IF_MATCH: &str = "the version the client saw (`\"3\"`, `3` or `W/\"3\"`, as an ETag gave it): the change \
                        applies only at that version";

pub fn operations() -> Vec<Op> {
    let mut ops = customers();
    ops.extend(sessions());
    ops.extend(config_and_events());
    ops.extend(attributes());
    ops.extend(jobs());
    ops.extend(groups());
    ops
}

fn customers() -> Vec<Op> {
    vec![
        Op::new(Method::GET, "/customers/list", CUSTOMERS, "List customers, a page at a time")
            .paged(MAX_PAGE_SIZE)
            .query("q", string(), "an email or phone number, or a JSON filter (`{…}` or `[…]`)")
            .consistent()
            .reply::<CustomerListResponseSchema>(200, "a page of the live customers")
            .done(&[(400, "a page_no or page_size out of range, or a q that is no valid filter")]),
        Op::new(Method::GET, "/customers/search", CUSTOMERS, "Find customers by id, email, phone or username")
            .query(
                "query",
                strings(),
                "terms (repeat the parameter, or `query[]`): each matches a user id, email, phone number, username \
                 or external id",
            )
            .query("q", string(), "one more term")
            .consistent()
            .reply::<UserSearchResponseSchema>(200, "the live customers any term names (at most 100)")
            .done(&[(400, "no term that is not blank, or more than 100")]),
        Op::new(Method::POST, "/customers", CUSTOMERS, "Create a customer")
            .describe("The answer carries the user's version as `ETag`.")
            .command()
            .body::<CreateUserBody>()
            .reply::<CreateUserResponseSchema>(
                200,
                "the created customer (for a replayed Idempotency-Key, the first one)",
            )
            .position()
            .done(&[
                (
                    400,
                    "an invalid field, a phone_number or email the platform config requires, or neither a \
                     phone_number nor an email",
                ),
                (
                    409,
                    "the email, phone number or username is taken (duplicate), the minted id exists (user_exists), \
                     or too many concurrent changes (contended)",
                ),
            ]),
        Op::new(Method::PUT, "/customers/activation", CUSTOMERS, "Block or unblock customers")
            .describe(
                "`status: false` blocks (and revokes the users' sessions), `true` unblocks: all of the users, or \
                 none of them.",
            )
            .command()
            .body::<BlockBody>()
            .reply::<BlockUserSuccess>(200, "every user is in the state asked")
            .position()
            .done(&[
                (400, "user_id lists no user, or more than 500"),
                (404, "some ids name no live user of the application (user_not_found names them)"),
                (409, CONTENDED),
            ]),
        Op::new(Method::PUT, "/customers/archive", CUSTOMERS, "Archive (delete) a customer")
            .describe(
                "The user disappears from every read and its sessions are revoked; its email, phone and username \
                 become free. It may be restored within the platform config's `delete_account_day`. Archiving an \
                 archived user changes nothing.",
            )
            .command()
            .header("If-Match", string(), IF_MATCH)
            .body::<ArchiveBody>()
            .reply::<ArchiveUserSuccess>(200, "the user is archived")
            .position()
            .done(&[
                (400, "an If-Match that is no version"),
                (404, NO_USER),
                (
                    409,
                    "the user's version is not If-Match's (version_conflict), or too many concurrent changes \
                     (contended)",
                ),
            ]),
        Op::new(Method::PUT, "/customers/undelete", CUSTOMERS, "Restore an archived customer")
            .describe("Restoring a live user changes nothing.")
            .command()
            .header("If-Match", string(), IF_MATCH)
            .body::<UndeleteBody>()
            .reply::<UnDeleteUserSuccess>(200, "the user is live")
            .position()
            .done(&[
                (400, "an If-Match that is no version, or the restore window (delete_account_day) has passed"),
                (404, "no archived or live user of the application has this id (user_not_found)"),
                (
                    409,
                    "the user's email, phone or username was taken meanwhile (duplicate), its version is not \
                     If-Match's (version_conflict), or too many concurrent changes (contended)",
                ),
            ]),
        Op::new(Method::PUT, "/customers/{user_id}", CUSTOMERS, "Update a customer")
            .describe(
                "Only the fields sent change; `emails` and `phone_numbers` replace the lists (the first entry is \
                 primary when none is marked). The answer carries the user's version as `ETag`.",
            )
            .command()
            .header("If-Match", string(), IF_MATCH)
            .body::<UpdateUserBody>()
            .reply::<CreateUserResponseSchema>(200, "the customer after the change")
            .position()
            .done(&[
                (
                    400,
                    "an invalid field, an If-Match that is no version, a list with a value twice or several \
                     primaries, or no email and no phone left",
                ),
                (404, NO_USER),
                (
                    409,
                    "an email or phone number is taken (duplicate), the user's version is not If-Match's \
                     (version_conflict), or too many concurrent changes (contended)",
                ),
            ]),
        Op::new(Method::GET, "/customers/{user_id}", CUSTOMERS, "Get a customer")
            .describe(
                "The answer carries the user's version as `ETag`. With `as_of` the user is rebuilt from its events \
                 up to then (archived users too), and `X-As-Of-Position` names the last of them.",
            )
            .consistent()
            .rebuilt_as_of()
            .reply::<UserObjectSchema>(200, "the customer")
            .reply_header("X-As-Of-Position", "with as_of: the position of the last event the user was rebuilt from")
            .done(&[
                (400, "an as_of that is neither a position nor an RFC 3339 time, or is in the future"),
                (404, "no live user of the application has this id (with as_of: none existed then; user_not_found)"),
            ]),
        Op::new(Method::GET, "/customers/{user_id}/history", CUSTOMERS, "A customer's history")
            .describe("Every event of the user (also archived or erased), oldest first, with what each changed.")
            .reply::<UserHistoryResponse>(200, "the user's events")
            .done(&[(404, "the application has no user of this id (user_not_found)")]),
        Op::new(Method::GET, "/customers/{user_id}/timeline", CUSTOMERS, "A customer's timeline")
            .describe("The history as the Fynd timeline shows it, newest first.")
            .reply::<UserTimelineResponse>(200, "the user's timeline")
            .done(&[(404, "the application has no user of this id (user_not_found)")]),
        Op::new(Method::GET, "/customers/{user_id}/groups", CUSTOMERS, "A customer's groups, and why they are in each")
            .describe(
                "Every live group the customer is a member of, each with `joined`: the group.membership_changed \
                 event that made them join, and its cause (the attribute, user or definition event a rule group \
                 followed, a full evaluation of the rule, or a manual patch). Waits for the read models to reach \
                 the log's head.",
            )
            .reply::<CustomerGroupsResponse>(200, "the customer's groups")
            .done(&[(404, NO_USER)]),
        Op::new(Method::POST, "/customers/{user_id}/erase", CUSTOMERS, "Erase a person (crypto-shredding)")
            .describe(
                "Appends `user.erased` (the reason is kept), destroys the user's data key and waits until every \
                 read model has dropped the person's data. Erasing an erased user answers 200 again.",
            )
            .command()
            .body::<EraseBody>()
            .reply::<EraseUserResponse>(200, "the person's data is gone")
            .position()
            .done(&[
                (400, "no reason, or one over 500 characters"),
                (404, "the application never had a user of this id (user_not_found)"),
                (409, CONTENDED),
                (
                    503,
                    "the database is unreachable or full, or a read model did not apply the erasure in time \
                     (it completes; retry)",
                ),
            ]),
    ]
}

fn sessions() -> Vec<Op> {
    let session_404 = "no live user of the application has this id (user_not_found), or it has no such active \
                       session (session_not_found; a cookie whose signature fails too)";
    vec![
        Op::new(Method::POST, "/customers/session", SESSIONS, "Start a customer session (login)")
            .describe(
                "The client's `User-Agent` and address (`X-Forwarded-For`, else `X-Real-IP`) are recorded with the \
                 session. Blocking or archiving the user revokes it.",
            )
            .command()
            .header("X-Forwarded-For", string(), "the client's address (the first one is recorded)")
            .header("X-Real-IP", string(), "the client's address, when there is no X-Forwarded-For")
            .body::<CreateSessionBody>()
            .reply::<CreateUserSessionResponseSchema>(200, "the session's cookie")
            .position()
            .done(&[
                (400, "a max_age out of 1 to 31622400 seconds, or a domain over 253 characters"),
                (403, "the user is blocked (user_blocked), or the token may not use this company or application"),
                (404, NO_USER),
                (409, CONTENDED),
            ]),
        Op::new(Method::GET, "/customers/session", SESSIONS, "Use a customer session")
            .describe(
                "What a storefront calls on use: answers the session, and extends a rolling one once less than half \
                 of its life is left.",
            )
            .command()
            .query_required("id", string(), "the user's id")
            .query("cookie", string(), "the f.session cookie's value (else the Cookie header's)")
            .cookie("f.session", "the session cookie of POST …/customers/session")
            .reply::<SessionUseResponse>(200, "the session and when it expires")
            .position()
            .done(&[(400, "no id, or no f.session cookie"), (404, session_404), (409, CONTENDED)]),
        Op::new(Method::DELETE, "/customers/session", SESSIONS, "Revoke a customer session (logout)")
            .command()
            .query_required("id", string(), "the user's id")
            .query_required("session_id", string(), "the session's id, or the f.session cookie's value")
            .query("reason", string(), "why (kept in the log)")
            .reply::<SessionDeleteResponseSchema>(200, "the session is revoked")
            .position()
            .done(&[(400, "no id or no session_id"), (404, session_404), (409, CONTENDED)]),
        Op::new(Method::GET, "/customers/sessions", SESSIONS, "List a customer's active sessions")
            .query_required("id", string(), "the user's id")
            .reply::<SessionListResponseSchema>(200, "the sessions not expired yet, newest first")
            .done(&[(400, "no id"), (404, NO_USER)]),
        Op::new(Method::DELETE, "/customers/sessions", SESSIONS, "Revoke all of a customer's sessions")
            .command()
            .query_required("id", string(), "the user's id")
            .query("reason", string(), "why (kept in the log)")
            .reply::<SessionsDeleteResponseSchema>(200, "the sessions revoked")
            .position()
            .done(&[(400, "no id"), (404, NO_USER), (409, CONTENDED)]),
    ]
}

fn config_and_events() -> Vec<Op> {
    vec![
        Op::new(Method::GET, "/platform/config", CONFIG, "Get the platform config")
            .describe("The application's defaults until its first update; social `app_secret`s are masked.")
            .reply::<PlatformSchema>(200, "the application's login and account settings")
            .done(&[]),
        Op::new(Method::POST, "/platform/config", CONFIG, "Update the platform config")
            .describe(
                "The body is merged into the current config (objects field by field, arrays and values replaced), \
                 so the whole `PlatformSchema` or only what changes may be sent.",
            )
            .command()
            .body::<PlatformUpdateSchema>()
            .reply::<PlatformSchema>(200, "the config after the change")
            .position()
            .done(&[
                (
                    400,
                    "a body that is no object, a field of the wrong type or null, a delete_account_day over 3650, a \
                     session_config.duration under 1 or over a year, or more than 50 delete_account_reasons",
                ),
                (409, CONTENDED),
            ]),
        Op::new(Method::GET, "/events", EVENTS, "The tenant's event feed")
            .describe(
                "The application's events in log order, a page at a time (`next` is the `after` of the next page). \
                 With `Accept: text/event-stream` the same events as Server-Sent Events, live: each event's `id` is \
                 its position, its `event` its type, its `data` the JSON of a feed item.",
            )
            .query("after", int_in(0, i64::MAX), "the position to read after (default 0); Last-Event-ID wins")
            .query("limit", int_in(1, crate::events::MAX_FEED_PAGE), "events per page (default 100)")
            .query(
                "types",
                strings(),
                "event types (`user.created`) or prefixes (`user.*`), repeated or comma-separated; at most 50",
            )
            .query("type", string(), "one more type or prefix, as in types (once)")
            .header(
                "Last-Event-ID",
                ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"^\s*[0-9]*\s*$")).into(),
                "resume after this position (what an SSE client sends); empty: not sent",
            )
            .reply::<EventFeedPage>(200, "a page of events (or, for text/event-stream, the live stream)")
            .done(&[(
                400,
                "an after or limit out of range, a Last-Event-ID that is no position, a type that is neither an \
                 event type nor a prefix, or more than 50 types",
            )]),
    ]
}

fn attributes() -> Vec<Op> {
    let definition_404 = "no attribute definition of the application has this id (not_found)";
    let value_404 = "no live definition of this id (not_found), no live user of this id (user_not_found)";
    vec![
        Op::new(Method::POST, "/user_attribute/definition", ATTRIBUTES, "Create an attribute definition")
            .command()
            .body::<DefinitionBody>()
            .reply::<UserAttributeDefinition>(201, "the definition")
            .position()
            .done(&[
                (
                    400,
                    "no type, or an invalid definition: a name not 1 to 128 characters, a slug not 1 to 64 of a-z, \
                     0-9, _ or -, a validation that does not fit the type or a regex that does not compile, an \
                     enum without values, a default_value the definition refuses",
                ),
                (409, "the slug is taken (duplicate), or too many concurrent changes (contended)"),
            ]),
        Op::new(Method::GET, "/user_attribute/definition", ATTRIBUTES, "List attribute definitions")
            .paged(MAX_PAGE_SIZE)
            .query("excluding_ids", strings(), "definition ids to leave out (repeated or comma-separated)")
            .query("slug", string(), "only this slug")
            .query("type", string(), "only this type")
            .query("name", string(), "only names containing this")
            .query("customer_editable", boolean(), "only definitions with this customer_editable")
            .query("encrypted", boolean(), "only definitions with this encrypted")
            .query("pinned", boolean(), "only definitions with this pinned")
            .query("pin_order", integer(), "only definitions with this pin_order")
            .query("is_locked", boolean(), "only definitions with this is_locked")
            .reply::<UserAttributeDefinitionListDetail>(200, "a page of definitions")
            .done(&[(
                400,
                "a page_no or page_size out of range, a boolean filter other than true or false, or a pin_order \
                 that is no integer",
            )]),
        Op::new(Method::GET, "/user_attribute/definition/{definition_id}", ATTRIBUTES, "Get an attribute definition")
            .reply::<UserAttributeDefinition>(200, "the definition")
            .done(&[(404, definition_404)]),
        Op::new(
            Method::PUT,
            "/user_attribute/definition/{definition_id}",
            ATTRIBUTES,
            "Update an attribute definition",
        )
        .describe(
            "Only the fields sent change. A change that makes stored values invalid is refused (409) unless \
                 `invalid_values=delete`, which deletes them; `encrypted` cannot change while values exist.",
        )
        .command()
        .query(
            "invalid_values",
            one_of(&["", "refuse", "delete"]),
            "what to do with stored values the change makes invalid (default refuse)",
        )
        .body::<DefinitionBody>()
        .reply::<UserAttributeDefinition>(200, "the definition after the change")
        .position()
        .done(&[
            (400, "an invalid definition (as on create), or an invalid_values other than refuse or delete"),
            (404, definition_404),
            (
                409,
                "the definition is locked (locked), encrypted would change while values exist (values_exist), \
                     stored values would break (invalid_values), the slug is taken (duplicate), it changed meanwhile \
                     (version_conflict), or too many concurrent changes (contended)",
            ),
        ]),
        Op::new(
            Method::DELETE,
            "/user_attribute/definition/{definition_id}",
            ATTRIBUTES,
            "Delete an attribute definition",
        )
        .describe("Its values go with it.")
        .command()
        .reply::<SuccessMessage>(200, "the definition is deleted")
        .position()
        .done(&[
            (404, definition_404),
            (
                409,
                "a group's conditions use it (definition_in_use), it is locked (locked), or it changed meanwhile \
                     (version_conflict)",
            ),
        ]),
        Op::new(
            Method::PUT,
            "/user_attribute/definition/{definition_id}/user/{user_id}",
            ATTRIBUTES,
            "Set a user's attribute value",
        )
        .describe("The value is validated against the definition, and sealed when the definition is encrypted.")
        .command()
        .body::<UpsertBody>()
        .reply::<UserAttribute>(200, "the value")
        .position()
        .done(&[
            (400, "no attribute.value, or a value the definition refuses"),
            (404, value_404),
            (409, CONTENDED),
        ]),
        Op::new(
            Method::GET,
            "/user_attribute/definition/{definition_id}/user/{user_id}",
            ATTRIBUTES,
            "Get a user's attribute value",
        )
        .rebuilt_as_of()
        .reply::<UserAttribute>(200, "the value")
        .done(&[
            (400, "an as_of that is neither a position nor an RFC 3339 time, or is in the future"),
            (
                404,
                "the user has no value of this definition (then, with as_of), or the definition id is malformed \
                 (not_found); the user id is malformed (user_not_found)",
            ),
        ]),
        Op::new(
            Method::DELETE,
            "/user_attribute/definition/{definition_id}/user/{user_id}",
            ATTRIBUTES,
            "Delete a user's attribute value",
        )
        .command()
        .reply::<SuccessMessage>(200, "the value is deleted")
        .position()
        .done(&[
            (
                404,
                "no live user of this id (user_not_found), or the user has no value of this definition, or the \
                 definition id is malformed (not_found)",
            ),
            (409, CONTENDED),
        ]),
        Op::new(Method::GET, "/user_attribute/user/{user_id}", ATTRIBUTES, "List a user's attribute values")
            .paged(MAX_PAGE_SIZE)
            .reply::<UserAttributeListDetail>(200, "a page of the user's values")
            .done(&[(400, "a page_no or page_size out of range"), (404, "a malformed user id (user_not_found)")]),
        Op::new(Method::POST, "/user_attribute/user/{user_id}", ATTRIBUTES, "Set several of a user's attribute values")
            .describe("All of them or none, in one append.")
            .command()
            .body::<BulkUpsertBody>()
            .reply::<BulkUserAttribute>(200, "the values written")
            .position()
            .done(&[
                (400, "no attribute or more than 200, a definition listed twice, or a value its definition refuses"),
                (404, value_404),
                (409, CONTENDED),
            ]),
        Op::new(
            Method::DELETE,
            "/user_attribute/user/{user_id}",
            ATTRIBUTES,
            "Delete several of a user's attribute values",
        )
        .describe("All of them or none: a definition without a value for the user is a 404 and nothing is removed.")
        .command()
        .body::<BulkDeleteBody>()
        .reply::<SuccessMessage>(200, "the values are deleted")
        .position()
        .done(&[
            (400, "no definition id or more than 200, or one listed twice"),
            (
                404,
                "no live user of this id (user_not_found), or a malformed definition id or one the user has no \
                     value of (not_found)",
            ),
            (409, CONTENDED),
        ]),
        Op::new(
            Method::GET,
            "/user_attribute/attribute/{attribute_id}",
            ATTRIBUTES,
            "Get an attribute value by its id",
        )
        .reply::<UserAttribute>(200, "the value")
        .done(&[(404, "no value of the application has this id (not_found)")]),
        Op::new(Method::POST, "/user_attribute/users", ATTRIBUTES, "Find users by their attribute values")
            .describe("The users whose values match every condition (and the email or phone given), a page at a time.")
            .body::<FilterBody>()
            .reply::<UserAttributeFilteredList>(200, "a page of matching users with their matching values")
            .done(&[(
                400,
                "a limit out of 1 to 500, a page under 1 or page × limit over 10000, a type other than and, an \
                 unknown operator, or a condition its definition cannot compile (unknown definition, operator or \
                 value that does not fit its type)",
            )]),
        Op::new(Method::PATCH, "/user_attribute/bulk", ATTRIBUTES, "Set attribute values of many users (a job)")
            .describe(
                "Inline `rows` or a `file_url` become a job that runs in the background; `GET …/user_attribute/bulk/\
                 {job_id}` follows it.",
            )
            .command()
            .forwarded_proto()
            .body::<BulkAttributesBody>()
            .reply::<BulkAttributesJob>(202, "the job, pending")
            .done(&[
                (
                    400,
                    "both rows and file_url or neither, rows not 1 to 10000, a file_format other than csv or jsonl, \
                     or a file_url that cannot be a source (scheme, outside the files directory, missing, too \
                     large, a job's own file, no valid header, a host that is refused or unreachable)",
                ),
                (409, CONTENDED),
            ]),
        Op::new(Method::GET, "/user_attribute/bulk/{job_id}", ATTRIBUTES, "Get a bulk attribute job")
            .forwarded_proto()
            .reply::<BulkAttributesJobDetail>(200, "the job, with its first refused rows")
            .done(&[(404, "no bulk attribute job of the application has this id (not_found)")]),
    ]
}

fn jobs() -> Vec<Op> {
    let list = |path: &'static str, summary: &'static str| {
        Op::new(Method::GET, path, JOBS, summary)
            .paged(500)
            .query("status", one_of(&["", "pending", "running", "completed", "failed"]), "only jobs in this status")
            .query(
                "file_format",
                one_of(&["", "csv", "jsonl", "ndjson", "json"]),
                "only jobs of this format (any case)",
            )
            .query("search", string(), "only jobs whose file name contains this")
            .query(
                "start_date",
                string(),
                "only jobs created from then: a date (YYYY-MM-DD, from its start, UTC) or an RFC 3339 time",
            )
            .query("end_date", string(), "only jobs created until then: a date (to its end, UTC) or an RFC 3339 time")
            .forwarded_proto()
            .reply::<BulkActionListResponse>(200, "a page of jobs, newest first")
            .done(&[(
                400,
                "a page_no or page_size out of range, an unknown status or file_format, or a start_date or \
                 end_date that is neither a date nor an RFC 3339 time",
            )])
    };
    let source_400 = "a file_format other than csv or jsonl, or an absolute_url that cannot be a source (scheme, \
                      outside the files directory, missing, too large, a job's own file, a CSV header without the \
                      columns, a host that is refused or unreachable); an uploaded file without the columns, or a \
                      file_name over 100 characters or with / or \\";
    vec![
        Op::new(Method::POST, "/users/jobs/import", JOBS, "Import users from a file (a job)")
            .describe(
                "Every row becomes a CreateUser; rows refused go to the job's error file. The body names the \
                 file (JSON), or is the file itself (text/csv or application/x-ndjson, at most --job-max-bytes), \
                 kept with the job's files.",
            )
            .command()
            .forwarded_proto()
            .query("file_name", string(), "an uploaded file's name (default upload.csv or upload.jsonl)")
            .body::<ImportBody>()
            .body_as("text/csv", string())
            .body_as("application/x-ndjson", string())
            .reply::<BulkActionModel>(202, "the job, pending")
            .done(&[
                (400, source_400),
                (409, CONTENDED),
                (413, "an uploaded file over --job-max-bytes, or a JSON body over the body limit"),
            ]),
        list("/users/jobs/import", "List import jobs"),
        Op::new(Method::POST, "/users/jobs/export", JOBS, "Export users to a file (a job)")
            .describe("The file holds the users matching q as of the log position the job starts at.")
            .command()
            .forwarded_proto()
            .body::<ExportBody>()
            .reply::<BulkActionModel>(202, "the job, pending")
            .done(&[(400, "a file_format other than csv or jsonl, or a q that is no valid filter"), (409, CONTENDED)]),
        list("/users/jobs/export", "List export jobs"),
        Op::new(Method::GET, "/users/jobs/{job_id}", JOBS, "Get an import or export job")
            .forwarded_proto()
            .reply::<BulkActionModel>(200, "the job")
            .done(&[(404, "no import or export job of the application has this id (not_found)")]),
        Op::new(Method::GET, "/jobs/{job_id}/files/{name}", JOBS, "Download a job's file")
            .describe(
                "`name` is `file` (an export's output, once written) or `error` (the rows refused, once the job \
                 has started). A JSONL export is served as `application/x-ndjson`.",
            )
            .reply_as(200, "the file", "text/csv", Some(string()))
            .reply_also("application/x-ndjson", string())
            .done(&[(
                404,
                "no job of the application has this id, or it has no such file (yet), or the file is gone \
                 (not_found)",
            )]),
    ]
}

fn groups() -> Vec<Op> {
    let group_404 = "no group of the application has this id (group_not_found)";
    let file_400 = "a file_url that cannot be read (scheme, outside the files directory, missing, over 5 MiB, a host \
                    that is refused or unreachable, not a CSV with an action column and a user_id, email or \
                    phone_number column, an action other than add or remove, more than 10000 rows), or a row \
                    without user_id, email and phone_number";
    vec![
        Op::new(Method::POST, "/user_group", GROUPS, "Create a user group")
            .describe(
                "A group with `conditions` is a rule group: the membership engine keeps its members. Otherwise the \
                 rows of `file_url` are its first members.",
            )
            .command()
            .body::<GroupBody>()
            .reply::<UserGroupResponseSchema>(201, "the group")
            .position()
            .done(&[
                (
                    400,
                    &format!(
                        "no name, an invalid field (name 1 to 128 characters, description up to 1024, category up \
                         to 64, at most 20 tags of 1 to 64), a condition that does not compile against the \
                         definitions, or {file_400}"
                    ),
                ),
                (
                    404,
                    "the Idempotency-Key was used before by another request: the group of this one is not found \
                     (group_not_found)",
                ),
                (409, CONTENDED),
                (503, "the database is unreachable or full, or a read model is behind"),
            ]),
        Op::new(Method::GET, "/user_group", GROUPS, "List user groups")
            .paged(MAX_PAGE_SIZE)
            .query("name", string(), "only names containing this")
            .query("type", string(), "only groups of this type")
            .query("status", string(), "only groups in this status (pending or active)")
            .query("group_uid", integer(), "only the group of this uid")
            .query("category", string(), "only groups of this category")
            .query("tags", strings(), "only groups with these tags (repeated or comma-separated)")
            .reply::<UserGroupListResponseSchema>(200, "a page of groups")
            .done(&[(400, "a page_no or page_size out of range, or a group_uid that is no integer")]),
        Op::new(Method::GET, "/user_group/tags", GROUPS, "The tags of the user groups")
            .reply::<UserGroupTagsDetail>(200, "every tag once")
            .done(&[]),
        Op::new(Method::GET, "/user_group/categories", GROUPS, "The categories of the user groups")
            .query("category", string(), "only this category")
            .reply::<UserGroupCategoriesDetail>(200, "each category with its number of groups")
            .done(&[]),
        Op::new(Method::GET, "/user_group/{group_id}", GROUPS, "Get a user group")
            .rebuilt_as_of()
            .reply::<UserGroupResponseSchema>(200, "the group")
            .done(&[
                (400, "an as_of that is neither a position nor an RFC 3339 time, or is in the future"),
                (404, "no group of the application has this id (with as_of: none existed then; group_not_found)"),
            ]),
        Op::new(Method::PUT, "/user_group/{group_id}", GROUPS, "Update a user group")
            .describe("Only the fields sent change; changed conditions start a new evaluation.")
            .command()
            .body::<GroupBody>()
            .reply::<UserGroupResponseSchema>(200, "the group after the change")
            .position()
            .done(&[
                (
                    400,
                    "an invalid field (name 1 to 128 characters, description up to 1024, category up to 64, at most \
                     20 tags of 1 to 64), or a condition that does not compile against the definitions",
                ),
                (404, group_404),
                (409, CONTENDED),
            ]),
        Op::new(Method::PATCH, "/user_group/{group_id}", GROUPS, "Change a group's members, name or description")
            .describe(
                "PatchGroupMembers: rows name a user by `user_id`, `email` or `phone_number`; rows that match no \
                 user are counted in `error.count`. A rule group's members follow its conditions.",
            )
            .command()
            .body::<PatchBody>()
            .reply::<UserGroupResponseSchema>(200, "the group after the change")
            .position()
            .done(&[
                (
                    400,
                    &format!(
                        "a type other than json or file_url, no file_url for type file_url, rows for a rule group, \
                         an invalid name or description, more than 10000 rows, a row whose action is not add or \
                         remove, or {file_400}"
                    ),
                ),
                (404, group_404),
                (409, CONTENDED),
            ]),
        Op::new(Method::DELETE, "/user_group/{group_id}", GROUPS, "Delete a user group")
            .command()
            .reply::<DeleteDetail>(200, "the group is deleted")
            .position()
            .done(&[(404, group_404), (409, CONTENDED)]),
        Op::new(Method::GET, "/user_group/{group_id}/users", GROUPS, "List a group's members")
            .query("page_size", int_in(1, MAX_PAGE_SIZE), "members per page (default 10)")
            .query("direction", one_of(&["", "next", "prev", "previous"]), "after the cursor, or before it")
            .query("cursor", string(), "a user id of a previous page's next_cursor or prev_cursor")
            .query("q", string(), "only members whose email, phone or id contains this (not with as_of)")
            .rebuilt_as_of()
            .reply::<UserGroupUsersDetail>(200, "a page of members, by user id")
            .done(&[
                (
                    400,
                    "a page_size out of range, a direction other than next or prev, a cursor that is no user id, q \
                     with as_of, or an as_of that is neither a position nor an RFC 3339 time, or is in the future",
                ),
                (404, "no group of the application has this id (with as_of: none existed then; group_not_found)"),
            ]),
        Op::new(Method::POST, "/user_group/{group_id}/refresh", GROUPS, "Evaluate a rule group again")
            .describe("A rule group's members are evaluated again from scratch; a manual group is left as it is.")
            .command()
            .reply::<RefreshDetail>(202, "the evaluation has started")
            .position()
            .done(&[(404, group_404), (409, CONTENDED)]),
        Op::new(Method::GET, "/user_group/{group_id}/history", GROUPS, "A user group's history")
            .describe(
                "Every event of the group, oldest first: detail changes, membership changes (who joined and left, \
                 and why), evaluations.",
            )
            .reply::<GroupHistoryResponse>(200, "the group's events")
            .done(&[(404, "the application never had a group of this id (group_not_found)")]),
    ]
}

/// What a guarded operational route answers a caller it refuses.
const OPS_FAILURES: &[(u16, &str)] = &[
    (401, "not from loopback and no valid credential (see --ops-public)"),
    (429, "an API key bearer after too many failed checks from this address or for this key"),
];

/// The token endpoint and the operational routes (full paths).
pub fn other_operations() -> Vec<Op> {
    vec![
        Op::new(Method::POST, crate::oauth::TOKEN_PATH, "Auth", "Get an access token (OAuth 2 client credentials)")
            .security(Security::Basic)
            .errors(Errors::OAuth)
            .body_as("application/x-www-form-urlencoded", super::schemas::token_form())
            .reply::<AccessToken>(200, "an access token for the Fynd surface")
            .fails(&[
                (400, "no grant_type, or not client_credentials"),
                (401, "a wrong or revoked key or secret"),
                (429, "too many failed checks from this address or for this key"),
            ])
            .errors(Errors::Fynd)
            .fails(&[(413, "the body is over the body limit (--body-limit)")]),
        Op::new(Method::GET, "/healthz", "Operations", "Liveness")
            .security(Security::None)
            .reply::<Health>(200, "the process answers"),
        Op::new(Method::GET, "/readyz", "Operations", "Readiness")
            .security(Security::None)
            .reply::<Readiness>(200, "migrated and every projection caught up")
            .reply::<Readiness>(503, "not ready, with the reasons"),
        Op::new(Method::GET, "/openapi.json", "Operations", "This document")
            .security(Security::Ops)
            .reply_as(200, "the OpenAPI document", "application/json", Some(super::object()))
            .fails(OPS_FAILURES),
        Op::new(Method::GET, "/docs", "Operations", "The API reference page")
            .security(Security::Ops)
            .reply_as(200, "an HTML page that renders /openapi.json", "text/html", Some(string()))
            .fails(OPS_FAILURES),
        Op::new(Method::GET, "/metrics", "Operations", "Prometheus metrics")
            .security(Security::Ops)
            .reply_as(200, "the metrics in the Prometheus text format", "text/plain", Some(string()))
            .fails(OPS_FAILURES)
            .fails(&[(503, "this process records no metrics (another recorder was installed first)")]),
    ]
}
