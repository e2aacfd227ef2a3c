//! The dashboard in a real browser: an in-process cluster against slowed fakes, a broadcast,
//! and headless Chromium (driven through chromedriver over WebDriver) reading the live page
//! as an operator would: the job appears, its progress advances, the chart has points. A
//! screenshot of the broadcast in progress is kept in `target/artifacts/dashboard.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver`: `scripts/test` installs them when missing
//! and exports `CHROME` and `CHROMEDRIVER`. Without them this test fails (it does not skip):
//! a dashboard nobody checked in a browser is not known to work.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use volley_config::Secret;
use volley_fake::{FakeConfig, Latency};
use volley_testkit::cluster::{Cluster, ClusterOptions};
use volley_testkit::http::FrontClient;
use volley_testkit::jobs::submit;
use volley_testkit::tokens::{apns_tokens, fcm_tokens};
use volley_testkit::wait::wait_until;

/// Opens the dashboard's data on the API listener (`front.operator_key`).
const OPERATOR_KEY: &str = "dashboard-operator-key-0123456789";
/// How long the page may take to show something the cluster did.
const WAIT: Duration = Duration::from_secs(30);

/// Where the test's artifacts go: `target/artifacts` of the workspace.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts");
    std::fs::create_dir_all(&dir).expect("target/artifacts can be created");
    dir
}

/// `env`'s value, else the first of `names` on the PATH, else the first of `paths` that
/// exists.
fn find_program(env: &str, names: &[&str], paths: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .chain(paths.iter().map(PathBuf::from))
        .find(|path| path.is_file())
}

fn required(env: &str, names: &[&str], paths: &[&str], package: &str) -> PathBuf {
    find_program(env, names, paths).unwrap_or_else(|| {
        panic!(
            "{} not found (nor ${env}): the dashboard's browser test needs Debian's `{package}`; \
             run scripts/test, which installs it, or set {env} to the program",
            names[0]
        )
    })
}

/// A chromedriver this test started, in a process group of its own: dropping it (at the end
/// or in a panic) kills the group, so no browser outlives the test.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let program = required(
            "CHROMEDRIVER",
            &["chromedriver"],
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
            "chromium-driver",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let log = artifacts().join("chromedriver.log");
        let child = {
            use std::os::unix::process::CommandExt as _;
            Command::new(&program)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
        };
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        wait_until(
            Duration::from_secs(20),
            "chromedriver to listen",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e} (its log: {})", log.display()));
        driver
    }

    /// A headless Chromium session.
    async fn browser(&self) -> Client {
        let chrome = required(
            "CHROME",
            &["chromium", "chromium-browser"],
            &["/usr/bin/chromium"],
            "chromium",
        );
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chrome,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--window-size=1440,1200",
                ],
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver could not start {}: {e}", chrome.display()))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the page shows of one job, read from the live DOM.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    state: String,
    delivered: u64,
    pending: u64,
    progress: f64,
}

/// The job's row on the page, if it is there.
async fn row(browser: &Client, id: &str) -> Option<Row> {
    let found: Value = browser
        .execute(
            r#"
            const row = document.querySelector(`tr[data-job-id="${arguments[0]}"]`);
            if (!row) return null;
            const cell = (name) => Number(row.querySelector(`td.${name}`).dataset.value);
            return {
                state: row.dataset.state,
                delivered: cell("delivered"),
                pending: cell("pending"),
                progress: Number(row.dataset.progress),
                bar: row.querySelector(".bar .fill").style.width,
            };
            "#,
            vec![json!(id)],
        )
        .await
        .expect("the page runs scripts");
    if found.is_null() {
        return None;
    }
    assert!(
        found["bar"].as_str().is_some_and(|w| w.ends_with('%')),
        "the progress bar has no width: {found}"
    );
    Some(Row {
        state: found["state"].as_str().unwrap_or_default().to_owned(),
        delivered: found["delivered"].as_u64().unwrap_or(0),
        pending: found["pending"].as_u64().unwrap_or(0),
        progress: found["progress"].as_f64().unwrap_or(0.0),
    })
}

/// Waits for the job's row to satisfy `check`; returns it.
async fn wait_for_row(browser: &Client, id: &str, what: &str, check: impl Fn(&Row) -> bool) -> Row {
    let last = std::sync::Mutex::new(None);
    let waited = wait_until(WAIT, what, || async {
        let seen = row(browser, id).await;
        let holds = seen.as_ref().is_some_and(&check);
        *last.lock().unwrap() = seen;
        holds
    })
    .await;
    let last = last.into_inner().unwrap();
    if let Err(error) = waited {
        panic!("{error}; the row: {last:?}");
    }
    last.expect("the row was read")
}

