//! A bulk attribute update (`PATCH …/user_attribute/bulk`): rows of
//! `user_id | email | phone_number`, `definition_id | slug`, `value`, from a
//! file or inline (the request's rows are written to the job's directory as
//! JSONL, so both run the same way).
//!
//! Rows are taken 20,000 at a time: their users are looked up together,
//! each value is validated against its definition as a single upsert is,
//! and each user's values of the chunk become **one** command on the user's
//! values stream, so the engine sees each user's values of a chunk in one
//! append. Within a chunk a later row for the same user
//! and definition replaces an earlier one. Re-running a chunk after a
//! restart changes nothing that is already stored (an upsert of an equal
//! value appends nothing; encrypted values are sealed afresh and so are
//! written again).

use super::source::{self, Columns, Format, Row};
use super::{Ending, JobRun, Proceed};
use crate::attributes::attr_error;
use crate::commands::CommandError;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use std::collections::HashMap;
use userstream_domain::attribute::{AttrType, Definition, NewValue, ValuesCommand, ValuesStream};
use userstream_domain::job::{Counts, FileRef, JobCommand};
use userstream_domain::StreamId;
use userstream_projections::read_models::users::UserKey;

pub const COLUMNS: Columns = Columns {
    allowed: &["user_id", "email", "phone_number", "definition_id", "slug", "value", "customer_overridden"],
    required: &[&["user_id", "email", "phone_number"], &["definition_id", "slug"], &["value"]],
    json: &[],
};

/// Users' commands in flight at once.
const IN_FLIGHT: usize = 1_024;

/// Rows taken together: a user's rows in one chunk become one command, and
/// the chunk's commands run at once (between chunks the pipeline drains).
const ATTRIBUTE_CHUNK: usize = 20_000;

/// The definitions of the tenant, by id and by slug.
struct Definitions {
    by_id: HashMap<String, Definition>,
    by_slug: HashMap<String, String>,
}

impl Definitions {
    fn find(&self, fields: &Map<String, Value>) -> Result<&Definition, String> {
        let text = |k: &str| fields.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
        let found = match (text("definition_id"), text("slug")) {
            (Some(id), _) => self.by_id.get(&id.to_ascii_lowercase()),
            (None, Some(slug)) => self.by_slug.get(slug).and_then(|id| self.by_id.get(id)),
            (None, None) => return Err("a row needs a definition_id or a slug".to_string()),
        };
        found.ok_or_else(|| {
            format!("unknown attribute definition {}", text("definition_id").or(text("slug")).unwrap_or_default())
        })
    }
}

/// A row that passed its own checks, waiting for its user's command.
struct Checked {
    line: u64,
    user: (UserKey, String),
    value: NewValue,
}

