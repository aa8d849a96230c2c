//! The OpenAPI 3.1 description of every route, built from the code: each
//! route of [`crate::route_table`] has one [`Op`] in the surface's table
//! (`fynd::operations`, `passage::operations`), whose bodies and responses
//! name the Rust types the handlers read and write (`utoipa::ToSchema`).
//! `GET /openapi.json` serves it; `GET /docs` renders it with a page of our
//! own (no asset from the internet).

mod fynd;
mod passage;
pub mod schemas;

use axum::http::Method;
use std::collections::BTreeMap;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, HeaderBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder, Paths,
    RefOr, Required, ResponseBuilder, Schema, Tag, Type,
};
use utoipa::ToSchema;

/// The tag of the Passage surface's operations (their errors are Passage's).
pub const PASSAGE: &str = "Passage users";

/// Who may call an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// A Fynd access token from the OAuth token endpoint.
    FyndToken,
    /// A Passage API key (or a Fynd access token) as a bearer.
    PassageBearer,
    /// HTTP Basic `api_key:api_secret` (the token endpoint).
    Basic,
    /// Open to anyone.
    None,
    /// Loopback, or any valid credential, or anyone with `--ops-public`.
    Ops,
}

/// The error body an operation answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errors {
    /// `{"message", "code"}` ([`schemas::ApiErrorBody`]).
    Fynd,
    /// `{"code", "error", "message"}` ([`schemas::PassageErrorBody`]).
    Passage,
    /// `{"error", "error_description", …}` ([`schemas::OAuthErrorBody`]).
    OAuth,
}

struct Param {
    name: &'static str,
    location: ParameterIn,
    required: bool,
    schema: RefOr<Schema>,
    description: &'static str,
}

struct Reply {
    status: u16,
    description: String,
    /// Each content type with its schema; none for an empty body.
    content: Vec<(&'static str, RefOr<Schema>)>,
    headers: Vec<(&'static str, RefOr<Schema>, &'static str)>,
}

/// One operation: a route's method and path (relative to its surface's
/// prefix), what it reads and every status it can answer.
pub struct Op {
    pub method: Method,
    pub path: &'static str,
    summary: &'static str,
    description: Option<&'static str>,
    tag: &'static str,
    params: Vec<Param>,
    /// The body's content types, each with its schema; none without a body.
    body: Vec<(&'static str, RefOr<Schema>)>,
    replies: Vec<Reply>,
    security: Security,
    errors: Errors,
    schemas: Vec<(String, RefOr<Schema>)>,
}

/// A string schema.
pub fn string() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).into()
}

/// An integer schema.
pub fn integer() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Integer).into()
}

/// A boolean schema.
pub fn boolean() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Boolean).into()
}

/// Any JSON object.
pub fn object() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Object).into()
}

/// A string schema with a closed set of values.
pub fn one_of(values: &[&str]) -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.iter().copied())).into()
}

fn reference<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
    let name = T::name().to_string();
    T::schemas(schemas);
    schemas.push((name.clone(), T::schema()));
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name(name))
}

impl Op {
    pub fn new(method: Method, path: &'static str, tag: &'static str, summary: &'static str) -> Self {
        let errors = if tag == PASSAGE { Errors::Passage } else { Errors::Fynd };
        Op {
            method,
            path,
            summary,
            description: None,
            tag,
            params: Vec::new(),
            body: Vec::new(),
            replies: Vec::new(),
            security: if tag == PASSAGE { Security::PassageBearer } else { Security::FyndToken },
            errors,
            schemas: Vec::new(),
        }
    }

    pub fn describe(mut self, text: &'static str) -> Self {
        self.description = Some(text);
        self
    }

    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    pub fn errors(mut self, errors: Errors) -> Self {
        self.errors = errors;
        self
    }

    fn param(
        mut self,
        name: &'static str,
        location: ParameterIn,
        required: bool,
        schema: RefOr<Schema>,
        description: &'static str,
    ) -> Self {
        self.params.push(Param { name, location, required, schema, description });
        self
    }

    /// An optional query parameter.
    pub fn query(self, name: &'static str, schema: RefOr<Schema>, description: &'static str) -> Self {
        self.param(name, ParameterIn::Query, false, schema, description)
    }

