//! Schemas of bodies the handlers build as JSON values rather than from a
//! Rust type: each struct here states the shape of one such body, and the
//! schemathesis run in the test command checks every answer against it.

#![allow(dead_code)]

use serde_json::Value;
use utoipa::ToSchema;

/// An error on the Fynd surface.
#[derive(ToSchema)]
pub struct ApiErrorBody {
    /// What went wrong, for a person.
    pub message: String,
    /// A stable code: `invalid_request`, `not_found`, `conflict`, …
    pub code: String,
}

/// An error on the Passage surface (Passage's error model, plus `message`).
#[derive(ToSchema)]
pub struct PassageErrorBody {
    pub code: String,
    pub error: String,
    pub message: Option<String>,
}

/// An OAuth 2 error of the token endpoint.
#[derive(ToSchema)]
pub struct OAuthErrorBody {
    pub error: String,
    pub error_description: String,
    pub message: Option<String>,
    pub code: Option<String>,
}

/// `GET /healthz`.
#[derive(ToSchema)]
pub struct Health {
    pub status: String,
}

/// `GET /readyz`: ready when migrated and every projection is within the
/// ready lag of the log head.
#[derive(ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub head: Option<i64>,
    /// Per projection: `{position, lag, failure}`.
    #[schema(value_type = Object)]
    pub projections: Option<Value>,
    pub reasons: Option<Vec<String>>,
    pub reason: Option<String>,
}

/// The token endpoint's answer.
#[derive(ToSchema)]
pub struct AccessToken {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
}

/// The token endpoint's form.
pub fn token_form() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    use utoipa::openapi::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .property(
            "grant_type",
            ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["client_credentials"])),
        )
        .required("grant_type")
        .into()
}

// -- customers ----------------------------------------------------------------

/// `CreateUserResponseSchema`: the user after a create or an update. `user`
/// is left out when the command leaves no live user to show (a retried
/// create whose user was archived or erased since).
#[derive(ToSchema)]
pub struct CreateUserResponseSchema {
    pub user: Option<crate::dto::UserDto>,
}

/// `{"user": UserSchema}`: one customer.
#[derive(ToSchema)]
pub struct UserObjectSchema {
    pub user: crate::dto::UserDto,
}

/// `CustomerListResponseSchema`: a page of customers.
#[derive(ToSchema)]
pub struct CustomerListResponseSchema {
    pub items: Vec<crate::dto::UserDto>,
    pub page: crate::dto::Page,
}

/// `UserSearchResponseSchema`: the customers matching any of the terms.
#[derive(ToSchema)]
pub struct UserSearchResponseSchema {
    pub users: Vec<crate::dto::UserDto>,
}

/// `BlockUserSuccess`.
#[derive(ToSchema)]
pub struct BlockUserSuccess {
    /// Always `true`.
    pub success: bool,
}

/// `ArchiveUserSuccess`.
#[derive(ToSchema)]
pub struct ArchiveUserSuccess {
    /// Always `true`.
    pub success: bool,
}

/// `UnDeleteUserSuccess`.
#[derive(ToSchema)]
pub struct UnDeleteUserSuccess {
    /// Always `true`.
    pub success: bool,
}

/// The answer of an erasure.
#[derive(ToSchema)]
pub struct EraseUserResponse {
    /// Always `true`.
    pub success: bool,
    pub user_id: String,
    /// Always `true`.
    pub erased: bool,
}

/// One field a change set differently: `from` and `to` are any JSON value
/// (`null` when absent).
#[derive(ToSchema)]
pub struct FieldChange {
    pub field: String,
    pub from: Value,
    pub to: Value,
}

/// One event of a stream's history, with what it changed.
#[derive(ToSchema)]
pub struct HistoryEntry {
    /// Its position in the log.
    pub position: i64,
    /// The stream's version after it.
    pub version: i64,
    /// The event type, like `user.updated`.
    #[serde(rename = "type")]
    pub kind: String,
    pub occurred_at: String,
    pub recorded_at: String,
    pub actor: String,
    pub correlation_id: String,
    /// `null` when the event has no cause recorded.
    pub causation_id: Option<String>,
    pub changes: Vec<FieldChange>,
}

