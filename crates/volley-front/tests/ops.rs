//! Operations endpoints and draining.

mod support;

use volley_contracts::Links;

use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::http::Method;
use serde_json::json;
use support::*;
use volley_testkit::wait::wait_until;

/// How long a test waits for the front to get somewhere.
const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn health_readiness_and_stats() {
    let front = Front::start(config("")).await;
    assert_eq!(front.get("/healthz", None).await.status, 200);
    let ready = front.get("/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    let stat = front.get("/stat/app", None).await.json();
    assert_eq!(stat["queues"][0]["waiting_for_agent"], true);
    assert_eq!(
        stat["queues"][0]["waiting"],
        "waiting_for_agent: no agent serves app \"shop\" for fcm"
    );
    assert_eq!(stat["queue_usage"], 3);
    assert_eq!(stat["ios"], json!({"push_success": 100, "push_error": 2}));
    assert_eq!(
        stat["android"],
        json!({"push_success": 50, "push_error": 1})
    );
    assert_eq!(stat["workers"], 1);
    assert_eq!(stat["agents"][0]["name"], "agent-a");

    let runtime = front.get("/stat/runtime", None).await.json();
    assert!(runtime["tokio_workers"].as_u64().unwrap() >= 1, "{runtime}");
    assert!(runtime["tokio_alive_tasks"].is_u64(), "{runtime}");
    assert!(runtime["uptime_seconds"].is_u64(), "{runtime}");
    assert!(runtime["version"].is_string(), "{runtime}");
    assert!(runtime["rss_bytes"].as_u64().unwrap() > 0, "{runtime}");
}

#[tokio::test]
async fn gorush_and_gaurun_monitoring_endpoints_answer_in_their_shapes() {
    let front = Front::start(config("")).await;
    // gorush's /api/stat/app and gaurun's /stat/app: each client's keys, with their types.
    for path in ["/api/stat/app", "/stat/app"] {
        let stat = front.get(path, None).await.json();
        for key in [
            "busy_workers",
            "success_tasks",
            "failure_tasks",
            "submitted_tasks",
            "total_count",
            "queue_max",
            "queue_usage",
            "pusher_max",
            "pusher_count",
        ] {
            assert!(stat[key].is_u64(), "{path}: {key} in {stat}");
        }
        assert!(stat["version"].is_string(), "{stat}");
        for platform in ["ios", "android", "huawei"] {
            assert!(stat[platform]["push_success"].is_u64(), "{stat}");
            assert!(stat[platform]["push_error"].is_u64(), "{stat}");
        }
        assert_eq!(stat["success_tasks"], 150, "{stat}");
        assert_eq!(stat["failure_tasks"], 3, "{stat}");
    }
    // The Go runtime handler's shape, for both paths.
    for path in ["/api/stat/go", "/stat/go"] {
        let go = front.get(path, None).await.json();
        for key in [
            "time",
            "cpu_num",
            "goroutine_num",
            "gomaxprocs",
            "cgo_call_num",
            "memory_alloc",
            "memory_total_alloc",
            "memory_sys",
            "memory_lookups",
            "memory_mallocs",
            "memory_frees",
            "memory_stack",
            "heap_alloc",
            "heap_sys",
            "heap_idle",
            "heap_inuse",
            "heap_released",
            "heap_objects",
            "gc_next",
            "gc_last",
            "gc_num",
        ] {
            assert!(go[key].is_u64(), "{path}: {key} in {go}");
        }
        for key in ["go_version", "go_os", "go_arch"] {
            assert!(go[key].is_string(), "{path}: {key} in {go}");
        }
        assert!(go["gc_pause"].is_array(), "{go}");
        assert!(go["memory_sys"].as_u64().unwrap() > 0, "{go}");
    }
    // gorush's /sys/stats counts this front's answers by status.
    let sys = front.get("/sys/stats", None).await.json();
    assert_eq!(sys["pid"], std::process::id(), "{sys}");
    assert!(sys["total_count"].as_u64().unwrap() >= 4, "{sys}");
    assert!(
        sys["total_status_code_count"]["200"].as_u64().unwrap() >= 4,
        "{sys}"
    );
    for key in [
        "uptime",
        "total_response_time",
        "average_response_time",
        "time",
    ] {
        assert!(sys[key].is_string(), "{key} in {sys}");
    }
    for key in [
        "uptime_sec",
        "total_response_time_sec",
        "average_response_time_sec",
    ] {
        assert!(sys[key].is_f64(), "{key} in {sys}");
    }
    // gorush's /api/config: YAML in gorush's sections, no secret.
    let reply = front.get("/api/config", None).await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    for line in [
        "core:\n",
        "  enabled: true\n",
        "api:\n",
        "  push_uri: \"/api/push\"\n",
        "android:\n",
        "ios:\n",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    for key in [SHOP_KEY, NEWS_KEY, IOS_KEY] {
        assert!(!text.contains(key), "{text}");
    }
}

#[tokio::test]
async fn the_config_endpoint_redacts_api_keys() {
    let front = Front::start(config("")).await;
    let reply = front.get("/config/app", None).await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    for key in [SHOP_KEY, NEWS_KEY, IOS_KEY] {
        assert!(!text.contains(key), "{text}");
    }
    let config = reply.json();
    assert_eq!(config["apps"][0]["api_keys"], json!(["<redacted>"]));
    assert_eq!(config["front"]["default_app"], "shop");
}

#[tokio::test]
async fn metrics_count_requests_rejections_and_accepted_notifications() {
    let front = Front::start(config("")).await;
    let ok = json!({"targets": {"fcm": [fcm_token(1), fcm_token(2)]}, "body": "x"});
    assert_eq!(
        front
            .post("/v1/apps/shop/notifications", Some(SHOP_KEY), &ok)
            .await
            .status,
        202
    );
    front
        .post(
            "/v1/apps/shop/notifications",
            Some(SHOP_KEY),
            &json!({"targets": {"fcm": ["bad token"]}}),
        )
        .await;
    let text = front.get("/metrics", None).await.text();
    for line in [
        "volley_front_requests_total{route=\"notifications\",status=\"202\"} 1",
        "volley_front_requests_total{route=\"notifications\",status=\"422\"} 1",
        "volley_front_rejected_total{reason=\"invalid_token\"} 1",
        "volley_front_accepted_notifications_total{app=\"shop\",platform=\"fcm\"} 2",
        "volley_front_request_duration_seconds_count{route=\"notifications\"} 2",
        "# TYPE process_cpu_seconds_total counter",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    // The controller's metrics are on its own ops port: a sum over the fronts would count
    // them once per front.
    assert!(!text.contains("volley_queue_depth_chunks"), "{text}");

    // The ops port serves the same metrics, and the probes, without a key.
    let ops = front.ops_addr;
    let metrics = send(ops, Method::GET, "/metrics", None, "").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .contains("volley_front_requests_total{route=\"notifications\",status=\"202\"} 1"),
        "{}",
        metrics.text()
    );
    let health = send(ops, Method::GET, "/healthz", None, "").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["role"], "front");
    let ready = send(ops, Method::GET, "/readyz", None, "").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["status"], "ready");
    let missing = send(ops, Method::GET, "/v1/apps/shop/notifications", None, "").await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn a_draining_front_finishes_requests_in_flight_then_stops() {
    let mut front = Front::start(config("shutdown_grace = \"30s\"")).await;
    let addr = front.addr;
    let body = serde_json::to_vec(&json!({"targets": {"fcm": [fcm_token(1)]}})).unwrap();
    // The fake controller holds this submission until released.
    let in_flight = tokio::spawn(send_with_header(
        addr,
        "/v1/apps/shop/notifications",
        SHOP_KEY,
        ("idempotency-key", "hold"),
        body,
    ));
    let shared = front.controller.shared.clone();
    wait_until(WAIT, "the request to be held", || {
        std::future::ready(shared.holding.load(Ordering::SeqCst))
    })
    .await
    .unwrap();

    front.shutdown();
    // Wait until the listener is closed: the drain has begun while the request is held.
    wait_until(WAIT, "the listener to close", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await
    .unwrap();
    assert!(!front.task.is_finished());

    shared.release.notify_one();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 202, "{}", reply.text());
    let stopped = tokio::time::timeout(Duration::from_secs(10), &mut front.task)
        .await
        .expect("the front stops once the request in flight is answered")
        .unwrap();
    assert!(stopped.is_ok(), "{stopped:?}");
}

#[tokio::test]
async fn draining_state_answers_503_with_retry_after() {
    // Drive the router directly to see what a request that arrives mid-drain gets.
    let controller = FakeController::default();
    let addr = serve_controller(controller).await;
    let client = volley_contracts::connect_controller(addr, &Links::Insecure)
        .await
        .unwrap();
    let state = volley_front::FrontState::new(config(""), client, Links::Insecure).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    tokio::spawn(axum_serve(listener, volley_front::router(state.clone())));

    state.start_draining();
    let reply = send(
        front,
        Method::POST,
        "/v1/apps/shop/notifications",
        Some(SHOP_KEY),
        "{}",
    )
    .await;
    reply.assert_error(503, "unavailable", None);
    assert_eq!(reply.headers["retry-after"], "5");
    assert_eq!(
        send(front, Method::GET, "/readyz", None, "").await.status,
        503
    );
    assert_eq!(
        send(front, Method::GET, "/healthz", None, "").await.status,
        200
    );
}

async fn axum_serve(listener: tokio::net::TcpListener, router: axum::Router) {
    axum::serve(listener, router).await.unwrap();
}

#[tokio::test]
async fn the_front_reconnects_after_the_controller_restarts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let controller_addr = listener.local_addr().unwrap();
    let first = tokio::spawn(serve_controller_on(listener, FakeController::default()));
    let mut config = config("");
    config.front.controller = controller_addr.to_string();
    let client = volley_contracts::connect_controller(controller_addr, &Links::Insecure)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    tokio::spawn(volley_front::run(
        config,
        listener,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        client,
        Links::Insecure,
        futures::future::pending(),
    ));
    let body = serde_json::to_vec(&json!({"targets": {"fcm": [fcm_token(1)]}})).unwrap();
    let submit = || {
        send(
            front,
            Method::POST,
            "/v1/apps/shop/notifications",
            Some(SHOP_KEY),
            body.clone(),
        )
    };
    assert_eq!(submit().await.status, 202);

    first.abort();
    let _ = first.await;
    wait_until(WAIT, "the front to be unready", || async {
        send(front, Method::GET, "/readyz", None, "").await.status == 503
    })
    .await
    .unwrap();
    let reply = submit().await;
    reply.assert_error(503, "unavailable", None);
    assert_eq!(reply.headers["retry-after"], "5");

    let second = FakeController::default();
    let listener = tokio::net::TcpListener::bind(controller_addr)
        .await
        .unwrap();
    tokio::spawn(serve_controller_on(listener, second.clone()));
    wait_until(WAIT, "a submission through the new controller", || async {
        submit().await.status == 202
    })
    .await
    .unwrap();
    assert_eq!(second.shared.submitted.lock().unwrap().len(), 1);
}
