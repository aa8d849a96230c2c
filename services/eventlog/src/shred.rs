//! Crypto-shredding: the personal fields of an event are sealed in the log
//! under a data key of their subject (a user), and erasing the subject
//! destroys that key.
//!
//! - A [`Policy`] (the domain's) names, per event, the subject and the
//!   personal fields. The log stays ignorant of what the fields mean.
//! - On append, those fields leave the payload and go into one AES-256-GCM
//!   box under the subject's data key: `"$sealed": {"subject", "fields":
//!   {name: placeholder}, "box": base64(nonce ‖ ciphertext)}`. The data key
//!   is random (256 bits), stored wrapped by the master key in
//!   `subject_keys`. A new subject's key is written in the same transaction
//!   as its first events (its stream is new, so no other request can seal
//!   under another key for it).
//! - On read, a box is opened and its fields put back; the reader sees the
//!   payload as it was appended. Once the subject is erased the key is gone:
//!   each field reads as its placeholder (an empty list or object,
//!   `"erased:{subject}"` for a text), so old events still decode and a
//!   replay never fails. Events written before sealing existed hold their
//!   fields in clear: erasing rewrites them with the placeholders (the one
//!   rewrite of the log), and a reader redacts them too, so a copy held in
//!   memory before the rewrite does not show them either.
//! - Every process reloads the erased subjects every [`ERASURE_POLL`] and
//!   forgets their keys: an erasure on one instance holds on all within a
//!   second.

use crate::{Db, Dialect, EventData, Migration, RecordedEvent, StorageError};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often every process reloads the erased subjects.
pub const ERASURE_POLL: Duration = Duration::from_millis(250);
/// Most unwrapped data keys kept in memory; the cache is cleared when full.
const CACHED_KEYS: usize = 100_000;
/// Most opened payloads kept in memory: the projections, the engine and the
/// relay read the same new events one after another, and each would open them.
const OPENED: usize = 16_384;
/// The payload member that holds a sealed box.
pub const SEALED: &str = "$sealed";

const DDL: &str = "
    CREATE TABLE IF NOT EXISTS subject_keys (subject TEXT PRIMARY KEY, wrapped TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS erased_subjects (subject TEXT PRIMARY KEY, erased_at TEXT NOT NULL);";

/// Erasures begun and not finished yet (see [`Shredder::begin_erasure`]).
const PENDING: &str = "CREATE TABLE IF NOT EXISTS erasures_begun (subject TEXT PRIMARY KEY, begun_at TEXT NOT NULL)";

/// On SQLite, the keys live in their primary key (`WITHOUT ROWID`): one
/// b-tree, one write per new user.
const KEYS_WITHOUT_ROWID: &str = "
    CREATE TABLE subject_keys__new (subject TEXT PRIMARY KEY, wrapped TEXT NOT NULL) WITHOUT ROWID;
    INSERT INTO subject_keys__new (subject, wrapped) SELECT subject, wrapped FROM subject_keys;
    DROP TABLE subject_keys;
    ALTER TABLE subject_keys__new RENAME TO subject_keys;";

const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, sqlite: DDL, postgres: DDL },
    Migration { version: 2, sqlite: PENDING, postgres: PENDING },
    Migration { version: 3, sqlite: KEYS_WITHOUT_ROWID, postgres: "SELECT 1" },
];

/// Creates the key tables (`userstream migrate`; [`Shredder::open`] does it too).
pub async fn migrate(db: &Db) -> Result<(), sqlx::Error> {
    db.migrate("shredding", MIGRATIONS).await
}

/// Which events hold whose personal data: the domain's knowledge, handed to the log.
pub trait Policy: Send + Sync {
    /// The subject whose data a stream holds, if any.
    fn subject(&self, stream: &str) -> Option<String>;
    /// The personal fields present in an event's payload.
    fn personal(&self, event_type: &str, data: &Value) -> Vec<&'static str>;
    /// Every stream that may hold a subject's data.
    fn streams(&self, subject: &str) -> Vec<String>;
}