pub(crate) async fn run(run: &mut JobRun<'_>, proceed: &mut impl Proceed) -> anyhow::Result<Ending> {
    let path = match super::import::input(run).await {
        Ok(path) => path,
        Err(reason) => return Ok(Ending::Failed(reason)),
    };
    let format = Format::parse(&run.job.file_format).map_err(|e| anyhow::anyhow!(e.message))?;
    let total =
        match super::import::prepare(path.clone(), format, COLUMNS, run.state.config.job_limits.max_rows).await? {
            Ok(total) => total,
            Err(reason) => return Ok(Ending::Failed(reason)),
        };
    run.record(JobCommand::Start { total, position: 0 }).await?;
    // Rows name users as the users read model knows them: it must hold
    // everything written before the job started (an import just completed).
    super::caught_up(run, &[&run.state.users, &run.state.attributes]).await?;
    let rows = run.state.attribute_queries.definitions(&run.tenant).await?;
    let mut definitions = Definitions { by_id: HashMap::new(), by_slug: HashMap::new() };
    for row in rows {
        definitions.by_slug.insert(row.definition.slug.clone(), row.definition.id.clone());
        definitions.by_id.insert(row.definition.id.clone(), row.definition);
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Row>>(1);
    let skip = run.job.rows;
    let reader = tokio::task::spawn_blocking(move || {
        source::read_rows(&path, format, COLUMNS, skip, ATTRIBUTE_CHUNK, |rows| tx.blocking_send(rows).is_ok())
    });
    let mut counts = Counts { total, ..run.job.counts };
    let mut done = skip;
    while let Some(chunk) = rx.recv().await {
        let last = chunk.last().map_or(done, |r| r.index + 1);
        let rejected = apply_chunk(run, &definitions, chunk, &mut counts).await?;
        for (line, reason) in rejected {
            run.reject(line, &reason).await?;
        }
        done = last;
        if !proceed.proceed().await {
            return Ok(Ending::Stopped);
        }
        run.checkpoint(done, counts).await?;
    }
    if let Err(reason) = reader.await? {
        return Ok(Ending::Failed(reason));
    }
    counts.total = counts.total.max(done);
    Ok(Ending::Done { counts, output: FileRef::default(), position: 0 })
}

/// Applies one chunk; returns its rejected rows (line, reason) in line order.
async fn apply_chunk(
    run: &JobRun<'_>,
    definitions: &Definitions,
    chunk: Vec<Row>,
    counts: &mut Counts,
) -> anyhow::Result<Vec<(u64, String)>> {
    let state = run.state;
    let ctx = state.commands.context(&run.tenant).await?;
    let rows = chunk.len() as u64;
    let mut rejected = Vec::new();
    let mut checked = Vec::with_capacity(chunk.len());
    for row in chunk {
        match check(run, definitions, &row, &ctx) {
            Ok(c) => checked.push(c),
            Err(reason) => rejected.push((row.line, reason)),
        }
    }
    // Who the rows name, looked up together.
    let mut users: HashMap<(UserKey, String), String> = HashMap::new();
    for key in [UserKey::Id, UserKey::Email, UserKey::Phone] {
        let values: Vec<String> = checked.iter().filter(|c| c.user.0 == key).map(|c| c.user.1.clone()).collect();
        for (value, id) in state.queries.resolve(&run.tenant, key, &values).await? {
            users.insert((key, value), id);
        }
    }
    // One command per user: its values in row order, a later row for the
    // same definition replacing an earlier one.
    let mut per_user: Vec<(String, Vec<(u64, NewValue)>)> = Vec::new();
    let mut slot: HashMap<String, usize> = HashMap::new();
    for c in checked {
        let Some(id) = users.get(&c.user) else {
            rejected.push((c.line, format!("no user with {} {}", key_name(c.user.0), c.user.1)));
            continue;
        };
        let i = *slot.entry(id.clone()).or_insert_with(|| {
            per_user.push((id.clone(), Vec::new()));
            per_user.len() - 1
        });
        let values = &mut per_user[i].1;
        values.retain(|(_, v)| v.definition_id != c.value.definition_id);
        values.push((c.line, c.value));
    }
    let meta = std::sync::Arc::new(run.meta());
    let ctx = std::sync::Arc::new(ctx);
    // Each user's command is a task of its own, so they spread over the
    // runtime's threads.
    let mut outcomes = futures_util::stream::iter(per_user)
        .map(|(user, values)| {
            let (meta, ctx, commands) = (meta.clone(), ctx.clone(), state.commands.clone());
            tokio::spawn(async move {
                let lines: Vec<u64> = values.iter().map(|(l, _)| *l).collect();
                let command = ValuesCommand::Upsert(values.into_iter().map(|(_, v)| v).collect());
                let stream = StreamId::values(&user);
                (lines, commands.handle::<ValuesStream>(&meta, stream, command, None, &ctx).await)
            })
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(next) = outcomes.next().await {
        let (lines, outcome) = next?;
        match outcome {
            Ok(_) => {}
            Err(CommandError::Failed(f)) => return Err(f.into()),
            Err(CommandError::Rejected(r)) => rejected.extend(lines.into_iter().map(|l| (l, r.to_string()))),
        }
    }
    rejected.sort();
    // A row replaced by a later row of the chunk counts as applied.
    counts.error += rejected.len() as u64;
    counts.success += rows - rejected.len() as u64;
    Ok(rejected)
}

fn key_name(key: UserKey) -> &'static str {
    match key {
        UserKey::Id => "user_id",
        UserKey::Email => "email",
        UserKey::Phone => "phone_number",
    }
}

/// A row's own checks: its user key, its definition, its value.
fn check(
    run: &JobRun<'_>,
    definitions: &Definitions,
    row: &Row,
    ctx: &userstream_domain::Context,
) -> Result<Checked, String> {
    let fields = row.fields.as_ref().map_err(Clone::clone)?;
    let text = |k: &str| fields.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let user = match (text("user_id"), text("email"), text("phone_number")) {
        (Some(id), _, _) => (UserKey::Id, id.to_ascii_lowercase()),
        (None, Some(email), _) => (UserKey::Email, email.to_string()),
        (None, None, Some(phone)) => (UserKey::Phone, phone.to_string()),
        _ => return Err("a row needs a user_id, email or phone_number".to_string()),
    };
    let definition = definitions.find(fields)?;
    let raw = fields.get("value").ok_or("a row needs a value")?;
    let value = definition.validate(&coerce(definition, raw)).map_err(|e| attr_error(e).message)?;
    let value = if definition.encrypted { run.state.sealer.seal(&value) } else { value };
    let overridden = match fields.get("customer_overridden") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    };
    Ok(Checked {
        line: row.line,
        user,
        value: NewValue {
            definition_id: definition.id.clone(),
            new_attribute_id: ctx.id_at(row.index).to_string(),
            value,
            customer_overridden: overridden,
        },
    })
}

/// A CSV cell is text; a definition that takes a number, a boolean, JSON or
/// a list reads it as JSON first.
fn coerce(definition: &Definition, raw: &Value) -> Value {
    let Value::String(text) = raw else {
        return raw.clone();
    };
    let structured =
        definition.multi_value || matches!(definition.kind, AttrType::Number | AttrType::Boolean | AttrType::Json);
    if structured {
        serde_json::from_str(text).unwrap_or_else(|_| raw.clone())
    } else {
        raw.clone()
    }
}
