//! Credentials: API keys with hashed secrets, the Fynd client-credentials
//! tokens, Passage bearer keys, and the server's signing key (also used to
//! sign session cookies).
//!
//! - An API key belongs to one company and, optionally, one application.
//!   Its secret is stored as an argon2id hash and verified on the blocking
//!   pool, never on the async runtime.
//! - A Fynd access token is `ust1.<payload>.<mac>`: the key id, company,
//!   application and expiry, HMAC-SHA256-signed with the server key. Every
//!   instance on the same database shares that key, so a token issued by one
//!   is accepted by all. No `refresh_token` is issued (RFC 6749 §4.4.3): a
//!   client asks for a new token with its credentials.
//! - A Passage bearer is `<api_key>.<api_secret>`. Verified bearers are
//!   remembered by their SHA-256 so the argon2 cost is paid once per process.
//! - A revoked key keeps its row, marked. Every instance reloads the set of
//!   revoked ids every [`REVOCATION_POLL`] ([`Access::follow_revocations`]),
//!   and a token or cached bearer of a revoked key is refused from then on:
//!   within a second of `userstream apikey revoke`, on every instance.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use time::OffsetDateTime;
use userstream_eventlog::keys::{KeyListing, KeyStore, StoredKey};
use userstream_eventlog::Db;

/// How long a Fynd access token lives.
pub const TOKEN_TTL_SECONDS: i64 = 3600;

/// Most verified Passage bearers remembered at once; the cache is cleared when full.
const BEARER_CACHE: usize = 10_000;

/// How often every instance reloads the revoked keys.
pub const REVOCATION_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// A verified caller: which key, and the tenants it may touch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    #[serde(rename = "k")]
    pub key_id: String,
    #[serde(rename = "c")]
    pub company_id: String,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,
}

/// A freshly created key; the secret is shown once and never stored in clear.
/// `Debug` shows the key id only.
#[derive(Clone, Serialize)]
pub struct NewKey {
    pub api_key: String,
    pub api_secret: String,
    pub bearer: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("api_key", &self.api_key).finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct TokenPayload {
    #[serde(flatten)]
    credential: Credential,
    #[serde(rename = "e")]
    expires_at: i64,
}

pub struct Access {
    keys: KeyStore,
    signing_key: secrecy::SecretSlice<u8>,
    bearers: Mutex<HashMap<[u8; 32], Credential>>,
    revoked: std::sync::RwLock<std::collections::HashSet<String>>,
}

fn random_b64(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    B64.encode(raw)
}

/// Why the credential store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("credential store: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("the stored signing key is not base64: {0}")]
    SigningKey(#[from] base64::DecodeError),
    #[error("hashing the API secret failed: {0}")]
    Hash(String),
}

impl Access {
    /// Creates the tables if needed and loads (or, on the first start, creates)
    /// the signing key every instance on this database shares.
    pub async fn open(db: Db) -> Result<Access, AccessError> {
        let keys = KeyStore::open(db).await?;
        let stored = keys.shared_secret("signing", &random_b64(32)).await?;
        let signing_key = B64.decode(stored)?;
        let access = Access {
            keys,
            signing_key: signing_key.into(),
            bearers: Mutex::new(HashMap::new()),
            revoked: Default::default(),
        };
        access.reload_revocations().await?;
        Ok(access)
    }

    /// Reads the revoked keys again; forgets cached bearers of newly revoked ones.
    pub async fn reload_revocations(&self) -> Result<(), sqlx::Error> {
        let revoked: std::collections::HashSet<String> = self.keys.revoked().await?.into_iter().collect();
        let grown = self.revoked.read().map(|r| r.len() != revoked.len()).unwrap_or(true);
        if grown {
            if let Ok(mut cache) = self.bearers.lock() {
                cache.retain(|_, c| !revoked.contains(&c.key_id));
            }
            if let Ok(mut r) = self.revoked.write() {
                *r = revoked;
            }
        }
        Ok(())
    }

    /// Reloads the revoked keys every [`REVOCATION_POLL`], for as long as
    /// the caller polls it.
    pub async fn follow_revocations(&self) {
        loop {
            tokio::time::sleep(REVOCATION_POLL).await;
            if let Err(e) = self.reload_revocations().await {
                tracing::warn!(error = %e, "reloading revoked API keys failed; retrying");
            }
        }
    }

    fn is_revoked(&self, key_id: &str) -> bool {
        self.revoked.read().map(|r| r.contains(key_id)).unwrap_or(true)
    }

    /// Every key (never a secret), optionally of one company.
    pub async fn list_keys(&self, company_id: Option<&str>) -> Result<Vec<KeyListing>, sqlx::Error> {
        self.keys.list(company_id).await
    }