/// A data key to store with an append: the subject and the key wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub subject: String,
    pub wrapped: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ShredError {
    #[error("subject {0} is erased: no personal data may be written for it")]
    Erased(String),
    #[error("a data key could not be unwrapped (wrong master key or damaged row)")]
    Unwrap,
    #[error("no data key is stored for {0}, which is not erased")]
    MissingKey(String),
    #[error(transparent)]
    Storage(#[from] sqlx::Error),
}

pub struct Shredder {
    db: Db,
    master: Aes256Gcm,
    policy: Arc<dyn Policy>,
    keys: Mutex<HashMap<String, [u8; 32]>>,
    erased: RwLock<HashSet<String>>,
    /// Payloads opened lately, by position (with the event id, to be sure),
    /// oldest first out; cleared whenever a subject is erased.
    opened: Mutex<Opened>,
}

#[derive(Default)]
struct Opened {
    by_position: HashMap<i64, (String, EventData)>,
    order: std::collections::VecDeque<i64>,
}

impl Opened {
    fn get(&self, position: i64, event_id: &str) -> Option<EventData> {
        self.by_position.get(&position).filter(|(id, _)| id == event_id).map(|(_, d)| d.clone())
    }

    fn put(&mut self, position: i64, event_id: &str, data: EventData) {
        if self.by_position.insert(position, (event_id.to_string(), data)).is_none() {
            self.order.push_back(position);
        }
        while self.order.len() > OPENED {
            if let Some(old) = self.order.pop_front() {
                self.by_position.remove(&old);
            }
        }
    }

    fn clear(&mut self) {
        self.by_position.clear();
        self.order.clear();
    }
}

/// What a field reads as once its subject is erased: the same JSON kind, empty.
fn placeholder(subject: &str, value: &Value) -> Value {
    match value {
        Value::Array(_) => json!([]),
        Value::Object(_) => json!({}),
        Value::String(_) => Value::String(format!("erased:{subject}")),
        Value::Number(_) => json!(0),
        Value::Bool(_) => json!(false),
        Value::Null => Value::Null,
    }
}

fn seal_with(key: &[u8; 32], plain: &[u8]) -> String {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let nonce: [u8; 12] = rand::random();
    // AES-GCM encryption of an in-memory buffer cannot fail.
    let ciphertext = cipher.encrypt(Nonce::from_slice(&nonce), plain).unwrap_or_default();
    B64.encode([nonce.as_slice(), &ciphertext].concat())
}

fn open_with(key: &[u8; 32], sealed: &str) -> Option<Vec<u8>> {
    let bytes = B64.decode(sealed).ok()?;
    if bytes.len() < 12 {
        return None;
    }
    let (nonce, ciphertext) = bytes.split_at(12);
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)).decrypt(Nonce::from_slice(nonce), ciphertext).ok()
}

