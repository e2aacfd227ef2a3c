//! Body errors speak JSON: no answer names one of the front's Rust types.

mod support;

use hyper::http::Method;
use support::*;

/// Words that would come from our types, not from the caller's JSON.
const INTERNAL: [&str; 10] = [
    "struct",
    "enum",
    "Request",
    "Notification",
    "PriorityInput",
    "elements",
    "sequence",
    "u32",
    "u64",
    "i64",
];

#[tokio::test]
async fn wrong_shapes_are_named_in_json_words() {
    let front = Front::start(config("")).await;
    let native = "/v1/apps/shop/notifications";
    for (path, body, expected) in [
        (native, "[]", "invalid type: array, expected a json object"),
        (native, "", "the body is empty: send a json object"),
        (native, " \n", "the body is empty: send a json object"),
        ("/api/push", "", "the body is empty: send a json object"),
        // serde reads an array into a struct by position: the first element is `targets`.
        (native, "[1, 2]", "expected an object"),
        (
            native,
            "1",
            "invalid type: integer `1`, expected a json object",
        ),
        (
            native,
            "\"hello\"",
            "invalid type: a string, expected a json object",
        ),
        (native, "null", "invalid type: null, expected a json object"),
        (
            native,
            r#"{"badge": "x"}"#,
            "expected a whole number, 0 or more",
        ),
        (
            native,
            r#"{"ttl": -1}"#,
            "expected a whole number, 0 or more",
        ),
        (
            native,
            r#"{"data": []}"#,
            "invalid type: array, expected an object",
        ),
        (
            native,
            r#"{"priority": [1]}"#,
            "none of the accepted shapes",
        ),
        (native, r#"{"content_available": 1}"#, "expected a boolean"),
        ("/api/push", "[]", "expected a json object"),
        (
            "/api/push",
            r#"{"notifications": {}}"#,
            "invalid type: object",
        ),
        (
            "/api/push",
            r#"{"notifications": [[]]}"#,
            "expected a json object",
        ),
        (
            "/api/push",
            r#"{"notifications": [{"platform": 1.5}]}"#,
            "expected a whole number",
        ),
        ("/push", "[]", "expected a json object"),
    ] {
        let reply = front
            .send(Method::POST, path, Some(SHOP_KEY), body.to_owned())
            .await;
        assert_eq!(reply.status, 400, "{path} {body}: {}", reply.text());
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(expected), "{path} {body}: {message}");
        for word in INTERNAL {
            assert!(!message.contains(word), "{path} {body}: {message}");
        }
    }
}