    /// A required query parameter.
    pub fn query_required(self, name: &'static str, schema: RefOr<Schema>, description: &'static str) -> Self {
        self.param(name, ParameterIn::Query, true, schema, description)
    }

    /// An optional request header.
    pub fn header(self, name: &'static str, schema: RefOr<Schema>, description: &'static str) -> Self {
        self.param(name, ParameterIn::Header, false, schema, description)
    }

    /// A required JSON body of type `T`.
    pub fn body<T: ToSchema>(mut self) -> Self {
        let schema = reference::<T>(&mut self.schemas);
        self.body.push(("application/json", schema));
        self
    }

    /// A body of another content type, described by `schema` (one more
    /// choice when the operation has a body already).
    pub fn body_as(mut self, content_type: &'static str, schema: RefOr<Schema>) -> Self {
        self.body.push((content_type, schema));
        self
    }

    /// A JSON answer of type `T` with this status.
    pub fn reply<T: ToSchema>(mut self, status: u16, description: &str) -> Self {
        let schema = reference::<T>(&mut self.schemas);
        self.replies.push(Reply {
            status,
            description: description.to_string(),
            content: vec![("application/json", schema)],
            headers: Vec::new(),
        });
        self
    }

    /// An answer of another content type (or none, with `schema` `None`).
    pub fn reply_as(
        mut self,
        status: u16,
        description: &str,
        content_type: &'static str,
        schema: Option<RefOr<Schema>>,
    ) -> Self {
        let content = schema.map(|s| vec![(content_type, s)]).unwrap_or_default();
        self.replies.push(Reply { status, description: description.to_string(), content, headers: Vec::new() });
        self
    }

    /// Another content type of the last answer added (the client chooses
    /// with `Accept`).
    pub fn reply_also(mut self, content_type: &'static str, schema: RefOr<Schema>) -> Self {
        if let Some(last) = self.replies.last_mut() {
            last.content.push((content_type, schema));
        }
        self
    }

    /// An integer header of the last answer added.
    pub fn reply_header(self, name: &'static str, description: &'static str) -> Self {
        self.reply_header_as(name, integer(), description)
    }

    /// A header of the last answer added, with its schema.
    pub fn reply_header_as(mut self, name: &'static str, schema: RefOr<Schema>, description: &'static str) -> Self {
        if let Some(last) = self.replies.last_mut() {
            last.headers.push((name, schema, description));
        }
        self
    }

    /// Error answers of the operation's error body, with what each means here.
    pub fn fails(mut self, failures: &[(u16, &str)]) -> Self {
        for (status, description) in failures {
            self = self.error_reply(*status, description);
        }
        self
    }

    fn error_reply(mut self, status: u16, description: &str) -> Self {
        let schema = match self.errors {
            Errors::Fynd => reference::<schemas::ApiErrorBody>(&mut self.schemas),
            Errors::Passage => reference::<schemas::PassageErrorBody>(&mut self.schemas),
            Errors::OAuth => reference::<schemas::OAuthErrorBody>(&mut self.schemas),
        };
        let mut headers = Vec::new();
        if status == 429 || status == 503 {
            headers.push(("Retry-After", integer(), "seconds to wait before retrying"));
        }
        self.replies.push(Reply {
            status,
            description: description.to_string(),
            content: vec![("application/json", schema)],
            headers,
        });
        self
    }

    /// The answers every operation of a surface can give, whatever it does:
    /// refused credentials, throttling, an unreachable or full database.
    fn common_failures(self) -> Self {
        let has = |s: &Self, status: u16| s.replies.iter().any(|r| r.status == status);
        let mut op = self;
        let mut common: Vec<(u16, &str)> = Vec::new();
        match op.security {
            Security::FyndToken => {
                common.push((401, "no valid access token"));
                common.push((403, "the token's key may not use this company or application"));
                common.push((429, "the key is over its request rate (--rate-limit)"));
            }
            Security::PassageBearer => {
                common.push((401, "no valid API key"));
                common.push((403, "the key may not use this app"));
                common.push((429, "too many failed key checks from this address, or over --rate-limit"));
            }
            Security::Basic | Security::None | Security::Ops => {}
        }
        if !op.body.is_empty() && op.errors != Errors::OAuth {
            common.push((413, "the body is over the body limit (--body-limit)"));
        }
        if matches!(op.security, Security::FyndToken | Security::PassageBearer) {
            common.push((503, "the database is unreachable or full, or a read model is behind X-Min-Position"));
        }
        for (status, description) in common {
            if !has(&op, status) {
                op = op.error_reply(status, description);
            }
        }
        op
    }