/// `GET …/customers/{user_id}/history`.
#[derive(ToSchema)]
pub struct UserHistoryResponse {
    pub user_id: String,
    /// Oldest first.
    pub history: Vec<HistoryEntry>,
}

/// One entry of the Fynd timeline.
#[derive(ToSchema)]
pub struct TimelineEntry {
    /// When it happened (RFC 3339).
    pub date: String,
    pub title: String,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `true`.
    pub visible: bool,
    /// `changed <fields>`, or `""`.
    pub sub_title: String,
}

/// `GET …/customers/{user_id}/timeline`.
#[derive(ToSchema)]
pub struct UserTimelineResponse {
    /// When an archived user's data goes (RFC 3339); `""` unless archived.
    pub delete_on: String,
    /// Newest first.
    pub timeline: Vec<TimelineEntry>,
}

/// An event of the log as the feed writes it.
#[derive(ToSchema)]
pub struct RecordedEventSchema {
    pub position: i64,
    pub event_id: String,
    pub stream: String,
    pub version: i64,
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload's schema version.
    pub schema: i64,
    pub occurred_at: String,
    pub recorded_at: String,
    pub company_id: String,
    pub application_id: String,
    pub actor: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    /// The event's payload, as recorded (personal fields sealed).
    pub data: Value,
}

/// `GET …/events`: a page of the tenant's events.
#[derive(ToSchema)]
pub struct EventFeedPage {
    pub events: Vec<RecordedEventSchema>,
    /// The `after` of the next page (the last event's position, else the `after` asked).
    pub next: i64,
    pub has_more: bool,
    /// The log's last position when the page was read: pass it as `after`
    /// to follow only what comes next (the live feed from now).
    pub head: i64,
}

// -- sessions -----------------------------------------------------------------

/// The session cookie: `f.session` is the session id with its signature.
#[derive(ToSchema)]
pub struct SessionCookie {
    #[serde(rename = "f.session")]
    pub f_session: String,
}

/// `CreateUserSessionResponseSchema`.
#[derive(ToSchema)]
pub struct CreateUserSessionResponseSchema {
    pub domain: String,
    /// Seconds.
    pub max_age: i64,
    /// Always `true`.
    pub secure: bool,
    /// Always `true`.
    pub http_only: bool,
    pub cookie: SessionCookie,
}

/// `SessionListResponseInfo`: one active session.
#[derive(ToSchema)]
pub struct SessionListResponseInfo {
    pub session_id: String,
    pub user_agent: String,
    pub ip: String,
    pub domain: String,
    /// When the session expires (RFC 3339).
    pub expire_in: String,
    /// Always `""`.
    pub location: String,
}

/// `SessionListResponseSchema`.
#[derive(ToSchema)]
pub struct SessionListResponseSchema {
    pub items: Vec<SessionListResponseInfo>,
}

/// `SessionDeleteResponseSchema`.
#[derive(ToSchema)]
pub struct SessionDeleteResponseSchema {
    pub user_id: String,
    pub session_id: String,
}

/// `SessionsDeleteResponseSchema`: the sessions revoked (none when there was none).
#[derive(ToSchema)]
pub struct SessionsDeleteResponseSchema {
    pub user_id: String,
    pub session_ids: Vec<String>,
}

/// A session in use: when it expires now (extended if rolling).
#[derive(ToSchema)]
pub struct SessionUseResponse {
    pub user_id: String,
    pub session_id: String,
    pub expires_at: String,
}

// -- platform config ----------------------------------------------------------

/// `SessionExpiry` units.
#[derive(ToSchema)]
pub enum DurationUnit {
    Days,
    Hours,
    Minutes,
}

/// `SessionExpiry` units on input (either case).
#[derive(ToSchema)]
pub enum DurationUnitInput {
    Days,
    Hours,
    Minutes,
    #[serde(rename = "days")]
    LowerDays,
    #[serde(rename = "hours")]
    LowerHours,
    #[serde(rename = "minutes")]
    LowerMinutes,
}

