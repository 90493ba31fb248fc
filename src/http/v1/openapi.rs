//! `GET /openapi.json` (no API key): the OpenAPI 3.1 document of the `/v1` API, built with
//! utoipa's builders from [`OPERATIONS`] (one row per routed method, in `operations.rs`) and the
//! request types' ToSchema derives (`schemas.rs`, `dead::ReplayBody`, `devices::CallBody`).
//!
//! Invariant: every `.route(...)` method of `v1.rs` has one row here, with the statuses it can
//! answer; an error answer is always the `ApiError` schema. `tests/it/openapi.rs` checks the
//! rows against the router's source and validates the document with openapi-spec-validator.

pub mod operations;
pub mod schemas;

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterBuilder};
use utoipa::openapi::path::{ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Required, ResponseBuilder};
use utoipa::OpenApi as _;

pub use operations::{Body, Op, OPERATIONS};

/// The name of the bearer API key scheme in the document.
pub const SECURITY_SCHEME: &str = "api_key";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "paynotify",
        description = "Durable merchant callbacks, browser push and device calls over Redis. \
            Every error answer is JSON `{\"code\", \"message\"[, \"field\"]}` with a stable code."
    ),
    components(schemas(
        schemas::ApiErrorBody,
        schemas::NotificationDocument,
        schemas::NewMerchant,
        schemas::MerchantPatch,
        schemas::MerchantSettings,
        schemas::RotateBody,
        schemas::ResultDocument,
        super::dead::ReplayBody,
        super::devices::CallBody,
        schemas::DeviceMessage,
    ))
)]
struct ApiDoc;

/// The whole document: [`ApiDoc`]'s info and schemas, the bearer scheme, one path per route.
pub fn document() -> OpenApi {
    let mut doc = ApiDoc::openapi();
    for op in OPERATIONS {
        let item = PathItem::new(op.method.clone(), operation(op));
        match doc.paths.paths.get_mut(op.path) {
            Some(existing) => existing.merge_operations(item),
            None => {
                doc.paths.paths.insert(op.path.to_string(), item);
            }
        }
    }
    let scheme = Http::builder()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some(
            "An API key from --api-key, sent as `Authorization: Bearer <key>`",
        ))
        .build();
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(SECURITY_SCHEME, SecurityScheme::Http(scheme));
    doc
}

/// The OpenAPI operation of one row.
fn operation(op: &Op) -> Operation {
    let mut b = OperationBuilder::new()
        .tag(op.tag)
        .summary(Some(op.summary))
        .operation_id(Some(operation_id(op)));
    for name in path_params(op.path) {
        let id = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(128))
            .pattern(Some("^[A-Za-z0-9._:-]+$"));
        b = b.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(id)),
        );
    }
    for (name, meaning) in op.query {
        let kind = if *name == "limit" {
            Type::Integer
        } else {
            Type::String
        };
        b = b.parameter(
            ParameterBuilder::new()
                .name(*name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(*meaning))
                .schema(Some(ObjectBuilder::new().schema_type(kind))),
        );
    }
    if let Body::Schema { name, required } = op.body {
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(name)))
            .build();
        let required = if required {
            Required::True
        } else {
            Required::False
        };
        b = b.request_body(Some(
            RequestBodyBuilder::new()
                .content("application/json", content)
                .required(Some(required))
                .build(),
        ));
    }
    for (status, meaning, fields) in op.ok {
        b = b.response(status.to_string(), success(*status, meaning, fields));
    }
    for (status, codes) in errors(op) {
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ApiError")))
            .build();
        let response = ResponseBuilder::new()
            .description(codes)
            .content("application/json", content);
        b = b.response(status.to_string(), response.build());
    }
    if op.secured {
        b = b.security(SecurityRequirement::new(
            SECURITY_SCHEME,
            Vec::<String>::new(),
        ));
    }
    b.build()
}

/// `post_v1_dead_id_replay` for `POST /v1/dead/{id}/replay`.
fn operation_id(op: &Op) -> String {
    let method = method_name(&op.method);
    let path: String = op
        .path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut id = format!("{method}_{path}");
    while id.contains("__") {
        id = id.replace("__", "_");
    }
    id.trim_end_matches('_').to_string()
}

/// The lower-case name of a method, as in a path item.
pub fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "get",
        HttpMethod::Post => "post",
        HttpMethod::Put => "put",
        HttpMethod::Delete => "delete",
        HttpMethod::Options => "options",
        HttpMethod::Head => "head",
        HttpMethod::Patch => "patch",
        HttpMethod::Trace => "trace",
    }
}

/// The `{name}` parameters of a path, in order.
pub fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .collect()
}

