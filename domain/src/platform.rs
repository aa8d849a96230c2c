//! The platform config of one application (stream `config-{company}-{app}`):
//! login modes, required fields, account deletion and session settings.
//!
//! Every update stores the whole new config in one `platform.config_updated`
//! event. The config's fields all have defaults, so an event written before a
//! field existed decodes with that field's default.

use crate::codec::{shape, DecodeError, EncodedEvent, PLATFORM_CONFIG_UPDATED};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlatformConfig {
    pub display: String,
    pub look_and_feel: LookAndFeel,
    pub active: bool,
    pub forgot_password: bool,
    pub login: Login,
    pub skip_captcha: bool,
    pub name: String,
    pub meta: MetaSchema,
    pub social: Social,
    pub required_fields: RequiredFields,
    pub register_required_fields: RequiredFields,
    pub skip_login: bool,
    pub flash_card: FlashCard,
    pub subtext: String,
    pub social_tokens: SocialTokens,
    pub register: bool,
    pub mobile_image: String,
    pub desktop_image: String,
    pub delete_account_day: u32,
    pub delete_account_reasons: Vec<DeleteAccountReason>,
    pub delete_account_consent: DeleteAccountConsent,
    pub session_config: SessionConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LookAndFeel {
    pub card_position: String,
    pub background_color: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Login {
    pub password: bool,
    pub otp: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MetaSchema {
    pub fynd_default: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Social {
    pub account_kit: bool,
    pub facebook: bool,
    pub google: bool,
    pub apple: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequiredFields {
    pub email: RequiredField,
    pub mobile: RequiredField,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequiredField {
    #[serde(default)]
    pub is_required: bool,
    #[serde(default)]
    pub level: Level,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    Hard,
    Soft,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlashCard {
    pub text: String,
    pub text_color: String,
    pub background_color: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SocialTokens {
    pub facebook: SocialToken,
    pub account_kit: SocialToken,
    pub google: SocialToken,
}

/// `app_secret` here is never the plaintext: the service stores a one-way
/// digest (`sha256:<hex>`) and only ever answers whether one is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SocialToken {
    pub app_id: String,
    pub app_secret: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DeleteAccountReason {
    pub reason_text: String,
    pub reason_id: String,
    pub show_text_area: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DeleteAccountConsent {
    pub consent_text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    pub duration: i64,
    #[serde(rename = "type")]
    pub unit: DurationUnit,
    pub is_rolling: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DurationUnit {
    #[default]
    #[serde(alias = "days")]
    Days,
    #[serde(alias = "hours")]
    Hours,
    #[serde(alias = "minutes")]
    Minutes,
}

impl SessionConfig {
    /// The session lifetime in seconds.
    pub fn seconds(&self) -> i64 {
        let unit = match self.unit {
            DurationUnit::Days => 86_400,
            DurationUnit::Hours => 3_600,
            DurationUnit::Minutes => 60,
        };
        self.duration.saturating_mul(unit)
    }
}

/// The longest session any config or request may ask for: one year.
pub const MAX_SESSION_SECONDS: i64 = 366 * 86_400;

impl Default for PlatformConfig {
    /// A new application: password and OTP login, mobile required, 30 days
    /// to restore a deleted account, 30-day sessions.
    fn default() -> Self {
        PlatformConfig {
            display: String::new(),
            look_and_feel: LookAndFeel::default(),
            active: true,
            forgot_password: true,
            login: Login::default(),
            skip_captcha: false,
            name: String::new(),
            meta: MetaSchema::default(),
            social: Social::default(),
            required_fields: RequiredFields::default(),
            register_required_fields: RequiredFields::default(),
            skip_login: false,
            flash_card: FlashCard::default(),
            subtext: String::new(),
            social_tokens: SocialTokens::default(),
            register: true,
            mobile_image: String::new(),
            desktop_image: String::new(),
            delete_account_day: crate::stream::Context::DEFAULT_DELETE_ACCOUNT_DAY,
            delete_account_reasons: Vec::new(),
            delete_account_consent: DeleteAccountConsent::default(),
            session_config: SessionConfig::default(),
        }
    }
}

impl Default for LookAndFeel {
    fn default() -> Self {
        LookAndFeel { card_position: "center".into(), background_color: "#F5F5F5".into() }
    }
}

impl Default for Login {
    fn default() -> Self {
        Login { password: true, otp: true }
    }
}

impl Default for RequiredFields {
    fn default() -> Self {
        RequiredFields {
            email: RequiredField { is_required: false, level: Level::Hard },
            mobile: RequiredField { is_required: true, level: Level::Hard },
        }
    }
}

impl Default for FlashCard {
    fn default() -> Self {
        FlashCard { text: String::new(), text_color: "#FFFFFF".into(), background_color: "#EF5350".into() }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { duration: 30, unit: DurationUnit::Days, is_rolling: false }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be {rule}")]
    Invalid { field: &'static str, rule: String },
}

impl PlatformConfig {
    /// Checks the rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, rule: &str| Err(ConfigError::Invalid { field, rule: rule.to_string() });
        if self.delete_account_day > 3650 {
            return invalid("delete_account_day", "from 0 to 3650");
        }
        if self.session_config.duration < 1 || self.session_config.seconds() > MAX_SESSION_SECONDS {
            return invalid("session_config.duration", "at least 1 and at most one year in its unit");
        }
        if self.delete_account_reasons.len() > 50 {
            return invalid("delete_account_reasons", "at most 50 entries");
        }
        Ok(())
    }
}

/// `platform.config_updated` v1: the whole config after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigUpdated {
    pub config: PlatformConfig,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The config a stream of `platform.config_updated` events leaves, with the
/// time of the first and the last update.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigState {
    pub config: PlatformConfig,
    pub created_at: Option<OffsetDateTime>,
    pub updated_at: Option<OffsetDateTime>,
}

pub fn evolve(mut state: ConfigState, event: &ConfigUpdated) -> ConfigState {
    state.config = event.config.clone();
    state.created_at.get_or_insert(event.at);
    state.updated_at = Some(event.at);
    state
}

/// Replaces the config; appends nothing when nothing changes.
pub fn decide(
    state: &ConfigState,
    new: PlatformConfig,
    now: OffsetDateTime,
) -> Result<Vec<ConfigUpdated>, ConfigError> {
    new.validate()?;
    Ok(if new == state.config && state.updated_at.is_some() {
        vec![]
    } else {
        vec![ConfigUpdated { config: new, at: now }]
    })
}

pub fn encode(event: &ConfigUpdated) -> EncodedEvent {
    EncodedEvent {
        event_type: PLATFORM_CONFIG_UPDATED,
        schema: 1,
        data: serde_json::to_value(event).unwrap_or(Value::Null),
    }
}

pub fn decode(
    event_type: &str,
    schema: u32,
    data: &(impl crate::codec::Payload + ?Sized),
) -> Result<ConfigUpdated, DecodeError> {
    match (event_type, schema) {
        (PLATFORM_CONFIG_UPDATED, 1) => shape(event_type, schema, data),
        _ => Err(DecodeError::UnknownType { event_type: event_type.to_string(), schema }),
    }
}

/// The platform config stream kind (`config-{company}-{application}`).
pub struct ConfigStream;

impl crate::stream::Stream for ConfigStream {
    const KIND: &'static str = "platform_config";
    type State = ConfigState;
    type Command = PlatformConfig;
    type Event = ConfigUpdated;
    type Rejection = ConfigError;

    fn decide(
        state: &ConfigState,
        command: PlatformConfig,
        ctx: &crate::stream::Context,
    ) -> Result<Vec<ConfigUpdated>, ConfigError> {
        decide(state, command, ctx.now)
    }

    fn evolve(state: ConfigState, event: &ConfigUpdated) -> ConfigState {
        evolve(state, event)
    }

    fn encode(event: &ConfigUpdated) -> EncodedEvent {
        encode(event)
    }

    fn decode(event_type: &str, schema: u32, data: &str) -> Result<ConfigUpdated, DecodeError> {
        decode(event_type, schema, data)
    }

    fn command_name(_: &PlatformConfig) -> &'static str {
        "UpdatePlatformConfig"
    }
}
