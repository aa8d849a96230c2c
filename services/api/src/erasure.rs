//! POST `…/customers/{user_id}/erase` `{reason}`: erasure of a person by
//! crypto-shredding.
//!
//! In this order: `user.erased` is appended (no personal data; the user's
//! unique email, phone and username are released in the same transaction),
//! the user's data key is destroyed and its events written before sealing
//! existed are rewritten with placeholders, every read model and the
//! membership engine apply the erasure (the row, contacts, sessions and
//! attribute values go; rule groups are left), and the database files give
//! up the freed bytes (SQLite: zeroed by `secure_delete`, WAL checkpointed
//! and truncated). The answer, 200, comes after all of it: "done" means no
//! API answer and no file of a SQLite database holds the person's sealed
//! data (what `codec::personal_fields` names; the README says what is not).
//! A second erase answers 200 again and changes nothing. The erasure is
//! recorded as begun before its event is appended: if the process stops
//! between the append and the key's destruction, the next start finishes
//! it ([`crate::open_log`]).

use crate::commands::CommandError;
use crate::dto::EraseBody;
use crate::http::{command_response, parse_user_id, ApiError, Caller, JsonBody};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;
use userstream_domain::user::{UserCommand, UserState, UserStream};
use userstream_domain::StreamId;
use userstream_eventlog::format_time;
use userstream_eventlog::shred::ShredError;

/// Tables that held the person's data, vacuumed on PostgreSQL afterwards.
const TOUCHED: &[&str] = &[
    "users_v1",
    "user_contacts_v1",
    "user_sessions_v1",
    "attribute_values_v1",
    "reservations",
    "subject_keys",
    "events",
];

pub async fn erase_customer(
    State(state): State<AppState>,
    Caller(meta): Caller,
    Path((_, _, raw)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<EraseBody>,
) -> Result<Response, ApiError> {
    let id = parse_user_id(&raw)?;
    let reason = body.reason.map(|r| r.trim().to_string()).unwrap_or_default();
    if reason.is_empty() {
        return Err(ApiError::invalid("reason is required: why the person is erased (kept in the log)"));
    }
    if reason.chars().count() > 500 {
        return Err(ApiError::invalid("reason may have at most 500 characters"));
    }
    let Some(shredder) = state.commands.log().shredder() else {
        return Err(ApiError::internal("the event log has no shredder"));
    };
    let failed = |e: ShredError| ApiError::from(userstream_eventlog::StorageError::from(e));
    let stream = StreamId::user(&id);
    // Unknown, or another tenant's: 404 before anything is written.
    let current = state.commands.state::<UserStream>(&meta.tenant, &stream).await.map_err(CommandError::from)?;
    match current {
        Some((UserState::NotCreated, _)) | None => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "user_not_found", format!("user {raw} not found")))
        }
        Some(_) => {}
    }
    let subject = stream.to_string();
    let at = format_time(state.commands.now());
    shredder.begin_erasure(&subject, &at).await.map_err(failed)?;
    let outcome = match state.commands.run(&meta, &id, UserCommand::Erase { reason }, None).await {
        Ok(outcome) => outcome,
        Err(e) => {
            // Refused after all (a race): nothing was appended.
            if matches!(e, CommandError::Rejected(_)) {
                shredder.abandon_erasure(&subject).await.map_err(failed)?;
            }
            return Err(e.into());
        }
    };
    shredder.erase(&subject, &at).await.map_err(failed)?;
    for model in [&state.users, &state.attributes, &state.groups, &state.engine] {
        if !model.wait_for(outcome.position, state.config.min_position_wait).await {
            return Err(ApiError::behind(outcome.position));
        }
    }
    match state.db.dialect {
        userstream_eventlog::Dialect::Sqlite => shredder.scrub(TOUCHED).await?,
        userstream_eventlog::Dialect::Postgres => {
            let shredder = shredder.clone();
            tokio::spawn(async move {
                if let Err(e) = shredder.scrub(TOUCHED).await {
                    tracing::warn!(error = %e, "vacuum after an erasure failed");
                }
            });
        }
    }
    Ok(command_response(&outcome, json!({ "success": true, "user_id": id.to_string(), "erased": true })))
}
