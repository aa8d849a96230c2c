//! `POST …/user_attribute/filter`: users matching an ad-hoc rule. The
//! request is checked and compiled here; the scan is the read side's
//! (`read_models::attribute_filter`).

use super::{consistent, value_json};
use crate::http::{ApiError, JsonBody, TenantOf};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use userstream_domain::attribute::Definition;
use userstream_domain::rules;
use userstream_projections::read_models::attribute_filter::AttributeFilter;
use userstream_projections::read_models::users::{UserRow, MAX_PAGE_SIZE};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct FilterCondition {
    pub definition_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = crate::openapi::schemas::ConditionOperator)]
    pub op: String,
    /// A string, a list (joined with `,`) or any value (as JSON text).
    #[serde(default)]
    pub value: Value,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct FilterQuery {
    /// Conditions are always combined with and.
    #[serde(rename = "type", default)]
    #[schema(value_type = Option<crate::openapi::schemas::FilterQueryType>)]
    pub kind: Option<String>,
    #[schema(minimum = 1, maximum = 500)]
    pub limit: i64,
    /// From 1; `page × limit` at most 10000.
    #[schema(minimum = 1, maximum = 10_000)]
    pub page: i64,
    pub conditions: Vec<FilterCondition>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct FilterBody {
    pub query: FilterQuery,
}

pub async fn filter_users(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    JsonBody(body): JsonBody<FilterBody>,
) -> Result<Json<Value>, ApiError> {
    let q = body.query;
    let conditions = q.conditions()?;
    consistent(&state).await?;
    let definitions: Vec<Definition> =
        state.attribute_queries.definitions(&tenant).await?.into_iter().map(|r| r.definition).collect();
    let rule = rules::compile(&conditions, |id| definitions.iter().find(|d| d.id == id))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let contacts: Vec<String> = [&q.email, &q.phone].into_iter().flatten().cloned().collect();
    let filter = AttributeFilter { users: &state.queries, attributes: &state.attribute_queries, tenant: &tenant };
    let found = filter.page(&rule, &contacts, q.page, q.limit).await?;
    let ids: Vec<String> = found.users.iter().map(|(u, _)| u.clone()).collect();
    let users = state.queries.by_ids(&tenant, &ids).await?;
    let mut items = Vec::with_capacity(found.users.len());
    for (user_id, values) in &found.users {
        let Some(u) = users.iter().find(|u| &u.user_id == user_id) else { continue };
        let attributes = values
            .iter()
            .map(|v| value_json(&state, &tenant, definitions.iter().find(|d| d.id == v.definition_id), v))
            .collect::<Result<Vec<_>, _>>()?;
        items.push(filtered_user_json(u, attributes));
    }
    Ok(Json(json!({
        "items": items,
        "page": { "type": "number", "current": q.page, "size": q.limit, "has_next": found.has_next },
    })))
}

impl FilterQuery {
    /// Checks paging and combination, and turns the wire conditions into rule conditions.
    fn conditions(&self) -> Result<Vec<rules::Condition>, ApiError> {
        if !(1..=MAX_PAGE_SIZE).contains(&self.limit) {
            return Err(ApiError::invalid(format!("query.limit must be from 1 to {MAX_PAGE_SIZE}")));
        }
        if self.page < 1 || self.page.saturating_mul(self.limit) > 10_000 {
            return Err(ApiError::invalid("query.page must be at least 1, and page × limit at most 10000"));
        }
        if self.kind.as_deref().is_some_and(|k| !matches!(k, "" | "and" | "all" | "user" | "users")) {
            return Err(ApiError::invalid("query.type: conditions are combined with and (all must hold)"));
        }
        self.conditions
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let op = rules::Op::parse(c.op.trim())
                    .ok_or_else(|| ApiError::invalid(format!("condition {index}: unknown operator {:?}", c.op)))?;
                let value = match &c.value {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    Value::Array(items) => items
                        .iter()
                        .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                Ok(rules::Condition { user_attribute_definition_id: c.definition_id.trim().to_string(), op, value })
            })
            .collect()
    }
}

/// A user as the filter answers it (`UserAttributeFilteredList` item).
fn filtered_user_json(user: &UserRow, attributes: Vec<Value>) -> Value {
    let mut item = serde_json::to_value(crate::dto::UserDto::from(user.clone())).unwrap_or(Value::Null);
    if let Some(map) = item.as_object_mut() {
        map.insert("attributes".into(), Value::Array(attributes));
        // It types phone country codes as strings.
        if let Some(Value::Array(phones)) = map.get_mut("phone_numbers") {
            for p in phones {
                if let Some(code) = p.get("country_code").and_then(Value::as_u64) {
                    p["country_code"] = Value::String(code.to_string());
                }
            }
        }
    }
    item
}