/// How strictly a field is required.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RequiredLevel {
    Hard,
    Soft,
}

#[derive(ToSchema)]
pub struct LookAndFeel {
    pub card_position: String,
    pub background_color: String,
}

#[derive(ToSchema)]
pub struct Login {
    pub password: bool,
    pub otp: bool,
}

#[derive(ToSchema)]
pub struct MetaSchema {
    pub fynd_default: bool,
}

#[derive(ToSchema)]
pub struct Social {
    pub account_kit: bool,
    pub facebook: bool,
    pub google: bool,
    pub apple: bool,
}

/// `PlatformEmail` / `PlatformMobile`.
#[derive(ToSchema)]
pub struct RequiredField {
    pub is_required: bool,
    pub level: RequiredLevel,
}

/// `RequiredFields` / `RegisterRequiredFields`.
#[derive(ToSchema)]
pub struct RequiredFields {
    pub email: RequiredField,
    pub mobile: RequiredField,
}

#[derive(ToSchema)]
pub struct FlashCard {
    pub text: String,
    pub text_color: String,
    pub background_color: String,
}

/// A social login's app; `app_secret` is `********` when one is set, else `""`.
#[derive(ToSchema)]
pub struct SocialToken {
    pub app_id: String,
    pub app_secret: String,
}

#[derive(ToSchema)]
pub struct SocialTokens {
    pub facebook: SocialToken,
    pub account_kit: SocialToken,
    pub google: SocialToken,
}

#[derive(ToSchema)]
pub struct DeleteAccountReasons {
    pub reason_text: String,
    pub reason_id: String,
    pub show_text_area: bool,
}

#[derive(ToSchema)]
pub struct DeleteAccountConsent {
    pub consent_text: String,
}

/// `SessionExpiry`: the default session lifetime.
#[derive(ToSchema)]
pub struct SessionExpiry {
    pub duration: i64,
    #[serde(rename = "type")]
    pub unit: DurationUnit,
    pub is_rolling: bool,
}

/// `PlatformSchema`: the application's login and account settings.
#[derive(ToSchema)]
pub struct PlatformSchema {
    /// The application id.
    #[serde(rename = "_id")]
    pub id: String,
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
    /// Days an archived user may be restored.
    pub delete_account_day: i64,
    pub delete_account_reasons: Vec<DeleteAccountReasons>,
    pub delete_account_consent: DeleteAccountConsent,
    pub session_config: SessionExpiry,
    /// The config stream's version.
    #[serde(rename = "__v")]
    pub version: i64,
    /// Left out until the first update.
    pub created_at: Option<String>,
    /// Left out until the first update.
    pub updated_at: Option<String>,
}

#[derive(ToSchema)]
pub struct LookAndFeelInput {
    #[schema(nullable = false)]
    pub card_position: Option<String>,
    #[schema(nullable = false)]
    pub background_color: Option<String>,
}

#[derive(ToSchema)]
pub struct LoginInput {
    #[schema(nullable = false)]
    pub password: Option<bool>,
    #[schema(nullable = false)]
    pub otp: Option<bool>,
}

#[derive(ToSchema)]
pub struct MetaSchemaInput {
    #[schema(nullable = false)]
    pub fynd_default: Option<bool>,
}

#[derive(ToSchema)]
pub struct SocialInput {
    #[schema(nullable = false)]
    pub account_kit: Option<bool>,
    #[schema(nullable = false)]
    pub facebook: Option<bool>,
    #[schema(nullable = false)]
    pub google: Option<bool>,
    #[schema(nullable = false)]
    pub apple: Option<bool>,
}

#[derive(ToSchema)]
pub struct RequiredFieldInput {
    #[schema(nullable = false)]
    pub is_required: Option<bool>,
    #[schema(nullable = false)]
    pub level: Option<RequiredLevel>,
}

#[derive(ToSchema)]
pub struct RequiredFieldsInput {
    #[schema(nullable = false)]
    pub email: Option<RequiredFieldInput>,
    #[schema(nullable = false)]
    pub mobile: Option<RequiredFieldInput>,
}