    fn build(
        self,
        prefix: &str,
        schemas: &mut BTreeMap<String, RefOr<Schema>>,
    ) -> (String, HttpMethod, utoipa::openapi::path::Operation) {
        let op = self.common_failures();
        let full = format!("{prefix}{}", op.path);
        let mut builder = OperationBuilder::new()
            .tag(op.tag)
            .summary(Some(op.summary))
            .description(op.description)
            .operation_id(Some(operation_id(&op.method, surface_of(prefix), op.path)));
        for name in path_params(&full) {
            builder = builder.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(path_schema(name))),
            );
        }
        for p in op.params {
            let schema = p.schema;
            builder = builder.parameter(
                ParameterBuilder::new()
                    .name(p.name)
                    .parameter_in(p.location)
                    .required(if p.required { Required::True } else { Required::False })
                    .description(Some(p.description))
                    .schema(Some(schema)),
            );
        }
        if !op.body.is_empty() {
            let mut body = RequestBodyBuilder::new().required(Some(Required::True));
            for (content_type, schema) in op.body {
                body = body.content(content_type, ContentBuilder::new().schema(Some(schema)).build());
            }
            builder = builder.request_body(Some(body.build()));
        }
        for r in op.replies {
            let mut response = ResponseBuilder::new().description(r.description);
            for (content_type, schema) in r.content {
                response = response.content(content_type, ContentBuilder::new().schema(Some(schema)).build());
            }
            let request_id = ("X-Request-Id", string(), "the request's id (the client's when well formed), as logged");
            for (name, schema, description) in r.headers.into_iter().chain([request_id]) {
                response =
                    response.header(name, HeaderBuilder::new().schema(schema).description(Some(description)).build());
            }
            builder = builder.response(r.status.to_string(), response.build());
        }
        let requirement = match op.security {
            Security::FyndToken => Some(SecurityRequirement::new("fynd_token", Vec::<String>::new())),
            Security::PassageBearer => Some(SecurityRequirement::new("passage_bearer", Vec::<String>::new())),
            Security::Basic => Some(SecurityRequirement::new("api_key_basic", Vec::<String>::new())),
            Security::Ops => Some(SecurityRequirement::default()),
            Security::None => None,
        };
        if let Some(requirement) = requirement {
            builder = builder.security(requirement);
            if op.security == Security::Ops {
                builder = builder
                    .security(SecurityRequirement::new("fynd_token", Vec::<String>::new()))
                    .security(SecurityRequirement::new("passage_bearer", Vec::<String>::new()));
            }
        }
        schemas.extend(op.schemas);
        (full, http_method(&op.method), builder.build())
    }
}

fn http_method(method: &Method) -> HttpMethod {
    match *method {
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        Method::DELETE => HttpMethod::Delete,
        Method::HEAD => HttpMethod::Head,
        _ => HttpMethod::Get,
    }
}

/// `get_fynd_customers_user_id_history`-style ids, unique per method and path.
fn operation_id(method: &Method, surface: &str, path: &str) -> String {
    let words: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches(|c| c == '{' || c == '}').replace(['-', '.'], "_"))
        .collect();
    let surface = if surface.is_empty() { String::new() } else { format!("{surface}_") };
    format!("{}_{surface}{}", method.as_str().to_lowercase(), words.join("_"))
}

fn surface_of(prefix: &str) -> &'static str {
    if prefix == crate::fynd::PREFIX {
        "fynd"
    } else if prefix == crate::passage::PREFIX {
        "passage"
    } else {
        ""
    }
}

/// The names in a path template's braces.
fn path_params(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}

/// An id the server accepts: 24 hex digits (surrounding blanks trimmed).
const HEX_ID: &str = r"^\s*[0-9a-fA-F]{24}\s*$";

