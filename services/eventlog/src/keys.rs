//! Storage for API credentials and the server's shared signing secret:
//! rows only. Hashing, verification and token formats belong to the API.

use crate::{format_time, Db, Migration};
use sqlx::Row;
use time::OffsetDateTime;

const DDL: &str = "
    CREATE TABLE IF NOT EXISTS api_keys (
        key_id TEXT PRIMARY KEY,
        company_id TEXT NOT NULL,
        application_id TEXT,
        secret_hash TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS server_secrets (
        name TEXT PRIMARY KEY,
        secret TEXT NOT NULL
    );";

/// A revoked key keeps its row (for `apikey list` and the audit), marked.
const REVOCATION: &str = "ALTER TABLE api_keys ADD COLUMN revoked_at TEXT";

const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, sqlite: DDL, postgres: DDL },
    Migration { version: 2, sqlite: REVOCATION, postgres: REVOCATION },
];

/// One stored key: its tenants and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key_id: String,
    pub company_id: String,
    pub application_id: Option<String>,
    pub secret_hash: String,
}

/// A key as `apikey list` shows it: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyListing {
    pub api_key: String,
    pub company_id: String,
    pub application_id: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[derive(Clone)]
pub struct KeyStore {
    db: Db,
}

impl KeyStore {
    pub async fn open(db: Db) -> Result<KeyStore, sqlx::Error> {
        db.migrate("access", MIGRATIONS).await?;
        Ok(KeyStore { db })
    }

    /// The secret stored under `name`; `candidate` becomes it if there is
    /// none yet. Every process on the database gets the same answer.
    pub async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, sqlx::Error> {
        {
            let _turn = self.db.write_turn().await;
            sqlx::query(self.db.pick(
                "INSERT INTO server_secrets (name, secret) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                "INSERT INTO server_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            ))
            .bind(name)
            .bind(candidate)
            .execute(&self.db.pool)
            .await?;
        }
        let row = sqlx::query(self.db.pick(
            "SELECT secret FROM server_secrets WHERE name = ?",
            "SELECT secret FROM server_secrets WHERE name = $1",
        ))
        .bind(name)
        .fetch_one(&self.db.pool)
        .await?;
        row.try_get("secret")
    }

    pub async fn insert(&self, key: &StoredKey) -> Result<(), sqlx::Error> {
        let _turn = self.db.write_turn().await;
        sqlx::query(self.db.pick(
            "INSERT INTO api_keys (key_id, company_id, application_id, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)",
            "INSERT INTO api_keys (key_id, company_id, application_id, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        ))
        .bind(&key.key_id)
        .bind(&key.company_id)
        .bind(&key.application_id)
        .bind(&key.secret_hash)
        .bind(format_time(OffsetDateTime::now_utc()))
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// A key that has not been revoked.
    pub async fn find(&self, key_id: &str) -> Result<Option<StoredKey>, sqlx::Error> {
        let row = sqlx::query(self.db.pick(
            "SELECT company_id, application_id, secret_hash FROM api_keys WHERE key_id = ? AND revoked_at IS NULL",
            "SELECT company_id, application_id, secret_hash FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL",
        ))
        .bind(key_id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|r| {
            Ok(StoredKey {
                key_id: key_id.to_string(),
                company_id: r.try_get("company_id")?,
                application_id: r.try_get("application_id")?,
                secret_hash: r.try_get("secret_hash")?,
            })
        })
        .transpose()
    }

    pub async fn count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM api_keys").fetch_one(&self.db.pool).await?.try_get("n")
    }

    /// Every key, oldest first, optionally of one company.
    pub async fn list(&self, company_id: Option<&str>) -> Result<Vec<KeyListing>, sqlx::Error> {
        let rows = sqlx::query(self.db.pick(
            "SELECT key_id, company_id, application_id, created_at, revoked_at FROM api_keys \
             WHERE ? IS NULL OR company_id = ? ORDER BY created_at, key_id",
            "SELECT key_id, company_id, application_id, created_at, revoked_at FROM api_keys \
             WHERE $1::text IS NULL OR company_id = $2 ORDER BY created_at, key_id",
        ))
        .bind(company_id)
        .bind(company_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(KeyListing {
                    api_key: r.try_get("key_id")?,
                    company_id: r.try_get("company_id")?,
                    application_id: r.try_get("application_id")?,
                    created_at: r.try_get("created_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    /// Marks a key revoked; `None` when there is no such key. Revoking a
    /// revoked key keeps its first revocation time.
    pub async fn revoke(&self, key_id: &str) -> Result<Option<String>, sqlx::Error> {
        {
            let _turn = self.db.write_turn().await;
            sqlx::query(self.db.pick(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                "UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL",
            ))
            .bind(format_time(OffsetDateTime::now_utc()))
            .bind(key_id)
            .execute(&self.db.pool)
            .await?;
        }
        sqlx::query_scalar(self.db.pick(
            "SELECT revoked_at FROM api_keys WHERE key_id = ?",
            "SELECT revoked_at FROM api_keys WHERE key_id = $1",
        ))
        .bind(key_id)
        .fetch_optional(&self.db.pool)
        .await
        .map(Option::flatten)
    }

    /// The ids of every revoked key.
    pub async fn revoked(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT key_id FROM api_keys WHERE revoked_at IS NOT NULL").fetch_all(&self.db.pool).await
    }
}