#[derive(ToSchema)]
pub struct FlashCardInput {
    #[schema(nullable = false)]
    pub text: Option<String>,
    #[schema(nullable = false)]
    pub text_color: Option<String>,
    #[schema(nullable = false)]
    pub background_color: Option<String>,
}

/// A social login's app: a plaintext `app_secret` is stored as its digest;
/// `********` keeps the stored one.
#[derive(ToSchema)]
pub struct SocialTokenInput {
    #[schema(nullable = false)]
    pub app_id: Option<String>,
    #[schema(nullable = false)]
    pub app_secret: Option<String>,
}

#[derive(ToSchema)]
pub struct SocialTokensInput {
    #[schema(nullable = false)]
    pub facebook: Option<SocialTokenInput>,
    #[schema(nullable = false)]
    pub account_kit: Option<SocialTokenInput>,
    #[schema(nullable = false)]
    pub google: Option<SocialTokenInput>,
}

#[derive(ToSchema)]
pub struct DeleteAccountReasonsInput {
    #[schema(nullable = false)]
    pub reason_text: Option<String>,
    #[schema(nullable = false)]
    pub reason_id: Option<String>,
    #[schema(nullable = false)]
    pub show_text_area: Option<bool>,
}

#[derive(ToSchema)]
pub struct DeleteAccountConsentInput {
    #[schema(nullable = false)]
    pub consent_text: Option<String>,
}

/// At least 1, and at most one year in its unit.
#[derive(ToSchema)]
pub struct SessionExpiryInput {
    #[schema(nullable = false, minimum = 1)]
    pub duration: Option<i64>,
    #[serde(rename = "type")]
    #[schema(nullable = false)]
    pub unit: Option<DurationUnitInput>,
    #[schema(nullable = false)]
    pub is_rolling: Option<bool>,
}

/// The body of `POST …/platform/config`: merged into the current config
/// (objects field by field, arrays and values replaced), so any part of
/// `PlatformSchema` may be sent. `_id`, `__v`, `created_at` and
/// `updated_at` are ignored; `null` is refused.
#[derive(ToSchema)]
pub struct PlatformUpdateSchema {
    #[schema(nullable = false)]
    pub display: Option<String>,
    #[schema(nullable = false)]
    pub look_and_feel: Option<LookAndFeelInput>,
    #[schema(nullable = false)]
    pub active: Option<bool>,
    #[schema(nullable = false)]
    pub forgot_password: Option<bool>,
    #[schema(nullable = false)]
    pub login: Option<LoginInput>,
    #[schema(nullable = false)]
    pub skip_captcha: Option<bool>,
    #[schema(nullable = false)]
    pub name: Option<String>,
    #[schema(nullable = false)]
    pub meta: Option<MetaSchemaInput>,
    #[schema(nullable = false)]
    pub social: Option<SocialInput>,
    #[schema(nullable = false)]
    pub required_fields: Option<RequiredFieldsInput>,
    #[schema(nullable = false)]
    pub register_required_fields: Option<RequiredFieldsInput>,
    #[schema(nullable = false)]
    pub skip_login: Option<bool>,
    #[schema(nullable = false)]
    pub flash_card: Option<FlashCardInput>,
    #[schema(nullable = false)]
    pub subtext: Option<String>,
    #[schema(nullable = false)]
    pub social_tokens: Option<SocialTokensInput>,
    #[schema(nullable = false)]
    pub register: Option<bool>,
    #[schema(nullable = false)]
    pub mobile_image: Option<String>,
    #[schema(nullable = false)]
    pub desktop_image: Option<String>,
    #[schema(nullable = false, minimum = 0, maximum = 3650)]
    pub delete_account_day: Option<i64>,
    #[schema(nullable = false, max_items = 50)]
    pub delete_account_reasons: Option<Vec<DeleteAccountReasonsInput>>,
    #[schema(nullable = false)]
    pub delete_account_consent: Option<DeleteAccountConsentInput>,
    #[schema(nullable = false)]
    pub session_config: Option<SessionExpiryInput>,
}