fn path_schema(name: &str) -> RefOr<Schema> {
    let described = |pattern: Option<&str>, text: &str| -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::String).pattern(pattern).description(Some(text)).into()
    };
    match name {
        "user_id" => described(Some(HEX_ID), "the user's id (24 hex digits)"),
        "definition_id" => described(Some(HEX_ID), "an attribute definition's id"),
        "group_id" => described(Some(HEX_ID), "a group's id"),
        "job_id" => described(Some(HEX_ID), "a bulk job's id"),
        "attribute_id" => described(None, "an attribute value's id"),
        "name" => one_of(&["file", "error"]),
        "company_id" => described(None, "the company (tenant)"),
        "application_id" | "app_id" => described(None, "the application within the company"),
        _ => described(None, "an id"),
    }
}

fn security_schemes() -> Vec<(&'static str, SecurityScheme)> {
    vec![
        (
            "fynd_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access token from POST /service/panel/authentication/v1.0/company/{company_id}/oauth/token \
                         (grant_type=client_credentials with the API key and secret as HTTP Basic).",
                    ))
                    .build(),
            ),
        ),
        (
            "passage_bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key `key.secret` (`userstream apikey create`'s bearer), or a Fynd access token."))
                    .build(),
            ),
        ),
        (
            "api_key_basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some("The API key as user name and its secret as password."))
                    .build(),
            ),
        ),
    ]
}

/// Every operation of the service: both surfaces, the token endpoint and
/// the operational routes, each with its full path.
pub fn operations() -> Vec<(String, Op)> {
    let fynd = fynd::operations().into_iter().map(|op| (crate::fynd::PREFIX.to_string(), op));
    let passage = passage::operations().into_iter().map(|op| (crate::passage::PREFIX.to_string(), op));
    let other = fynd::other_operations().into_iter().map(|op| (String::new(), op));
    fynd.chain(passage).chain(other).collect()
}

/// The whole document.
pub fn document() -> OpenApi {
    let mut schemas = BTreeMap::new();
    let mut paths = Paths::new();
    for (prefix, op) in operations() {
        let (path, method, operation) = op.build(&prefix, &mut schemas);
        paths.add_path_operation(path, vec![method], operation);
    }
    let mut components = ComponentsBuilder::new().schemas_from_iter(schemas);
    for (name, scheme) in security_schemes() {
        components = components.security_scheme(name, scheme);
    }
    let tags = [
        "Customers",
        "Sessions",
        "Platform config",
        "Attributes",
        "Groups",
        "Jobs",
        "Events",
        "Passage users",
        "Auth",
        "Operations",
    ]
    .map(Tag::new);
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("userstream")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Event-sourced user management: the Fynd Platform User API and the Passage Users API, \
                     wire-compatible, over one event log.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components.build()))
        .tags(Some(tags))
        .build()
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::to_string(&document()).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_one_operation_and_every_operation_a_route() {
        let routes: Vec<(Method, String)> = crate::route_table();
        let ops: Vec<(Method, String)> =
            operations().into_iter().map(|(prefix, op)| (op.method.clone(), format!("{prefix}{}", op.path))).collect();
        for route in &routes {
            assert_eq!(
                ops.iter().filter(|o| *o == route).count(),
                1,
                "route {} {} has no single operation",
                route.0,
                route.1
            );
        }
        for op in &ops {
            let known = routes.contains(op) || crate::other_routes().contains(op);
            assert!(known, "operation {} {} has no route", op.0, op.1);
        }
    }

    #[test]
    fn every_reference_names_a_schema() {
        let json = serde_json::to_value(document()).expect("document serialises");
        let names: Vec<String> = json["components"]["schemas"].as_object().expect("schemas").keys().cloned().collect();
        let text = json.to_string();
        for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap_or_default();
            assert!(names.iter().any(|n| n == name), "$ref to missing schema {name}");
        }
    }

    #[test]
    fn every_operation_id_is_unique() {
        let mut ids: Vec<String> =
            operations().iter().map(|(prefix, op)| operation_id(&op.method, surface_of(prefix), op.path)).collect();
        let all = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all);
    }
}
