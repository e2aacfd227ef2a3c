//! The OpenAPI document: the one checked into `docs/openapi.json` is the one the code
//! generates, and the front serves it at `/openapi.json`.

mod support;

use std::path::PathBuf;

use support::*;

const UPDATE: &str = "UPDATE_OPENAPI=1 cargo test -p volley-front --test openapi";

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn docs_openapi_json_is_the_generated_document() {
    let generated = volley_front::openapi::document();
    let path = checked_in();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, generated).expect("docs/openapi.json is writable");
        return;
    }
    let on_disk = std::fs::read(&path).unwrap_or_default();
    if on_disk != generated.as_ref() {
        let first_difference = on_disk
            .split(|b| *b == b'\n')
            .zip(generated.split(|b| *b == b'\n'))
            .position(|(a, b)| a != b)
            .map_or_else(
                || "one is a prefix of the other".to_owned(),
                |line| format!("first difference at line {}", line + 1),
            );
        panic!(
            "docs/openapi.json differs from the OpenAPI document the code generates \
             ({first_difference}): the API changed without its document. Update it with \
             `{UPDATE}`, check docs/api.md says the same, and commit both"
        );
    }
}

#[tokio::test]
async fn the_front_serves_the_document_without_a_key() {
    let front = Front::start(config("")).await;
    let reply = front.get("/openapi.json", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text().as_bytes(),
        volley_front::openapi::document().as_ref()
    );
    let document = reply.json();
    assert_eq!(document["openapi"], "3.1.0");
}

/// Every word `docs/api.md` must have for the document: each operation (`METHOD path`), each
/// error code, and each field of a request body, so that the two say the same.
#[test]
fn docs_api_md_covers_the_document() {
    let api_md = std::fs::read_to_string(checked_in().with_file_name("api.md")).unwrap();
    let document: serde_json::Value =
        serde_json::from_slice(volley_front::openapi::document()).unwrap();
    let mut missing = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let operation = format!("{} {path}", method.to_uppercase());
            if !api_md.contains(&operation) {
                missing.push(operation);
            }
        }
    }
    for code in volley_front::Code::ALL {
        if !api_md.contains(&format!("`{}`", code.as_str())) {
            missing.push(format!("error code `{}`", code.as_str()));
        }
    }
    let schemas = &document["components"]["schemas"];
    let mut fields = Vec::new();
    collect_properties(&schemas["NotificationRequest"], &mut fields);
    collect_properties(&schemas["GorushNotification"], &mut fields);
    collect_properties(&schemas["GaurunNotification"], &mut fields);
    for field in fields {
        if !api_md.contains(&format!("`{field}`")) && !missing.contains(&field) {
            missing.push(format!("request field `{field}`"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/api.md does not mention what docs/openapi.json has: {missing:?}"
    );
}

/// The property names of `schema` and of the variants it is one of.
fn collect_properties(schema: &serde_json::Value, into: &mut Vec<String>) {
    if let Some(properties) = schema["properties"].as_object() {
        for name in properties.keys() {
            if !into.contains(name) {
                into.push(name.clone());
            }
        }
    }
    for variant in schema["oneOf"].as_array().into_iter().flatten() {
        collect_properties(variant, into);
    }
}