    /// Revokes a key: its secret, its tokens and its bearers stop working.
    /// `None` when no such key exists; otherwise when it was revoked.
    pub async fn revoke_key(&self, key_id: &str) -> Result<Option<String>, sqlx::Error> {
        let revoked = self.keys.revoke(key_id).await?;
        if revoked.is_some() {
            self.reload_revocations().await?;
        }
        Ok(revoked)
    }

    /// Creates an API key for a company (optionally bound to one application).
    pub async fn create_key(&self, company_id: &str, application_id: Option<&str>) -> Result<NewKey, AccessError> {
        let key_bytes: [u8; 12] = rand::random();
        let api_key: String = key_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let api_secret = random_b64(32);
        let secret = api_secret.clone();
        let secret_hash = tokio::task::spawn_blocking(move || {
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
            Argon2::default().hash_password(secret.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| AccessError::Hash(e.to_string()))?
        .map_err(AccessError::Hash)?;
        self.keys
            .insert(&StoredKey {
                key_id: api_key.clone(),
                company_id: company_id.to_string(),
                application_id: application_id.map(str::to_string),
                secret_hash,
            })
            .await?;
        let bearer = format!("{api_key}.{api_secret}");
        Ok(NewKey { api_key, api_secret, bearer })
    }

    pub async fn key_count(&self) -> Result<i64, sqlx::Error> {
        self.keys.count().await
    }

    /// Checks a key and its secret; `None` when the key is unknown or the
    /// secret wrong (the caller cannot tell which).
    pub async fn verify_secret(&self, api_key: &str, api_secret: &str) -> Result<Option<Credential>, sqlx::Error> {
        let Some(stored) = self.keys.find(api_key).await? else {
            return Ok(None);
        };
        let secret = api_secret.to_string();
        let hash = stored.secret_hash.clone();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|h| Argon2::default().verify_password(secret.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false);
        Ok(ok.then_some(Credential {
            key_id: stored.key_id,
            company_id: stored.company_id,
            application_id: stored.application_id,
        }))
    }

    /// Verifies a Passage bearer (`<api_key>.<api_secret>`).
    pub async fn verify_bearer(&self, bearer: &str) -> Result<Option<Credential>, sqlx::Error> {
        let digest: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        if let Some(hit) = self.bearers.lock().ok().and_then(|c| c.get(&digest).cloned()) {
            return Ok((!self.is_revoked(&hit.key_id)).then_some(hit));
        }
        let Some((key, secret)) = bearer.split_once('.') else {
            return Ok(None);
        };
        let credential = self.verify_secret(key, secret).await?;
        if let (Some(c), Ok(mut cache)) = (&credential, self.bearers.lock()) {
            if cache.len() >= BEARER_CACHE {
                cache.clear();
            }
            cache.insert(digest, c.clone());
        }
        Ok(credential)
    }

    /// HMAC-SHA256 of `data` under the server key.
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secrecy::ExposeSecret::expose_secret(&self.signing_key))
            .expect("HMAC takes keys of any length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    fn verify_mac(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(secrecy::ExposeSecret::expose_secret(&self.signing_key))
            .expect("HMAC takes keys of any length");
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }

    /// A signed value: `<data>.<mac>`, for session cookies.
    pub fn seal(&self, data: &str) -> String {
        format!("{data}.{}", B64.encode(self.sign(data.as_bytes())))
    }

    /// The data of a value made by [`Access::seal`], if its signature holds.
    pub fn unseal<'a>(&self, sealed: &'a str) -> Option<&'a str> {
        let (data, mac) = sealed.rsplit_once('.')?;
        let tag = B64.decode(mac).ok()?;
        self.verify_mac(data.as_bytes(), &tag).then_some(data)
    }

    /// A Fynd access token for `credential`, valid from `now` for [`TOKEN_TTL_SECONDS`].
    pub fn issue_token(&self, credential: &Credential, now: OffsetDateTime) -> String {
        let payload =
            TokenPayload { credential: credential.clone(), expires_at: now.unix_timestamp() + TOKEN_TTL_SECONDS };
        let body = B64.encode(serde_json::to_vec(&payload).unwrap_or_default());
        format!("ust1.{}", self.seal(&body))
    }

    /// The credential a token carries, if it is ours, untampered and unexpired.
    pub fn verify_token(&self, token: &str, now: OffsetDateTime) -> Option<Credential> {
        let body = self.unseal(token.strip_prefix("ust1.")?)?;
        let payload: TokenPayload = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
        (payload.expires_at > now.unix_timestamp() && !self.is_revoked(&payload.credential.key_id))
            .then_some(payload.credential)
    }
}

/// What a credential may touch: its company, and its application when bound.
impl Credential {
    pub fn allows(&self, company_id: Option<&str>, application_id: &str) -> bool {
        company_id.is_none_or(|c| c == self.company_id)
            && self.application_id.as_deref().is_none_or(|a| a == application_id)
    }
}
