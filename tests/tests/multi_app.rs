//! A randomised multi-app run: 3 to 5 apps, each with its own fake APNs (some healthy with
//! latency, some flaky, one down until the end), agents serving different subsets of the
//! apps, broadcasts of random sizes submitted at random moments, and one agent killed at a
//! random moment (a replacement with the same apps joins).
//!
//! The checker asserts, from the jobs and the fakes' counters, that every accepted token is
//! delivered at least once or reported failed, that the counts balance, that the fakes saw
//! no more duplicates than were counted, and that healthy apps' jobs finish within a bound
//! of their clean time. The seed is printed; `MULTI_APP_SEED=<n>` replays a run (not a
//! `VOLLEY_*` name: those are configuration overrides).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use volley_config::Secret;
use volley_fake::{FakeConfig, FakeServer, Latency};
use volley_testkit::cluster::{Cluster, ClusterOptions};
use volley_testkit::http::FrontClient;
use volley_testkit::jobs::{assert_balanced, count, wait_for_job};
use volley_testkit::tokens::apns_tokens;

const JOB_LIMIT: Duration = Duration::from_secs(120);

/// A small deterministic generator (xorshift64*): the run is a function of its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How an app's provider behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Health {
    /// Answers everything, after a random latency.
    Healthy,
    /// Answers a share of requests 503 with `retry-after: 1`.
    Flaky,
    /// Answers everything 503 until the end of the run, then recovers.
    Down,
}

#[derive(Debug)]
struct App {
    name: String,
    key: String,
    health: Health,
    endpoint: String,
}

/// `ClusterOptions::tweak` is a plain `fn`: the apps reach it here.
static APPS: OnceLock<Vec<App>> = OnceLock::new();

fn add_apps(config: &mut volley_config::Config) {
    let template = config.apps[0].clone();
    for app in APPS.get().expect("apps set") {
        let mut config_app = template.clone();
        config_app.name = app.name.clone();
        config_app.api_keys = vec![Secret::new(app.key.clone())];
        config_app.fcm = None;
        let apns = config_app.apns.as_mut().expect("the demo app has APNs");
        apns.endpoint = app.endpoint.clone();
        apns.ca_file = None;
        config.apps.push(config_app);
    }
}

fn fake(health: Health, rng: &mut Rng) -> FakeConfig {
    let latency = Latency::Uniform {
        min: Duration::from_millis(rng.below(3)),
        max: Duration::from_millis(3 + rng.below(8)),
    };
    FakeConfig {
        tls: false,
        latency,
        transient_error_rate: match health {
            Health::Healthy => 0.0,
            Health::Flaky => 0.05,
            Health::Down => 1.0,
        },
        ..FakeConfig::apns()
    }
}