/// The chart's plotted points, as its container says.
async fn chart_points(browser: &Client) -> u64 {
    let chart = browser
        .find(Locator::Id("rate-chart"))
        .await
        .expect("the page has its chart");
    chart
        .attr("data-points")
        .await
        .expect("the chart's attributes can be read")
        .and_then(|points| points.parse().ok())
        .unwrap_or(0)
}

/// The connection indicator: `live`, or `error` with the front's message.
async fn connection(browser: &Client) -> (String, String) {
    let node = browser
        .find(Locator::Id("connection"))
        .await
        .expect("the page has its connection indicator");
    let state = node.attr("data-state").await.unwrap().unwrap_or_default();
    (state, node.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_broadcast_live_in_a_browser() {
    // Slowed fakes and few requests in flight: the broadcast takes several seconds (about
    // 400 notifications a second), long enough to watch it move.
    let slow = Latency::Fixed(Duration::from_millis(100));
    let cluster = Cluster::start(ClusterOptions {
        agents: 2,
        fake_apns: FakeConfig {
            latency: slow.clone(),
            ..FakeConfig::apns()
        },
        fake_fcm: FakeConfig {
            latency: slow,
            ..FakeConfig::fcm()
        },
        tweak: |config| {
            // Small chunks: outcomes reach the controller (and the chart) often.
            config.controller.chunk_size = 50;
            config.agent.concurrency = 10;
            config.front.operator_key = Some(Secret::new(OPERATOR_KEY));
        },
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let driver = Driver::start().await;
    let browser = driver.browser().await;

    // The ops port: no key.
    browser
        .goto(&format!("{}/dashboard", cluster.front_ops_url))
        .await
        .unwrap();
    wait_until(WAIT, "the page to reach its data", || async {
        connection(&browser).await.0 == "live"
    })
    .await
    .unwrap_or_else(|e| {
        panic!("{e}; the browser's driver logs to target/artifacts/chromedriver.log")
    });

    let body = json!({
        "title": "dashboard test",
        "targets": {
            "apns": apns_tokens("da5b0a7d", 4_000),
            "fcm": fcm_tokens("da5b0a7d", 4_000),
        },
    });
    let client = cluster.client();
    let id = submit(&client, body.to_string()).await.unwrap();

    let first = wait_for_row(&browser, &id, "the job's row with some delivered", |row| {
        row.delivered > 0 && row.pending > 0
    })
    .await;
    let later = wait_for_row(&browser, &id, "the job's progress to advance", |row| {
        row.delivered > first.delivered && row.progress > first.progress
    })
    .await;
    assert!(later.progress <= 1.0, "{later:?}");
    wait_until(WAIT, "the chart to plot more than one point", || async {
        chart_points(&browser).await > 1
    })
    .await
    .unwrap();
    browser
        .find(Locator::Css("#rate-chart canvas"))
        .await
        .expect("uPlot drew its canvas");

    // Mid-broadcast: the row still says so when the picture is taken.
    let now = row(&browser, &id).await.expect("the row is still there");
    assert!(
        matches!(now.state.as_str(), "queued" | "running") && now.pending > 0,
        "the broadcast ended before the screenshot; slow the fakes further: {now:?}"
    );
    let png = browser.screenshot().await.expect("a screenshot");
    let path = artifacts().join("dashboard.png");
    std::fs::write(&path, png).expect("the screenshot can be saved");
    eprintln!(
        "screenshot of the broadcast in progress: {}",
        path.display()
    );

    // The API listener: the page, but its data only with the operator key.
    let anonymous = FrontClient::new(cluster.front_url.clone(), None);
    let refused = anonymous.get("/dashboard/state").await.unwrap();
    assert_eq!(refused.status.as_u16(), 401, "{}", refused.body);
    browser
        .goto(&format!("{}/dashboard", cluster.front_url))
        .await
        .unwrap();
    wait_until(WAIT, "the page to say its data needs a key", || async {
        let (state, text) = connection(&browser).await;
        state == "error" && text.contains("401")
    })
    .await
    .unwrap();
    browser
        .goto(&format!(
            "{}/dashboard#key={OPERATOR_KEY}",
            cluster.front_url
        ))
        .await
        .unwrap();
    wait_for_row(&browser, &id, "the job's row on the API listener", |_| true).await;
    assert_eq!(connection(&browser).await.0, "live");

    let cancelled = client
        .request(http::Method::DELETE, &format!("/v1/jobs/{id}"), None)
        .await
        .unwrap();
    assert!(cancelled.status.is_success(), "{}", cancelled.body);
    browser.close().await.unwrap();
    drop(driver);
    tokio::task::spawn_blocking(move || cluster.shutdown())
        .await
        .unwrap()
        .unwrap();
}