/// A success answer: JSON with the named fields (loose), or none for 204.
fn success(status: u16, meaning: &str, fields: &[&str]) -> RefOr<utoipa::openapi::Response> {
    let mut response = ResponseBuilder::new().description(meaning);
    if status != 204 {
        let mut object = ObjectBuilder::new().schema_type(Type::Object);
        let mut all_of = AllOfBuilder::new();
        for field in fields {
            match field.strip_prefix('#') {
                Some(component) => all_of = all_of.item(Ref::from_schema_name(component)),
                None => {
                    object = object.property(
                        *field,
                        ObjectBuilder::new().schema_type(SchemaType::AnyValue),
                    )
                }
            }
        }
        let schema = if fields.iter().any(|f| f.starts_with('#')) {
            Schema::AllOf(all_of.item(object).build())
        } else {
            Schema::Object(object.build())
        };
        response = response.content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        );
    }
    response.build().into()
}

/// The error statuses of a row with the implied ones (401, 503, 413) added, sorted.
pub fn errors(op: &Op) -> Vec<(u16, String)> {
    let mut out: Vec<(u16, String)> = op.errors.iter().map(|(s, c)| (*s, c.to_string())).collect();
    let mut implied = Vec::new();
    if op.secured {
        implied.push((401, "`unauthorized`: no or a wrong API key"));
        implied.push((503, "`unavailable` or `not_replicated`: Redis"));
    }
    if matches!(op.body, Body::Schema { .. }) {
        implied.push((413, "`too_large`: over 512 KiB"));
    }
    for (status, codes) in implied {
        if !out.iter().any(|(s, _)| *s == status) {
            out.push((status, codes.to_string()));
        }
    }
    out.sort_by_key(|(s, _)| *s);
    out
}

static DOCUMENT: LazyLock<OpenApi> = LazyLock::new(document);

/// `GET /openapi.json`.
pub async fn openapi_json() -> Json<&'static OpenApi> {
    Json(&DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json() -> Value {
        serde_json::to_value(document()).unwrap()
    }

    /// The property names of a component schema, through `allOf` and `$ref`s.
    fn properties(doc: &Value, name: &str) -> Vec<String> {
        fn walk(doc: &Value, schema: &Value, out: &mut Vec<String>) {
            if let Some(name) = schema["$ref"].as_str() {
                let name = name.trim_start_matches("#/components/schemas/");
                return walk(doc, &doc["components"]["schemas"][name], out);
            }
            if let Some(props) = schema["properties"].as_object() {
                out.extend(props.keys().cloned());
            }
            for item in schema["allOf"].as_array().into_iter().flatten() {
                walk(doc, item, out);
            }
        }
        let mut out = Vec::new();
        walk(doc, &doc["components"]["schemas"][name], &mut out);
        assert!(!out.is_empty(), "no schema {name}");
        out.sort();
        out
    }

    /// The field list of a parser's "unknown field; expected …" refusal.
    fn expected(message: &str, after: &str) -> Vec<String> {
        let list = &message[message.find(after).unwrap() + after.len()..];
        let mut out: Vec<String> = list.split(", ").map(str::to_string).collect();
        out.sort();
        out
    }

    #[test]
    fn request_schemas_name_exactly_the_fields_their_parsers_accept() {
        let doc = json();
        let e = crate::delivery::schema::parse(br#"{"zzz":1}"#, 0, || "g".into()).unwrap_err();
        assert_eq!(e.field(), Some("zzz"));
        let known = expected(&e.to_string(), "expected one of ");
        assert_eq!(properties(&doc, "NotificationDocument"), known);

        let new = br#"{"id":"m1","allowed_urls":["https://a.example/"],"zzz":1}"#;
        let e = crate::delivery::merchants::model::parse_new(new, 0).unwrap_err();
        let known = expected(&e.to_string(), "expected one of ");
        assert_eq!(properties(&doc, "NewMerchant"), known);
        let patch: Vec<String> = known.into_iter().filter(|f| f != "id").collect();
        assert_eq!(properties(&doc, "MerchantPatch"), patch);

        let e = crate::push::parse_result(Some("o1"), br#"{"status":"paid","zzz":1}"#).unwrap_err();
        let known = expected(&e.message, "expected ");
        assert_eq!(properties(&doc, "ResultDocument"), known);
    }

    #[test]
    fn every_body_and_error_refers_to_a_component_and_secured_routes_say_so() {
        let doc = json();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for op in OPERATIONS {
            if let Body::Schema { name, .. } = op.body {
                assert!(schemas.contains_key(name), "{name}");
            }
            let o = &doc["paths"][op.path][method_name(&op.method)];
            assert!(o.is_object(), "{} {}", op.path, method_name(&op.method));
            assert_eq!(o["security"].is_array(), op.secured, "{}", op.path);
            assert_eq!(o["responses"]["401"].is_object(), op.secured, "{}", op.path);
            for name in path_params(op.path) {
                let params = o["parameters"].as_array().unwrap();
                assert!(params
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == "path"));
            }
        }
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["securitySchemes"][SECURITY_SCHEME]["scheme"],
            "bearer"
        );
        assert_eq!(operation_id(&OPERATIONS[4]), "post_v1_dead_id_replay");
    }
}