impl Shredder {
    /// `master`: the 32-byte key that wraps every data key.
    pub async fn open(db: Db, master: &[u8; 32], policy: Arc<dyn Policy>) -> Result<Shredder, sqlx::Error> {
        migrate(&db).await?;
        let shredder = Shredder {
            db,
            master: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(master)),
            policy,
            keys: Mutex::new(HashMap::new()),
            erased: RwLock::new(HashSet::new()),
            opened: Mutex::new(Opened::default()),
        };
        shredder.reload_erased().await?;
        Ok(shredder)
    }

    fn wrap(&self, key: &[u8; 32]) -> String {
        let nonce: [u8; 12] = rand::random();
        let ciphertext = self.master.encrypt(Nonce::from_slice(&nonce), key.as_slice()).unwrap_or_default();
        B64.encode([nonce.as_slice(), &ciphertext].concat())
    }

    fn unwrap_key(&self, wrapped: &str) -> Result<[u8; 32], ShredError> {
        let bytes = B64.decode(wrapped).map_err(|_| ShredError::Unwrap)?;
        if bytes.len() < 12 {
            return Err(ShredError::Unwrap);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let key = self.master.decrypt(Nonce::from_slice(nonce), ciphertext).map_err(|_| ShredError::Unwrap)?;
        key.try_into().map_err(|_| ShredError::Unwrap)
    }

    pub fn is_erased(&self, subject: &str) -> bool {
        self.erased.read().map(|e| e.contains(subject)).unwrap_or(true)
    }

    fn cached(&self, subject: &str) -> Option<[u8; 32]> {
        self.keys.lock().ok().and_then(|k| k.get(subject).copied())
    }

    fn remember(&self, subject: &str, key: [u8; 32]) {
        if let Ok(mut keys) = self.keys.lock() {
            if keys.len() >= CACHED_KEYS {
                keys.clear();
            }
            keys.insert(subject.to_string(), key);
        }
    }

    /// The keys of `subjects`: cached ones, the rest read (one query per
    /// 128) and cached. A subject without a stored key is left out. The
    /// caller uses the map it gets, never the cache, which another task may
    /// clear meanwhile.
    async fn load(&self, subjects: &[String]) -> Result<HashMap<String, [u8; 32]>, ShredError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for s in subjects {
            match self.cached(s) {
                Some(key) => {
                    found.insert(s.clone(), key);
                }
                None => missing.push(s),
            }
        }
        for chunk in missing.chunks(128) {
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let list = list.join(", ");
            let sql = format!("SELECT subject, wrapped FROM subject_keys WHERE subject IN ({list})");
            let mut q = sqlx::query_as::<_, (String, String)>(&sql);
            for s in chunk {
                q = q.bind(s.as_str());
            }
            for (subject, wrapped) in q.fetch_all(&self.db.pool).await? {
                let key = self.unwrap_key(&wrapped)?;
                self.remember(&subject, key);
                found.insert(subject, key);
            }
        }
        Ok(found)
    }

    /// The key of a subject that has events already (created before
    /// sealing existed, or not cached here): loaded, or made now in a
    /// transaction of its own (one key wins if two processes race).
    async fn existing_key(&self, subject: &str) -> Result<[u8; 32], ShredError> {
        if let Some(key) = self.load(&[subject.to_string()]).await?.remove(subject) {
            return Ok(key);
        }
        let candidate: [u8; 32] = rand::random();
        {
            // Never for a subject erased meanwhile (by another process,
            // whose erasure this one may not have heard of yet).
            let _turn = self.db.write_turn().await;
            sqlx::query(
                "INSERT INTO subject_keys (subject, wrapped) SELECT $1, $2 \
                 WHERE NOT EXISTS (SELECT 1 FROM erased_subjects WHERE subject = $1) ON CONFLICT (subject) DO NOTHING",
            )
            .bind(subject)
            .bind(self.wrap(&candidate))
            .execute(&self.db.pool)
            .await?;
        }
        match self.load(&[subject.to_string()]).await?.remove(subject) {
            Some(key) => Ok(key),
            None => {
                self.reload_erased().await?;
                Err(ShredError::Erased(subject.to_string()))
            }
        }
    }

    /// Seals the personal fields of every event of `request`. Keys of new
    /// subjects (whose own stream the request creates) are returned to be
    /// stored with the append, and cached once it commits.
    pub async fn seal(&self, request: &mut crate::AppendRequest) -> Result<Vec<(NewKey, [u8; 32])>, ShredError> {
        let mut fresh: Vec<(NewKey, [u8; 32])> = Vec::new();
        for append in &mut request.streams {
            let Some(subject) = self.policy.subject(&append.stream) else { continue };
            let mut key = None;
            for event in &mut append.events {
                let fields = self.policy.personal(&event.event_type, &event.data);
                if fields.is_empty() {
                    continue;
                }
                if self.is_erased(&subject) {
                    return Err(ShredError::Erased(subject));
                }
                let key = match key {
                    Some(k) => k,
                    None => {
                        let k = match fresh.iter().find(|(n, _)| n.subject == subject) {
                            Some((_, k)) => *k,
                            None if append.expected == crate::ExpectedVersion::NoStream && append.stream == subject => {
                                let k: [u8; 32] = rand::random();
                                fresh.push((NewKey { subject: subject.clone(), wrapped: self.wrap(&k) }, k));
                                k
                            }
                            None => match self.cached(&subject) {
                                Some(k) => k,
                                None => self.existing_key(&subject).await?,
                            },
                        };
                        *key.insert(k)
                    }
                };
                seal_event(&subject, &key, &fields, &mut event.data);
            }
        }
        Ok(fresh)
    }

    /// Caches the keys an append stored, once it committed.
    pub fn committed(&self, keys: &[(NewKey, [u8; 32])]) {
        for (new, key) in keys {
            self.remember(&new.subject, *key);
        }
    }

    /// Remembers committed events' payloads as appended, before sealing
    /// (`(position, event_id, stream, data)`), so that no reader has to
    /// open them again. An erased subject's are left out: checked under
    /// the lock that an erasure clears the cache under, after marking the
    /// subject erased.
    pub(crate) fn remember_opened(&self, events: Vec<(i64, String, &str, EventData)>) {
        let Ok(mut opened) = self.opened.lock() else { return };
        for (position, event_id, stream, data) in events {
            if self.policy.subject(stream).is_some_and(|s| self.is_erased(&s)) {
                continue;
            }
            opened.put(position, &event_id, data);
        }
    }

    /// Opens the sealed fields of `events` in place (placeholders for erased
    /// subjects), and redacts clear personal fields of erased subjects. A
    /// sealed event whose subject has no key and is not erased is an error:
    /// never shown as erased.
    pub async fn open_events(&self, events: &mut [RecordedEvent]) -> Result<(), ShredError> {
        let any_erased = self.erased.read().map(|e| !e.is_empty()).unwrap_or(true);
        let mut subjects = Vec::new();
        let mut done = vec![false; events.len()];
        if let Ok(opened) = self.opened.lock() {
            for (e, done) in events.iter_mut().zip(&mut done) {
                if let Some(data) = opened.get(e.position, &e.event_id) {
                    e.data = data;
                    *done = true;
                }
            }
        }
        for e in events.iter().zip(&done).filter(|(_, d)| !**d).map(|(e, _)| e) {
            if e.data.as_str().contains(SEALED) {
                if let Some(s) = self.policy.subject(&e.stream) {
                    if !subjects.contains(&s) && !self.is_erased(&s) {
                        subjects.push(s);
                    }
                }
            }
        }
        let mut keys = self.load(&subjects).await?;
        if subjects.iter().any(|s| !keys.contains_key(s)) {
            // Erased by another process since the last reload, or its key is gone.
            self.reload_erased().await?;
            keys = self.load(&subjects).await?;
        }
        let mut newly_opened = Vec::new();
        for (e, _) in events.iter_mut().zip(&done).filter(|(_, d)| !**d) {
            let maybe_sealed = e.data.as_str().contains(SEALED);
            if !maybe_sealed && !any_erased {
                continue;
            }
            let Some(subject) = self.policy.subject(&e.stream) else { continue };
            let erased = self.is_erased(&subject);
            if !maybe_sealed && !erased {
                continue;
            }
            let mut data = e.data.value();
            let sealed = data.get(SEALED).is_some_and(Value::is_object);
            let changed = if sealed {
                let key = if erased { None } else { keys.get(&subject) };
                if key.is_none() && !erased {
                    return Err(ShredError::MissingKey(subject));
                }
                open_event(key, &mut data)
            } else if erased {
                redact(&subject, &self.policy.personal(&e.event_type, &data), &mut data)
            } else {
                false
            };
            if changed {
                e.data = EventData::from_value(&data);
                if sealed && !erased {
                    newly_opened.push((e.position, e.event_id.clone(), e.data.clone()));
                }
            }
        }
        if let Ok(mut opened) = self.opened.lock() {
            for (position, id, data) in newly_opened {
                opened.put(position, &id, data);
            }
        }
        Ok(())
    }

    /// Erases a subject: destroys its data key, records the erasure, and
    /// rewrites its events that still hold personal fields in clear.
    /// Idempotent.
    pub async fn erase(&self, subject: &str, at: &str) -> Result<(), ShredError> {
        {
            let _turn = self.db.write_turn().await;
            let mut tx = self.db.pool.begin().await?;
            sqlx::query("DELETE FROM subject_keys WHERE subject = $1").bind(subject).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO erased_subjects (subject, erased_at) VALUES ($1, $2) ON CONFLICT (subject) DO NOTHING",
            )
            .bind(subject)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(subject);
        }
        if let Ok(mut erased) = self.erased.write() {
            erased.insert(subject.to_string());
        }
        if let Ok(mut opened) = self.opened.lock() {
            opened.clear();
        }
        self.redact_stored(subject).await
    }

    /// Rewrites the subject's events whose personal fields are in clear.
    async fn redact_stored(&self, subject: &str) -> Result<(), ShredError> {
        for stream in self.policy.streams(subject) {
            let rows: Vec<(i64, String, String)> =
                sqlx::query_as("SELECT position, event_type, data FROM events WHERE stream = $1 ORDER BY position")
                    .bind(&stream)
                    .fetch_all(&self.db.pool)
                    .await?;
            for (position, event_type, text) in rows {
                let mut data: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if data.get(SEALED).is_some_and(Value::is_object) {
                    continue;
                }
                if redact(subject, &self.policy.personal(&event_type, &data), &mut data) {
                    let _turn = self.db.write_turn().await;
                    sqlx::query("UPDATE events SET data = $1 WHERE position = $2")
                        .bind(data.to_string())
                        .bind(position)
                        .execute(&self.db.pool)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Reads the erased subjects again (other processes erase too) and
    /// forgets their keys.
    pub async fn reload_erased(&self) -> Result<(), sqlx::Error> {
        let known = self.erased.read().map(|e| e.len()).unwrap_or(0);
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM erased_subjects").fetch_one(&self.db.pool).await?;
        if count as usize == known {
            return Ok(());
        }
        let all: Vec<String> =
            sqlx::query_scalar("SELECT subject FROM erased_subjects").fetch_all(&self.db.pool).await?;
        if let Ok(mut keys) = self.keys.lock() {
            for s in &all {
                keys.remove(s);
            }
        }
        if let Ok(mut erased) = self.erased.write() {
            *erased = all.into_iter().collect();
        }
        if let Ok(mut opened) = self.opened.lock() {
            opened.clear();
        }
        Ok(())
    }

    /// Records that an erasure of `subject` begins, before its erasure event
    /// is appended: a stop between that append and the key's destruction is
    /// then finished at the next start ([`Shredder::finish_erasures`]).
    pub async fn begin_erasure(&self, subject: &str, at: &str) -> Result<(), ShredError> {
        let _turn = self.db.write_turn().await;
        sqlx::query("INSERT INTO erasures_begun (subject, begun_at) VALUES ($1, $2) ON CONFLICT (subject) DO NOTHING")
            .bind(subject)
            .bind(at)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Forgets an erasure that was refused before anything was appended.
    pub async fn abandon_erasure(&self, subject: &str) -> Result<(), ShredError> {
        let _turn = self.db.write_turn().await;
        sqlx::query("DELETE FROM erasures_begun WHERE subject = $1").bind(subject).execute(&self.db.pool).await?;
        Ok(())
    }

    /// Finishes the erasures a stop cut short: each begun one whose
    /// erasure event (`event_type`) is in the log is carried out now; one
    /// whose event never committed is forgotten. Run at start; reads only
    /// the begun erasures and one index probe each.
    pub async fn finish_erasures(&self, event_type: &str) -> Result<usize, ShredError> {
        let begun: Vec<(String, String)> =
            sqlx::query_as("SELECT subject, begun_at FROM erasures_begun").fetch_all(&self.db.pool).await?;
        let mut finished = 0;
        for (subject, at) in begun {
            let appended: Option<i64> = sqlx::query_scalar(
                "SELECT position FROM events WHERE stream = $1 AND event_type = $2 ORDER BY version LIMIT 1",
            )
            .bind(&subject)
            .bind(event_type)
            .fetch_optional(&self.db.pool)
            .await?;
            if appended.is_some() {
                self.erase(&subject, &at).await?;
                finished += 1;
            } else {
                self.abandon_erasure(&subject).await?;
            }
        }
        Ok(finished)
    }

    /// Reloads the erased subjects every [`ERASURE_POLL`], for as long as
    /// the caller polls it.
    pub async fn follow_erasures(&self) {
        loop {
            tokio::time::sleep(ERASURE_POLL).await;
            if let Err(e) = self.reload_erased().await {
                tracing::warn!(error = %e, "reloading erased subjects failed; retrying");
            }
        }
    }

    /// Makes the database files give up freed bytes: on SQLite (which runs
    /// with `secure_delete`, so freed space is zeroed) the WAL is
    /// checkpointed and truncated; PostgreSQL keeps dead row versions until
    /// VACUUM and WAL until it is recycled (see the README), so the touched
    /// tables are vacuumed.
    pub async fn scrub(&self, tables: &[&str]) -> Result<(), sqlx::Error> {
        match self.db.dialect {
            Dialect::Sqlite => {
                // A reader can hold the checkpoint back: SQLite then answers
                // busy = 1 instead of failing. Tried again, then an error.
                for _ in 0..50 {
                    let done = {
                        let _turn = self.db.write_turn().await;
                        let (busy, log, moved): (i64, i64, i64) =
                            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&self.db.pool).await?;
                        busy == 0 && log == moved
                    };
                    if done {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return Err(sqlx::Error::Protocol("the WAL could not be checkpointed: readers hold it".into()));
            }
            Dialect::Postgres => {
                for table in tables {
                    sqlx::query(&format!("VACUUM {table}")).execute(&self.db.pool).await?;
                }
            }
        }
        Ok(())
    }
}

impl From<ShredError> for StorageError {
    fn from(e: ShredError) -> Self {
        StorageError::new(e)
    }
}

/// Moves `fields` of `data` into a box sealed under `key`.
fn seal_event(subject: &str, key: &[u8; 32], fields: &[&str], data: &mut Value) {
    let Some(object) = data.as_object_mut() else { return };
    let mut plain = Map::new();
    let mut shapes = Map::new();
    for field in fields {
        if let Some(value) = object.remove(*field) {
            shapes.insert(field.to_string(), placeholder(subject, &value));
            plain.insert(field.to_string(), value);
        }
    }
    let sealed = seal_with(key, Value::Object(plain).to_string().as_bytes());
    object.insert(SEALED.to_string(), json!({"subject": subject, "fields": shapes, "box": sealed}));
}

/// Puts the sealed fields back (or their placeholders without a key).
/// Whether `data` changed.
fn open_event(key: Option<&[u8; 32]>, data: &mut Value) -> bool {
    let Some(object) = data.as_object_mut() else { return false };
    let Some(sealed) = object.remove(SEALED) else { return false };
    let opened: Option<Map<String, Value>> = key
        .and_then(|k| open_with(k, sealed["box"].as_str().unwrap_or_default()))
        .and_then(|plain| serde_json::from_slice(&plain).ok());
    match opened {
        Some(fields) => object.extend(fields),
        None => {
            if let Some(shapes) = sealed["fields"].as_object() {
                for (field, shape) in shapes {
                    object.insert(field.clone(), shape.clone());
                }
            }
        }
    }
    true
}

/// Replaces clear personal `fields` with their placeholders. Whether any was.
fn redact(subject: &str, fields: &[&str], data: &mut Value) -> bool {
    let Some(object) = data.as_object_mut() else { return false };
    let mut changed = false;
    for field in fields {
        if let Some(value) = object.get_mut(*field) {
            let shape = placeholder(subject, value);
            if *value != shape {
                *value = shape;
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_event_opens_to_what_was_sealed_and_to_placeholders_without_its_key() {
        let original =
            json!({"username": "ada", "emails": [{"email": "a@b.co"}], "meta": {"x": 1}, "account_type": "user"});
        let mut data = original.clone();
        let key: [u8; 32] = rand::random();
        seal_event("user-1", &key, &["username", "emails", "meta"], &mut data);
        let text = data.to_string();
        assert!(!text.contains("ada") && !text.contains("a@b.co"), "{text}");
        let mut opened = data.clone();
        assert!(open_event(Some(&key), &mut opened));
        assert_eq!(opened, original);
        let mut erased = data.clone();
        assert!(open_event(None, &mut erased));
        assert_eq!(erased, json!({"username": "erased:user-1", "emails": [], "meta": {}, "account_type": "user"}));
        let mut wrong = data;
        open_event(Some(&rand::random()), &mut wrong);
        assert_eq!(wrong["username"], "erased:user-1", "a wrong key opens nothing");
    }

    #[test]
    fn redaction_replaces_clear_fields_once() {
        let mut data = json!({"ip": "10.0.0.1", "user_agent": "curl", "domain": "d"});
        assert!(redact("user-1", &["ip", "user_agent"], &mut data));
        assert_eq!(data, json!({"ip": "erased:user-1", "user_agent": "erased:user-1", "domain": "d"}));
        assert!(!redact("user-1", &["ip", "user_agent"], &mut data));
    }
}
