//! Volley across hosts on one machine: every role a real `volley` process in a network
//! namespace of its own, on a bridge (`volley_testkit::hosts`), with links cut between them.
//! Each test checks what the fault tests check (every accepted token delivered at least once,
//! counts balanced, no more duplicates at the fakes than counted) and that no namespace of the
//! run is left behind — also when the process that made them is killed.
//!
//! They need root (as CI runs them) or, for any other user, unprivileged user namespaces: each
//! test then re-runs itself in user, network and mount namespaces of its own, as `unshare -Urnm`
//! makes them (`volley_testkit::needs_namespaces!`). Where neither is to be had they fail,
//! saying so.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use volley_testkit::hosts::{self, Hosts};
use volley_testkit::jobs::{
    broadcast, check_no_loss, check_no_loss_of, count, delivered_at_least, finished,
    start_broadcast, submit_broadcast, wait_job,
};
use volley_testkit::pg::fresh_database;
use volley_testkit::procs::{metric_value, HostCluster, ProcCluster, PROVIDERS, WAIT};
use volley_testkit::wait::{wait_until, wait_until_blocking};

const BIN: &str = env!("CARGO_BIN_EXE_volley");

/// Tokens per platform: 100,000 in all per test.
const N: u64 = 50_000;

/// One test at a time: each runs a whole cluster on two cores, and each checks at its end that
/// this process holds no namespace.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fakes answer in 20 ms so that a broadcast lasts long enough to cut a link in it.
const SLOW_FAKES: &[&str] = &["--latency", "20ms"];

/// Set in the child process of [`a_killed_run_leaves_no_namespace`].
const CHILD: &str = "VOLLEY_HOSTS_TEST_CHILD";

/// Stops every process of the cluster (each must exit cleanly), then checks that the run left
/// nothing: its namespaces and uplink are gone with it.
fn stop(cluster: ProcCluster) {
    cluster.stop();
    assert_nothing_left();
}