// -- attributes -----------------------------------------------------------------

/// The type of an attribute definition.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttributeType {
    String,
    Number,
    Boolean,
    Date,
    Datetime,
    Email,
    Phone,
    Enum,
    Json,
}

/// What a validation checks.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValidationType {
    Min,
    Max,
    MinLength,
    MaxLength,
    Regex,
    Enum,
    Required,
}

/// `UserAttributeDefinitionValidation`: `value` is a number for `min` and
/// `max`, a non-negative integer for `min_length` and `max_length`, a
/// string for `regex`, a list of strings for `enum`, a boolean for `required`.
#[derive(ToSchema)]
pub struct UserAttributeDefinitionValidation {
    #[serde(rename = "type")]
    pub kind: ValidationType,
    pub value: Value,
}

/// `UserAttributeDefinition`, as answered (no `null` anywhere).
#[derive(ToSchema)]
pub struct UserAttributeDefinition {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    pub slug: String,
    pub description: String,
    pub application_id: String,
    #[serde(rename = "type")]
    pub kind: AttributeType,
    pub icon: String,
    pub ordering_channels: Vec<String>,
    pub is_multi_value: bool,
    pub customer_editable: bool,
    pub encrypted: bool,
    pub pinned: bool,
    pub pin_order: i64,
    pub validations: Vec<UserAttributeDefinitionValidation>,
    pub is_locked: bool,
    pub created_at: String,
    pub modified_at: String,
    /// The definition stream's version.
    #[serde(rename = "__v")]
    pub version: i64,
    /// Present when set to an object.
    #[schema(value_type = Option<Object>, nullable = false)]
    pub masking: Option<Value>,
    /// Present when set to an object.
    #[schema(value_type = Option<Object>, nullable = false)]
    pub registration: Option<Value>,
    /// The default value as text (JSON text for non-string values); present when set.
    #[schema(nullable = false)]
    pub default_value: Option<String>,
}

/// A page number pagination that also says whether there is a previous page.
#[derive(ToSchema)]
pub struct PageWithPrevious {
    /// Always `number`.
    #[serde(rename = "type")]
    pub kind: String,
    pub current: i64,
    pub size: i64,
    pub item_total: i64,
    pub has_next: bool,
    pub has_previous: bool,
}

/// `UserAttributeDefinitionListDetail`.
#[derive(ToSchema)]
pub struct UserAttributeDefinitionListDetail {
    pub items: Vec<UserAttributeDefinition>,
    pub page: PageWithPrevious,
}

/// `{"success": "<what was deleted>"}`.
#[derive(ToSchema)]
pub struct SuccessMessage {
    pub success: String,
}

/// `UserAttributeKeyValue`: the value, any JSON value its definition admits.
#[derive(ToSchema)]
pub struct UserAttributeKeyValue {
    pub value: Value,
}

/// `UserAttribute`: one user's value of one definition, opened.
#[derive(ToSchema)]
pub struct UserAttribute {
    #[serde(rename = "_id")]
    pub id: String,
    /// The definition's name (`""` when the definition is gone).
    pub name: String,
    pub user_id: String,
    pub application_id: String,
    pub user_attribute_definition_id: String,
    /// The definition's type (`""` when the definition is gone).
    #[serde(rename = "type")]
    pub kind: String,
    pub customer_overridden: bool,
    pub attribute: UserAttributeKeyValue,
    pub created_at: String,
    pub updated_at: String,
}

/// `UserAttributeListDetail`.
#[derive(ToSchema)]
pub struct UserAttributeListDetail {
    pub items: Vec<UserAttribute>,
    pub page: PageWithPrevious,
}

/// `BulkUserAttribute`: the values written.
#[derive(ToSchema)]
pub struct BulkUserAttribute {
    /// Always `true`.
    pub success: bool,
    pub attributes: Vec<UserAttribute>,
}

/// A user matching an attribute filter: `UserSchema` with its matching
/// values (phone `country_code`s are strings here).
#[derive(ToSchema)]
pub struct UserAttributeFilteredUser {
    #[serde(flatten)]
    pub user: crate::dto::UserDto,
    pub attributes: Vec<UserAttribute>,
}

