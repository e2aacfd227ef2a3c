//! Volley across hosts on one machine: every role a real `volley` process in a network
//! namespace of its own, on a bridge (`volley_testkit::hosts`), with links cut between them.
//! Each test checks what the fault tests check (every accepted token delivered at least once,
//! counts balanced, no more duplicates at the fakes than counted) and that no namespace of the
//! run is left behind — also when the process that made them is killed.
//!
//! They need root (as CI runs them) and fail without it.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use volley_testkit::hosts::Hosts;
use volley_testkit::jobs::{broadcast, check_no_loss, finished, start_broadcast, wait_job};
use volley_testkit::procs::{metric_value, HostCluster, ProcCluster, WAIT};
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
    let cluster = HostCluster::new(2).start(BIN).unwrap();
    // Each agent registered with its own host's address: the controller dials it there.
    let controller = cluster.proc("controller");
    for agent in ["agent-0", "agent-1"] {
        let addr = cluster.ip(agent).to_string();
        let line = controller.line_with(&format!("\"name\":\"{agent}"), 0);
        assert!(line.contains(&format!("\"addr\":\"{addr}:")), "{line}");
    }
    let response = cluster
        .client()
        .post(
            "/v1/apps/shop/notifications",
            broadcast("1a1a1a1a", N as usize),
        )
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    let id = response.body["id"].as_str().unwrap().to_owned();
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    let duplicates = check_no_loss(&cluster, &status, N).await;
    assert_eq!(duplicates, 0, "{status}");
    cluster.stop();
    assert_nothing_left();
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
        .line_with("no renewal for a lease time", agent_lines);
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
    cluster.stop();
    assert_nothing_left();
}

/// Run only as the child of [`a_killed_run_leaves_no_namespace`]: makes hosts, says so, and
/// waits to be killed.
#[test]
#[ignore = "the child of a_killed_run_leaves_no_namespace"]
fn hosts_of_a_run_about_to_be_killed() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let hosts = Hosts::create(&["a", "b", "c"]).unwrap();
    println!("hosts ready: {}", hosts.subnet());
    // Blocks until the parent kills this process (it never writes to the pipe).
    let _ = std::io::stdin().read_line(&mut String::new());
    drop(hosts);
}

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
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let ready = stdout
        .lines()
        .map_while(Result::ok)
        .find(|line| line.starts_with("hosts ready"));
    assert!(ready.is_some(), "the child made no hosts");
    let pid = child.id();
    let made = Hosts::leftovers(pid);
    // A bridge, three hosts and the uplink.
    assert_eq!(made.len(), 5, "{made:?}");

    child.kill().unwrap();
    child.wait().unwrap();
    let start = std::time::Instant::now();
    wait_until_blocking(WAIT, "the killed run's namespaces to be gone", || {
        Hosts::leftovers(pid).is_empty()
    })
    .unwrap_or_else(|_| panic!("left behind: {:?}", Hosts::leftovers(pid)));
    eprintln!(
        "a killed run's namespaces were gone {:?} after the kill",
        start.elapsed()
    );
    assert_nothing_left();
}