/// Asserts that this process holds no namespace or uplink any more.
fn assert_nothing_left() {
    let pid = std::process::id();
    wait_until_blocking(WAIT, "this run's namespaces to be gone", || {
        Hosts::leftovers(pid).is_empty()
    })
    .unwrap_or_else(|_| panic!("left behind: {:?}", Hosts::leftovers(pid)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_across_five_hosts_loses_nothing() {
    let _serial = SERIAL.lock().await;
    volley_testkit::needs_namespaces!();
    let cluster = HostCluster::new(2).start(BIN).unwrap();
    // Each agent registered with its own host's address: the controller dials it there.
    let controller = cluster.proc("controller");
    for agent in ["agent-0", "agent-1"] {
        let addr = cluster.ip(agent).to_string();
        let line = controller.line_with(&format!("\"name\":\"{agent}"), 0);
        assert!(line.contains(&format!("\"addr\":\"{addr}:")), "{line}");
    }
    let id = submit_broadcast(&cluster, "1a1a1a1a", N).await;
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    let duplicates = check_no_loss(&cluster, &status, N).await;
    assert_eq!(duplicates, 0, "{status}");
    stop(cluster);
}

/// The sum of every series of `name` in a Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The agent's answers from the providers so far, and its tokens in flight.
async fn agent_sends(cluster: &ProcCluster, agent: &str) -> (f64, f64) {
    let text = cluster
        .ops_client(agent)
        .get_text("/metrics")
        .await
        .unwrap();
    let answers = metric_sum(&text, "volley_agent_provider_responses_total");
    let in_flight = metric_value(&text, "volley_agent_tokens_in_flight").unwrap_or(0.0);
    (answers, in_flight)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_from_the_controller_stops_sending_and_its_chunks_go_elsewhere() {
    let _serial = SERIAL.lock().await;
    volley_testkit::needs_namespaces!();
    let cluster = HostCluster::new(2)
        .fake_args(SLOW_FAKES)
        .start(BIN)
        .unwrap();
    let id = start_broadcast(&cluster, "1b1b1b1b", N, N / 5).await;
    let agent_lines = cluster.proc("agent-0").line_count();
    let controller_lines = cluster.proc("controller").line_count();
    // The agent still reaches the providers (and the test process); only the controller is
    // out of its reach, and it out of the controller's.
    cluster.hosts().partition("agent-0", "controller").unwrap();

    // Its leases lapse unrenewed: it stops sending what it holds ("stopped sending the chunks
    // held", when some were still being sent; the chunks it finished meanwhile it cannot
    // report, and they go out again: the counted possible duplicates).
    cluster
        .proc("agent-0")
        .line_with("leases lapsed", agent_lines);
    // The controller drops it, and its chunks go to the other agent.
    cluster
        .proc("controller")
        .line_with("agent dropped", controller_lines);
    let stopped = std::sync::Mutex::new(0.0);
    wait_until(WAIT, "agent-0 to have no token in flight", || async {
        let (answers, in_flight) = agent_sends(&cluster, "agent-0").await;
        *stopped.lock().unwrap() = answers;
        in_flight == 0.0
    })
    .await
    .unwrap();
    let stopped = stopped.into_inner().unwrap();

    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    // Cut off, it sent nothing more while the job finished without it.
    let (answers, _) = agent_sends(&cluster, "agent-0").await;
    assert_eq!(answers, stopped, "agent-0 sent after its leases lapsed");
    let duplicates = check_no_loss(&cluster, &status, N).await;

    // Healed, it registers again.
    let healed_from = cluster.proc("agent-0").line_count();
    cluster
        .hosts()
        .unpartition("agent-0", "controller")
        .unwrap();
    cluster
        .proc("agent-0")
        .line_with("registered with the controller", healed_from);
    eprintln!(
        "agent cut from the controller: {duplicates} duplicates at the fakes (counted possible: \
         {})",
        status["possible_duplicates"]
    );
    stop(cluster);
}

/// The job's status through the current front (an error's body when it cannot answer).
async fn job(cluster: &ProcCluster, id: &str) -> Value {
    wait_job(cluster, id, "the job's status", |_| true).await
}

/// Waits until the job has delivered more than it had at `from`, and returns how long after
/// `from` that was: the time the job took to move again after a fault or a heal.
async fn moving_again(cluster: &ProcCluster, id: &str, from: Instant, delivered: u64) -> Duration {
    let status = wait_job(
        cluster,
        id,
        "the job to move again",
        delivered_at_least(delivered + 1),
    )
    .await;
    assert!(count(&status, "delivered") > delivered, "{status}");
    from.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_cut_from_the_controller_answers_503_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    volley_testkit::needs_namespaces!();
    let cluster = HostCluster::new(2)
        .fake_args(SLOW_FAKES)
        .start(BIN)
        .unwrap();
    let id = start_broadcast(&cluster, "1c1c1c1c", N, N / 5).await;
    cluster.hosts().partition("front-0", "controller").unwrap();

    // A new submission cannot be queued: the front says so, and when to try again.
    let cut = Instant::now();
    let response = cluster
        .client()
        .post("/v1/apps/shop/notifications", broadcast("1d1d1d1d", 1))
        .await
        .unwrap();
    let answered = cut.elapsed();
    assert_eq!(response.status.as_u16(), 503, "{}", response.body);
    // The link's silence is noticed (keepalive, TCP_USER_TIMEOUT: 10 s), well before the
    // front's 60 s submit deadline would answer it.
    assert!(
        answered < Duration::from_secs(45),
        "the 503 waited out the submit deadline: {answered:?}"
    );
    let retry_after = response
        .headers
        .get("retry-after")
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|seconds| seconds > 0),
        "503 without Retry-After: {:?}",
        response.headers
    );

    let healed = Instant::now();
    cluster
        .hosts()
        .unpartition("front-0", "controller")
        .unwrap();
    // The front reaches the controller again: the job's status comes back.
    wait_job(
        &cluster,
        &id,
        "the front to reach the controller",
        |status| status["id"].as_str() == Some(id.as_str()),
    )
    .await;
    let recovered = healed.elapsed();
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    let duplicates = check_no_loss(&cluster, &status, N).await;

    // And submissions are accepted again.
    let second = submit_broadcast(&cluster, "1e1e1e1e", 1).await;
    let second = wait_job(&cluster, &second, "the second job to finish", finished).await;
    assert_eq!(count(&second, "delivered"), 2, "{second}");
    eprintln!(
        "front cut from the controller: 503 with Retry-After: {retry_after:?} s answered \
         {answered:?} after the cut; status answered again {recovered:?} after the heal; \
         {duplicates} duplicates at the fakes (counted possible: {})",
        status["possible_duplicates"]
    );
    stop(cluster);
}

// The chunks agent-0 is sending when its link to the providers is cut are partly delivered:
// when its breakers open it hands back their unsent rest, which the other agents deliver. No
// notification fails for want of a provider that two agents still reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_cut_from_one_agent_open_its_breakers_and_the_others_carry_the_load() {
    let _serial = SERIAL.lock().await;
    volley_testkit::needs_namespaces!();
    let cluster = HostCluster::new(3)
        .fake_args(&["--latency", "50ms"])
        .start(BIN)
        .unwrap();
    let id = start_broadcast(&cluster, "1f1f1f1f", N, N / 10).await;
    let before = count(&job(&cluster, &id).await, "delivered");
    let cut = Instant::now();
    cluster.hosts().partition("agent-0", PROVIDERS).unwrap();

    // Fair dispatch holds: a second job of the same app, submitted now, takes its turn among
    // the broadcast's chunks (the scheduler's jobs take turns a chunk at a time) and is not
    // stuck on agent-0's dead link either: it finishes, delivered whole, while the broadcast
    // is still running.
    let small = submit_broadcast(&cluster, "2a2a2a2a", 1000).await;
    let small = wait_job(&cluster, &small, "the second job to finish", finished).await;
    assert_eq!(count(&small, "delivered"), 2000, "{small}");
    let meanwhile = job(&cluster, &id).await;
    assert!(
        !finished(&meanwhile),
        "the broadcast finished before the second job: {meanwhile}"
    );

    // agent-0's breakers open, for both providers: it stops taking their chunks.
    let ops = cluster.ops_client("agent-0");
    wait_until(WAIT, "agent-0's breakers to open", || async {
        let text = ops.get_text("/metrics").await.unwrap_or_default();
        ["apns", "fcm"].iter().all(|provider| {
            metric_value(
                &text,
                &format!(r#"volley_agent_breaker_state{{app="shop",provider="{provider}"}}"#),
            ) == Some(2.0)
        })
    })
    .await
    .unwrap();
    let opened = cut.elapsed();
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    let finished_after = cut.elapsed();
    assert_eq!(count(&status, "failed"), 0, "{status}");
    assert_eq!(count(&status, "delivered"), 2 * N, "{status}");
    let duplicates = check_no_loss_of(&cluster, &[(&status, N), (&small, 1000)]).await;
    // The others carried the load: they delivered what agent-0 could not.
    let (after_cut, _) = agent_sends(&cluster, "agent-0").await;
    eprintln!(
        "providers cut from agent-0 of 3: its breakers open {opened:?} after the cut; the job \
         ({before} delivered at the cut) finished {finished_after:?} after it; agent-0 \
         answered {after_cut} in all; {duplicates} duplicates at the fakes (counted possible: \
         {} + {})",
        status["possible_duplicates"], small["possible_duplicates"]
    );
    stop(cluster);
}

/// How long the controller's host stays cut: past the kit's lease time and heartbeat timeout
/// (2 s), so the agents stop their chunks and the controller drops them.
const CONTROLLER_CUT: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_host_cut_and_healed_and_everyone_reconnects() {
    let _serial = SERIAL.lock().await;
    volley_testkit::needs_namespaces!();
    let cluster = HostCluster::new(2)
        .fake_args(SLOW_FAKES)
        .start(BIN)
        .unwrap();
    let id = start_broadcast(&cluster, "2b2b2b2b", N, N / 5).await;
    let agent_lines: Vec<usize> = ["agent-0", "agent-1"]
        .iter()
        .map(|agent| cluster.proc(agent).line_count())
        .collect();
    cluster.hosts().cut("controller").unwrap();
    // Cut off, the agents' leases lapse: they stop sending and try to register again.
    for (agent, from) in ["agent-0", "agent-1"].iter().zip(&agent_lines) {
        cluster.proc(agent).line_with("leases lapsed", *from);
    }
    // The fault lasts a fixed time by design: the interval is the fault, not a wait.
    tokio::time::sleep(CONTROLLER_CUT).await;
    let before = count(&job(&cluster, &id).await, "delivered");
    let healed = Instant::now();
    cluster.hosts().heal("controller").unwrap();
    for (agent, from) in ["agent-0", "agent-1"].iter().zip(&agent_lines) {
        cluster
            .proc(agent)
            .line_with("registered with the controller", *from);
    }
    let registered = healed.elapsed();
    let moving = moving_again(&cluster, &id, healed, before).await;
    let ready = cluster.ops_client("front-0").get("/readyz").await.unwrap();
    assert_eq!(ready.status.as_u16(), 200, "{}", ready.body);
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    let duplicates = check_no_loss(&cluster, &status, N).await;
    eprintln!(
        "controller host cut for {CONTROLLER_CUT:?}: agents registered again {registered:?} \
         after the heal, the job moved again {moving:?} after it; {duplicates} duplicates at \
         the fakes (counted possible: {})",
        status["possible_duplicates"]
    );
    stop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leading_controller_host_cut_the_standby_takes_over_and_the_old_leader_is_fenced() {
    let _serial = SERIAL.lock().await;
    volley_testkit::needs_namespaces!();
    let url = fresh_database("hosts").await;
    let cluster = HostCluster::new(2)
        .postgres(&url, 2)
        .fake_args(SLOW_FAKES)
        .start(BIN)
        .unwrap();
    let id = start_broadcast(&cluster, "2c2c2c2c", N, N / 5).await;
    let standby_lines = cluster.proc("controller-1").line_count();
    let old_lines = cluster.proc("controller-0").line_count();
    let before = count(&job(&cluster, &id).await, "delivered");
    let cut = Instant::now();
    cluster.hosts().cut("controller-0").unwrap();

    // Past the failover timeout the standby on the other host takes over; agents and the
    // front find it, and the job moves again.
    let line = cluster
        .proc("controller-1")
        .line_with("this controller leads now", standby_lines);
    assert!(line.contains("term"), "{line}");
    let leads = cut.elapsed();
    let moving = moving_again(&cluster, &id, cut, before).await;

    // Healed, the old leader finds its term over and steps down.
    let healed = Instant::now();
    cluster.hosts().heal("controller-0").unwrap();
    let line = cluster
        .proc("controller-0")
        .line_with("stepping down", old_lines);
    assert!(line.contains("another controller"), "{line}");
    let fenced = healed.elapsed();
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    let duplicates = check_no_loss(&cluster, &status, N).await;
    eprintln!(
        "leading controller's host cut (PostgreSQL): the standby leads {leads:?} after the \
         cut, the job moves again {moving:?} after it; the old leader steps down {fenced:?} \
         after the heal; {duplicates} duplicates at the fakes (counted possible: {})",
        status["possible_duplicates"]
    );
    stop(cluster);
}

/// The flapping link: cut for this long, healed for as long, for [`FLAPPING`].
const FLAP: Duration = Duration::from_secs(3);
const FLAPPING: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_agent_link_loses_nothing() {
    let _serial = SERIAL.lock().await;
    volley_testkit::needs_namespaces!();
    // Fakes answering in 500 ms: two agents of 400 streams each take over a minute for the
    // broadcast, so the flapping covers it.
    let cluster = HostCluster::new(2)
        .fake_args(&["--latency", "500ms"])
        .start(BIN)
        .unwrap();
    let id = start_broadcast(&cluster, "2d2d2d2d", N, 1000).await;
    let start = Instant::now();
    let mut cuts = 0;
    // The fault's schedule is fixed time by design: each interval is the fault, not a wait.
    let mut ticks = tokio::time::interval(FLAP);
    ticks.tick().await;
    while start.elapsed() < FLAPPING {
        cluster.hosts().cut("agent-0").unwrap();
        cuts += 1;
        ticks.tick().await;
        cluster.hosts().heal("agent-0").unwrap();
        ticks.tick().await;
    }
    let status = job(&cluster, &id).await;
    assert!(
        !finished(&status),
        "the broadcast finished before the flapping ended: {status}"
    );
    let before = count(&status, "delivered");
    let healed = Instant::now();
    let moving = moving_again(&cluster, &id, healed, before).await;
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    let done = healed.elapsed();
    let duplicates = check_no_loss(&cluster, &status, N).await;
    eprintln!(
        "agent link flapping ({cuts} cuts of {FLAP:?} every {:?} for {FLAPPING:?}): the job \
         moved {moving:?} after the last heal and finished {done:?} after it; {duplicates} \
         duplicates at the fakes (counted possible: {})",
        2 * FLAP,
        status["possible_duplicates"]
    );
    stop(cluster);
}

/// Run only as the child of [`a_killed_run_leaves_no_namespace`]: makes hosts with a process on
/// one, says so, and waits to be killed.
#[test]
#[ignore = "the child of a_killed_run_leaves_no_namespace"]
fn hosts_of_a_run_about_to_be_killed() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    volley_testkit::needs_namespaces!();
    let hosts = Hosts::create(&["a", "b", "c"]).unwrap();
    // What runs on a host must go with it.
    let mut sleeper = hosts
        .command("a", "sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // And a directory the run's processes would use.
    let dir = tempfile::tempdir().unwrap();
    hosts.remove_on_exit(dir.path()).unwrap();
    println!("run directory: {}", dir.path().display());
    let pid = std::process::id();
    println!(
        "hosts ready: {} made by {pid}: {} namespaces and links, sleep {} on a",
        hosts.subnet(),
        Hosts::leftovers(pid).len(),
        sleeper.id()
    );
    // Blocks until the parent kills this process (it never writes to the pipe).
    let _ = std::io::stdin().read_line(&mut String::new());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    drop(hosts);
}

/// The numbers in a line, in order.
fn numbers(line: &str) -> Vec<u32> {
    line.split(|c: char| !c.is_ascii_digit())
        .filter_map(|word| word.parse().ok())
        .collect()
}

/// The child that makes hosts is killed: its namespaces and uplink are gone soon after, and the
/// process on its host and the run's directory too. As root they are in this machine's
/// namespaces; as another user the child runs its hosts in a grandchild in user namespaces of
/// its own, which must end with it, and everything in its namespaces.
#[test]
fn a_killed_run_leaves_no_namespace() {
    let _serial = SERIAL.blocking_lock();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hosts_of_a_run_about_to_be_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Read, and kept open until the child is killed: it may write more meanwhile.
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut dir = None;
    let ready = stdout
        .by_ref()
        .map_while(Result::ok)
        .find(|line| {
            if let Some(path) = line.strip_prefix("run directory: ") {
                dir = Some(std::path::PathBuf::from(path));
            }
            line.starts_with("hosts ready")
        })
        .expect("the child made no hosts");
    let dir = dir.expect("the child named no run directory");
    assert!(dir.is_dir(), "{dir:?}");
    // `hosts ready: 10.a.b.0/24 made by <pid>: <n> namespaces and links, sleep <pid> on a`
    let [.., maker, made, sleeper] = numbers(&ready)[..] else {
        panic!("{ready}");
    };
    // A bridge, three hosts and the uplink.
    assert_eq!(made, 5, "{ready}");
    assert!(hosts::running(sleeper), "{ready}");
    let own = maker != child.id();
    let user_ns = hosts::user_namespace(maker).unwrap();
    if own {
        // In namespaces of its own: none of it in this machine's.
        assert_ne!(
            Some(&user_ns),
            hosts::user_namespace(std::process::id()).as_ref()
        );
        assert_eq!(Hosts::leftovers(maker), Vec::<String>::new());
        assert!(hosts::processes_in(&user_ns).contains(&sleeper));
    } else {
        assert_eq!(Hosts::leftovers(maker).len(), 5, "{ready}");
    }

    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdout);
    let start = std::time::Instant::now();
    wait_until_blocking(WAIT, "the killed run's namespaces to be gone", || {
        Hosts::leftovers(maker).is_empty()
            && !hosts::running(sleeper)
            && (!own || hosts::processes_in(&user_ns).is_empty())
            && !dir.exists()
    })
    .unwrap_or_else(|_| {
        panic!(
            "left behind: {:?}; sleep {sleeper} running: {}; in its user namespace: {:?}; \
             run directory there: {}",
            Hosts::leftovers(maker),
            hosts::running(sleeper),
            own.then(|| hosts::processes_in(&user_ns)),
            dir.exists()
        )
    });
    eprintln!(
        "a killed run's namespaces were gone {:?} after the kill{}",
        start.elapsed(),
        if own {
            " (in user namespaces of its own: no process of them left)"
        } else {
            ""
        }
    );
    assert_nothing_left();
}