/// The page of an attribute filter (no total).
#[derive(ToSchema)]
pub struct FilterPage {
    /// Always `number`.
    #[serde(rename = "type")]
    pub kind: String,
    pub current: i64,
    pub size: i64,
    pub has_next: bool,
}

/// `UserAttributeFilteredList`.
#[derive(ToSchema)]
pub struct UserAttributeFilteredList {
    pub items: Vec<UserAttributeFilteredUser>,
    pub page: FilterPage,
}

/// A rule operator.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConditionOperator {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Nin,
    Contains,
    Exists,
    NotExists,
    Between,
}

// -- jobs -----------------------------------------------------------------------

/// A job's file: the service's URL of it (or the source URL the caller named).
#[derive(ToSchema)]
pub struct JobFileLink {
    pub absolute_url: String,
    pub relative_url: String,
}

/// The files of a job.
#[derive(ToSchema)]
pub struct JobLinks {
    /// An import's or attribute job's source, or an export's output once written.
    #[schema(nullable = false)]
    pub file: Option<JobFileLink>,
    /// The rows refused, once the job has started.
    #[schema(nullable = false)]
    pub error: Option<JobFileLink>,
}

#[derive(ToSchema)]
pub struct JobCreatedBy {
    pub name: String,
    pub user_id: String,
}

/// Rows seen, applied and refused.
#[derive(ToSchema)]
pub struct JobCount {
    pub total: u64,
    pub success: u64,
    pub error: u64,
}

/// What a job does.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobActionType {
    Import,
    Export,
    Attributes,
}

/// Where a job is.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
}

/// A job's file format.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobFileFormat {
    Csv,
    Jsonl,
}

/// `BulkActionModel`: a bulk job (no `null` anywhere; absent links are left out).
#[derive(ToSchema)]
pub struct BulkActionModel {
    #[serde(rename = "_id")]
    pub id: String,
    pub file_name: String,
    pub file_format: JobFileFormat,
    pub action_type: JobActionType,
    pub created_by: JobCreatedBy,
    pub count: JobCount,
    pub status: JobStatus,
    pub links: JobLinks,
    pub application_id: String,
    pub company_id: String,
    pub created_at: String,
    pub updated_at: String,
    /// Why the job failed; present once it has.
    #[schema(nullable = false)]
    pub reason: Option<String>,
    /// The log position an export is consistent as of; present once known.
    #[schema(nullable = false)]
    pub position: Option<i64>,
}

/// `BulkUserAttributesQueuedDetail`: a bulk attribute job.
#[derive(ToSchema)]
pub struct BulkAttributesJob {
    #[serde(flatten)]
    pub job: BulkActionModel,
    pub job_id: String,
}

/// A row a bulk attribute job refused.
#[derive(ToSchema)]
pub struct BulkJobError {
    /// The line of the file (0 when unknown).
    pub line: u64,
    pub reason: String,
}

/// A bulk attribute job with its first refused rows (at most 100).
#[derive(ToSchema)]
pub struct BulkAttributesJobDetail {
    #[serde(flatten)]
    pub job: BulkActionModel,
    pub job_id: String,
    pub errors: Vec<BulkJobError>,
}

/// A page of jobs.
#[derive(ToSchema)]
pub struct BulkActionListResponse {
    pub items: Vec<BulkActionModel>,
    pub page: crate::dto::Page,
}

// -- groups ---------------------------------------------------------------------

/// `ConditionsSchema`: one condition of a rule group.
#[derive(ToSchema)]
pub struct ConditionsSchema {
    pub user_attribute_definition_id: String,
    #[serde(rename = "type")]
    pub op: ConditionOperator,
    pub value: String,
}

/// `UserResponseErrorSchema`: membership rows that matched no user.
#[derive(ToSchema)]
pub struct UserResponseErrorSchema {
    pub count: i64,
    /// Always `""`.
    pub file_url: String,
}

