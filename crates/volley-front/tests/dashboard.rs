//! The dashboard: its page and assets, its JSON, and who may read it on which listener.

mod support;

use hyper::http::Method;
use support::*;

const OPERATOR_KEY: &str = "operator-key-0123456789";

/// Every dashboard answer keeps the page to its own origin.
#[track_caller]
fn assert_locked_down(reply: &Reply) {
    let policy = reply.headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(reply.headers["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn the_ops_port_serves_the_page_and_its_assets_without_a_key() {
    let front = Front::start(config("")).await;
    let page = send(front.ops_addr, Method::GET, "/dashboard", None, "").await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_locked_down(&page);
    let html = page.text();
    for asset in [
        "/dashboard/app.js",
        "/dashboard/app.css",
        "/dashboard/uplot.min.js",
        "/dashboard/uplot.min.css",
    ] {
        assert!(html.contains(asset), "the page does not load {asset}");
        let reply = send(front.ops_addr, Method::GET, asset, None, "").await;
        assert_eq!(reply.status, 200, "{asset}");
        assert!(!reply.body.is_empty(), "{asset}");
        assert_locked_down(&reply);
    }
    // Nothing from elsewhere: no CDN, no web font.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    let license = send(
        front.ops_addr,
        Method::GET,
        "/dashboard/uplot/LICENSE",
        None,
        "",
    )
    .await;
    assert!(license.text().contains("MIT License"));
    // The ops port's own routes are still there.
    let metrics = send(front.ops_addr, Method::GET, "/metrics", None, "").await;
    assert_eq!(metrics.status, 200);
}

#[tokio::test]
async fn the_state_is_shaped_for_the_page_and_names_no_device() {
    let front = Front::start(config("")).await;
    let reply = send(front.ops_addr, Method::GET, "/dashboard/state", None, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert!(
        !reply.text().contains(DASHBOARD_SECRET_TOKEN),
        "{}",
        reply.text()
    );
    let state = reply.json();
    assert_eq!(state["now_ms"], 1_900_000_000_000u64);
    assert_eq!(state["totals"]["pending_notifications"], 42, "{state}");
    assert_eq!(state["totals"]["active_jobs"], 1, "{state}");
    assert_eq!(state["totals"]["agents"], 1, "{state}");
    assert_eq!(state["totals"]["queued_chunks"], 3, "{state}");
    assert!(state["controller"].is_object(), "{state}");

    let job = &state["jobs"][0];
    assert!(job["id"].is_string(), "{job}");
    assert_eq!(job["app"], "shop");
    assert_eq!(job["state"], "running");
    for (field, value) in [
        ("accepted", 1_000),
        ("delivered", 400),
        ("invalid", 10),
        ("failed", 5),
        ("cancelled", 0),
        ("pending", 585),
    ] {
        assert_eq!(job[field], value, "{field} in {job}");
    }
    assert_eq!(job["progress"], 0.415, "{job}");
    assert!(job.get("invalid_tokens").is_none(), "{job}");
    assert_eq!(
        job["failures"][0],
        serde_json::json!({"platform": "apns", "class": "transient",
            "reason": "ServiceUnavailable", "count": 5})
    );

    // Three cumulative samples a second apart: two rates.
    let rate = state["rate"].as_array().unwrap();
    assert_eq!(rate.len(), 2, "{state}");
    assert_eq!(rate[0]["delivered_per_second"], 100.0);
    assert_eq!(rate[1]["delivered_per_second"], 300.0);
    assert_eq!(rate[1]["at_ms"], 1_900_000_000_000u64);

    let agent = &state["agents"][0];
    assert_eq!(agent["name"], "agent-a");
    assert_eq!(agent["ops_addr"], "127.0.0.1:2");
    assert_eq!(agent["in_flight"], 2);
    assert_eq!(agent["chunks_done"], 10);
    assert_eq!(agent["paused"], serde_json::json!([]));

    let queue = &state["queues"][0];
    assert_eq!(queue["platform"], "fcm");
    assert_eq!(queue["waiting_for_agent"], true);
    assert_eq!(queue["notifications"], 7);
    assert!(state["outcomes"].is_array());
}

#[tokio::test]
async fn without_an_operator_key_the_api_listener_serves_the_page_but_not_the_data() {
    let front = Front::start(config("")).await;
    let page = front.get("/dashboard", None).await;
    assert_eq!(page.status, 200);
    assert_locked_down(&page);
    // Not even with an app's key: the data is for operators.
    let reply = front.get("/dashboard/state", Some(SHOP_KEY)).await;
    let message = reply.assert_error(404, "not_found", None);
    assert!(message.contains("front.ops_listen"), "{message}");
    assert!(message.contains("front.operator_key"), "{message}");
}

#[tokio::test]
async fn with_an_operator_key_the_api_listener_serves_the_data_to_its_holder() {
    let front = Front::start(config(&format!("operator_key = \"{OPERATOR_KEY}\""))).await;
    let reply = front.get("/dashboard/state", None).await;
    reply.assert_error(401, "unauthorized", None);
    for wrong in [
        SHOP_KEY,
        "operator-key-012345678",
        "operator-key-0123456789x",
    ] {
        let reply = front.get("/dashboard/state", Some(wrong)).await;
        let message = reply.assert_error(401, "unauthorized", None);
        assert!(!message.contains(wrong), "{message}");
    }
    let reply = front.get("/dashboard/state", Some(OPERATOR_KEY)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert_eq!(reply.json()["jobs"][0]["delivered"], 400);
    // The ops port needs no key either way.
    let open = send(front.ops_addr, Method::GET, "/dashboard/state", None, "").await;
    assert_eq!(open.status, 200);
}