/// One submitted broadcast.
struct Submitted {
    app: usize,
    id: String,
    tokens: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_apps_agents_failures_and_a_killed_agent_lose_nothing() {
    let seed = std::env::var("MULTI_APP_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("seed {seed} (MULTI_APP_SEED={seed} replays this run)");
    let mut rng = Rng(seed);

    // 3 to 5 apps: the first healthy, one down, the rest healthy or flaky.
    let app_count = 3 + rng.below(3) as usize;
    let mut fakes = Vec::new();
    let mut apps = Vec::new();
    for index in 0..app_count {
        let health = match index {
            0 => Health::Healthy,
            1 => Health::Down,
            _ if rng.below(2) == 0 => Health::Healthy,
            _ => Health::Flaky,
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = fake(health, &mut rng);
        let server = FakeServer::start(config.clone(), listener).unwrap();
        apps.push(App {
            name: format!("app{index}"),
            key: format!("vk_multi_app_{index}_0123456789abcdef"),
            health,
            endpoint: server.endpoint(),
        });
        fakes.push((server, addr, config));
    }
    println!(
        "apps: {:?}",
        apps.iter().map(|a| (&a.name, a.health)).collect::<Vec<_>>()
    );
    APPS.set(apps).unwrap();
    let apps = APPS.get().unwrap();

    let mut cluster = Cluster::start(ClusterOptions {
        agents: 0,
        tweak: add_apps,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    // 3 agents, each serving a random non-empty subset; every app is served by at least one.
    let agent_count = 3;
    let mut subsets: Vec<Vec<usize>> = vec![Vec::new(); agent_count];
    for app in 0..app_count {
        subsets[rng.below(agent_count as u64) as usize].push(app);
        for subset in subsets.iter_mut() {
            if rng.below(3) == 0 && !subset.contains(&app) {
                subset.push(app);
            }
        }
    }
    for subset in subsets.iter_mut().filter(|subset| subset.is_empty()) {
        subset.push(0);
    }
    println!("agents serve: {subsets:?}");
    let serving = |subset: Vec<usize>| {
        move |config: &mut volley_config::Config| {
            let names: Vec<String> = subset.iter().map(|app| format!("app{app}")).collect();
            config.apps.retain(|app| names.contains(&app.name));
        }
    };
    for subset in &subsets {
        cluster.add_agent(serving(subset.clone())).unwrap();
    }
    cluster.wait_for_agents(agent_count).await.unwrap();

    // A clean rate, on the first (healthy) app alone.
    let clients: Vec<FrontClient> = apps
        .iter()
        .map(|app| FrontClient::new(cluster.front_url.clone(), Some(app.key.clone())))
        .collect();
    let clean_tokens = 10_000;
    let started = Instant::now();
    let id = post(&clients[0], &apps[0].name, "c1e1c1e1", clean_tokens).await;
    wait_for_job(&clients[0], &id, JOB_LIMIT).await.unwrap();
    let clean_rate = clean_tokens as f64 / started.elapsed().as_secs_f64();

    // Broadcasts at random moments; one agent killed at a random one.
    let jobs_count = 2 * app_count + rng.below(4) as usize;
    let kill_at = rng.below(jobs_count as u64) as usize;
    let victim = rng.below(agent_count as u64) as usize;
    let mut submitted = Vec::new();
    let mut total_tokens = 0;
    for job in 0..jobs_count {
        let app = rng.below(app_count as u64) as usize;
        let tokens = 1 + rng.below(15_000) as usize;
        let tag = format!("{:02x}{:06x}", app, job);
        let id = post(&clients[app], &apps[app].name, &tag, tokens).await;
        total_tokens += tokens;
        submitted.push(Submitted { app, id, tokens });
        if job == kill_at {
            println!("killing agent {victim} (serving {:?})", subsets[victim]);
            cluster.kill_agent(victim).unwrap();
            cluster.add_agent(serving(subsets[victim].clone())).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
    }

    // Healthy apps finish within a bound of their clean time: everything submitted
    // at the clean rate, twice over, plus a lease and a heartbeat timeout for the kill.
    let cluster_config = &cluster.config;
    let allowance = cluster_config.controller.lease_time
        + cluster_config.controller.heartbeat_timeout
        + Duration::from_secs(2);
    let bound = Duration::from_secs_f64(2.0 * total_tokens as f64 / clean_rate) + allowance;
    for job in submitted
        .iter()
        .filter(|job| apps[job.app].health != Health::Down)
    {
        let status = wait_for_job(&clients[job.app], &job.id, JOB_LIMIT)
            .await
            .unwrap();
        // From the job's own times: the jobs are waited for in turn, so the time this loop
        // reaches one says nothing about when it finished.
        let took = Duration::from_millis(
            count(&status, "finished_ms").saturating_sub(count(&status, "created_ms")),
        );
        // A flaky app's own retries wait for its provider's Retry-After: only the healthy
        // apps are held to the bound.
        assert!(
            apps[job.app].health == Health::Flaky || took <= bound,
            "seed {seed}: {} job of {} tokens took {took:?}, bound {bound:?}",
            apps[job.app].name,
            job.tokens
        );
        check(&status, job.tokens, seed);
    }
    // The down app recovers: its jobs finish too.
    for (index, app) in apps
        .iter()
        .enumerate()
        .filter(|(_, a)| a.health == Health::Down)
    {
        let (server, addr, config) = fakes.remove(index);
        let down = server.shutdown();
        assert_eq!(down.delivered, 0, "{}", app.name);
        let recovered = FakeServer::start(
            FakeConfig {
                transient_error_rate: 0.0,
                ..config.clone()
            },
            std::net::TcpListener::bind(addr).unwrap(),
        )
        .unwrap();
        fakes.insert(index, (recovered, addr, config));
    }
    for job in submitted
        .iter()
        .filter(|job| apps[job.app].health == Health::Down)
    {
        let status = wait_for_job(&clients[job.app], &job.id, JOB_LIMIT)
            .await
            .unwrap();
        check(&status, job.tokens, seed);
    }

    // From the fakes: every token reported delivered reached its app's fake, and no more
    // duplicates than counted.
    for (index, (server, _, _)) in fakes.into_iter().enumerate() {
        let stats = server.shutdown();
        let jobs: Vec<&Submitted> = submitted.iter().filter(|job| job.app == index).collect();
        let mut delivered = 0;
        let mut duplicates = 0;
        for job in &jobs {
            let status = clients[index]
                .get(&format!("/v1/jobs/{}", job.id))
                .await
                .unwrap()
                .body;
            delivered += count(&status, "delivered");
            duplicates += count(&status, "possible_duplicates");
        }
        let recovered_only = apps[index].health == Health::Down;
        assert!(
            stats.distinct_tokens >= delivered || recovered_only,
            "seed {seed}: app{index}: {} distinct tokens at the fake, {delivered} reported delivered",
            stats.distinct_tokens
        );
        assert!(
            stats.duplicate_tokens <= duplicates,
            "seed {seed}: app{index}: {} duplicates at the fake, {duplicates} counted",
            stats.duplicate_tokens
        );
    }
    cluster.shutdown().unwrap();
}

/// Every job balances; what is not delivered is reported failed (nothing left pending).
fn check(status: &Value, tokens: usize, seed: u64) {
    assert_eq!(
        count(status, "accepted"),
        tokens as u64,
        "seed {seed}: {status}"
    );
    assert_balanced(status);
}

async fn post(client: &FrontClient, app: &str, tag: &str, tokens: usize) -> String {
    let body = json!({"title": "t", "targets": {"apns": apns_tokens(tag, tokens)}});
    let response = client
        .post(&format!("/v1/apps/{app}/notifications"), body.to_string())
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    response.body["id"].as_str().unwrap().to_owned()
}