/// `UserGroupResponseSchema`.
#[derive(ToSchema)]
pub struct UserGroupResponseSchema {
    #[serde(rename = "_id")]
    pub id: String,
    pub uid: i64,
    pub name: String,
    pub description: String,
    /// The client's `type`, else `conditional` (rule groups) or `manual`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Left out when empty.
    #[schema(nullable = false)]
    pub category: Option<String>,
    pub tags: Vec<String>,
    pub conditions: Vec<ConditionsSchema>,
    pub file_url: String,
    /// `pending` until the engine has evaluated the current rule, then `active`.
    pub status: String,
    /// Always `true`.
    pub is_active: bool,
    pub total_users: i64,
    pub error: UserResponseErrorSchema,
    pub application_id: String,
    pub created_at: String,
    pub modified_at: String,
    /// The version of the group's details.
    #[serde(rename = "__v")]
    pub version: i64,
}

/// `UserGroupListResponseSchema`.
#[derive(ToSchema)]
pub struct UserGroupListResponseSchema {
    pub items: Vec<UserGroupResponseSchema>,
    pub page: crate::dto::Page,
}

/// `UserGroupTagsDetail`.
#[derive(ToSchema)]
pub struct UserGroupTagsDetail {
    /// Sorted, each once.
    pub items: Vec<String>,
}

/// A category and how many groups have it.
#[derive(ToSchema)]
pub struct UserGroupCategory {
    pub key: String,
    pub name: String,
    pub count: i64,
}

/// `UserGroupCategoriesDetail`.
#[derive(ToSchema)]
pub struct UserGroupCategoriesDetail {
    pub items: Vec<UserGroupCategory>,
}

/// `UserSummary`: a member of a group.
#[derive(ToSchema)]
pub struct UserSummary {
    pub user_id: String,
    #[schema(value_type = Vec<Object>)]
    pub emails: Value,
    #[schema(value_type = Vec<Object>)]
    pub phone_numbers: Value,
}

/// `CursorPage`: `next_cursor` / `prev_cursor` are present when there is
/// such a page.
#[derive(ToSchema)]
pub struct CursorPage {
    /// Always `cursor`.
    #[serde(rename = "type")]
    pub kind: String,
    pub size: i64,
    pub has_next: bool,
    pub has_prev: bool,
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
    #[schema(nullable = false)]
    pub prev_cursor: Option<String>,
}

/// `UserGroupUsersDetail`.
#[derive(ToSchema)]
pub struct UserGroupUsersDetail {
    pub items: Vec<UserSummary>,
    pub page: CursorPage,
}

/// `DeleteDetail`.
#[derive(ToSchema)]
pub struct DeleteDetail {
    /// Always `true`.
    pub success: bool,
    pub message: String,
}

/// `RefreshDetail`.
#[derive(ToSchema)]
pub struct RefreshDetail {
    pub message: String,
    pub uid: i64,
}

/// One event of a group's history; membership changes name who joined and
/// left and why, evaluations the rule generation.
#[derive(ToSchema)]
pub struct GroupHistoryEntry {
    #[serde(flatten)]
    pub entry: HistoryEntry,
    /// Users who joined (membership changes only).
    #[schema(nullable = false)]
    pub joined: Option<Vec<String>>,
    /// Users who left (membership changes only).
    #[schema(nullable = false)]
    pub left: Option<Vec<String>>,
    /// Rows that matched no user (membership changes only).
    #[schema(nullable = false)]
    pub unmatched: Option<i64>,
    /// `{"kind": "manual" | "event" | "evaluation", …}` (membership changes only).
    #[schema(value_type = Option<Object>, nullable = false)]
    pub cause: Option<Value>,
    /// The rule generation evaluated (evaluations only).
    #[schema(nullable = false)]
    pub rule_version: Option<i64>,
}

/// `GET …/user_group/{group_id}/history`.
#[derive(ToSchema)]
pub struct GroupHistoryResponse {
    pub group_id: String,
    /// Oldest first.
    pub history: Vec<GroupHistoryEntry>,
}

// -- Passage --------------------------------------------------------------------

/// A Passage user's status.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PassageUserStatus {
    Active,
    Inactive,
}

/// `PassageUser` / `ListPaginatedUsersItem`: every field present and non-null.
#[derive(ToSchema)]
pub struct PassageUser {
    pub id: String,
    /// `""` when the user has none.
    pub email: String,
    pub email_verified: bool,
    /// `+<cc><number>`, or `""` when the user has none.
    pub phone: String,
    pub phone_verified: bool,
    /// `""` when none.
    pub external_id: String,
    pub status: PassageUserStatus,
    pub login_count: i64,
    pub created_at: String,
    pub updated_at: String,
    /// `0001-01-01T00:00:00.000000Z` before the first login.
    pub last_login_at: String,
    #[schema(value_type = Object)]
    pub user_metadata: Value,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub recent_events: Vec<Value>,
    /// Always `{}`.
    #[schema(value_type = Object)]
    pub social_connections: Value,
    /// Always `false`.
    pub webauthn: bool,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub webauthn_devices: Vec<Value>,
    /// Always empty.
    pub webauthn_types: Vec<String>,
}

/// `UserInfo`: `{"user": PassageUser}`.
#[derive(ToSchema)]
pub struct PassageUserInfo {
    pub user: PassageUser,
}

/// A link of a list page; `href` is `""` when there is no such page.
#[derive(ToSchema)]
pub struct PassageLink {
    pub href: String,
}

/// The links of a list page.
#[derive(ToSchema)]
pub struct PassagePaginatedLinks {
    #[serde(rename = "self")]
    pub self_: PassageLink,
    pub first: PassageLink,
    pub last: PassageLink,
    pub next: PassageLink,
    pub previous: PassageLink,
}

/// `PaginatedUsersResponse`.
#[derive(ToSchema)]
pub struct PassagePaginatedUsers {
    #[serde(rename = "_links")]
    pub links: PassagePaginatedLinks,
    /// Unix seconds: the pages list users created before it.
    pub created_before: i64,
    pub limit: i64,
    pub page: i64,
    pub total_users: i64,
    pub users: Vec<PassageUser>,
}

/// `{}`: the answer of a Passage delete.
#[derive(ToSchema)]
pub struct PassageEmpty {}

// -- closed sets of request values ---------------------------------------------

/// How the conditions of an attribute filter combine (always with and; the
/// empty string too). Written by hand: the derive drops an empty name.
pub struct FilterQueryType;

impl utoipa::PartialSchema for FilterQueryType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        super::one_of(&["", "and", "all", "user", "users"])
    }
}

impl ToSchema for FilterQueryType {}

/// A job file format as requested (any case).
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobFileFormatInput {
    Csv,
    Jsonl,
    Ndjson,
    Json,
}

/// Where PatchGroupMembers reads its rows.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PatchSource {
    Json,
    FileUrl,
    File,
}

/// What a membership row does.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberAction {
    Add,
    Remove,
}

/// `GET …/customers/{user_id}/groups`.
#[derive(ToSchema)]
pub struct CustomerGroupsResponse {
    pub user_id: String,
    pub groups: Vec<CustomerGroup>,
}

/// A group the customer is in (`UserGroupResponseSchema`), with why.
#[derive(ToSchema)]
pub struct CustomerGroup {
    #[serde(flatten)]
    pub group: UserGroupResponseSchema,
    pub joined: JoinedBecause,
}

/// The `group.membership_changed` event that made the customer join.
#[derive(ToSchema)]
pub struct JoinedBecause {
    /// Its log position.
    pub position: i64,
    pub event_id: Option<String>,
    /// `group.membership_changed`.
    pub event_type: Option<String>,
    /// When the membership changed (RFC 3339).
    pub at: Option<String>,
    /// `{"kind": "event", "position", "event_type"}` (the attribute, user or
    /// definition event a rule group followed), `{"kind": "evaluation",
    /// "rule_version"}` or `{"kind": "manual"}`.
    #[schema(value_type = Option<Object>)]
    pub cause: Option<serde_json::Value>,
}
