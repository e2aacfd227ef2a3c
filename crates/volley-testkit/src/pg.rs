//! The throwaway PostgreSQL that `scripts/test` starts for the tests of the controller's
//! PostgreSQL store.
//!
//! `scripts/test` exports two variables (not `VOLLEY_*` ones: volley processes read those as
//! configuration):
//!
//! - `POSTGRES_TEST_URL`: a superuser's URL of the server, e.g.
//!   `postgres://postgres@127.0.0.1:PORT/postgres`;
//! - `POSTGRES_TEST_CTL`: a script that takes `stop`, `start` or `restart` and runs `pg_ctl` on
//!   that server, waiting until it is done.
//!
//! A test takes its own database with [`fresh_database`], so that tests running in parallel on
//! the one server never see each other's tables. Without the variables the helpers panic: a
//! test that needs PostgreSQL never skips silently.
//!
//! [`restart_postgres`] and [`stop_postgres`] act on the whole server, under every test that
//! uses it at that moment: the other tests of the same binary, and under a runner that runs
//! binaries in parallel (nextest; `cargo test` runs one at a time) those of other binaries. A
//! test that uses the server must tolerate a restart (reconnect, retry), as the controller's
//! store must.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// The variable holding the server's URL.
pub const URL_VAR: &str = "POSTGRES_TEST_URL";

/// The variable holding the path of the script that stops, starts and restarts the server.
pub const CTL_VAR: &str = "POSTGRES_TEST_CTL";

/// How long [`fresh_database`] retries while the server is unreachable (another test may be
/// restarting it).
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(60);

/// The variable holding the CA certificate that signs the test server's TLS certificate.
pub const CA_VAR: &str = "POSTGRES_TEST_CA";

/// The CA certificate file of the test server's TLS certificate (`POSTGRES_TEST_CA`), when the
/// server speaks TLS (`scripts/test` makes it so).
pub fn postgres_ca() -> Option<String> {
    std::env::var(CA_VAR)
        .ok()
        .filter(|ca| !ca.trim().is_empty())
}

/// The URL of the test server, from `POSTGRES_TEST_URL`.
///
/// # Panics
///
/// When `POSTGRES_TEST_URL` is not set: the tests are run without `scripts/test`.
pub fn postgres_url() -> String {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{URL_VAR} is not set: run the tests with scripts/test, which starts a throwaway \
             PostgreSQL"
        ),
    }
}

/// The socket address of the test server (`POSTGRES_TEST_URL`'s first host, resolved here, and
/// port), when the variable is set and names a TCP host.
pub fn server_addr() -> Option<SocketAddr> {
    let url = std::env::var(URL_VAR).ok()?;
    tcp_addr(&url).ok()
}

/// The first host `url` names (an address or a name) and its port (5432 when it names none).
pub fn tcp_host(url: &str) -> anyhow::Result<(String, u16)> {
    let config: tokio_postgres::Config = url.parse()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => anyhow::bail!("the PostgreSQL URL names no TCP host: {url}"),
    };
    Ok((host, config.get_ports().first().copied().unwrap_or(5432)))
}

/// The socket address of the server of `url`: [`tcp_host`], its name resolved here.
pub fn tcp_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let (host, port) = tcp_host(url)?;
    (host.as_str(), port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} resolves to no address"))
}

/// Connects to `url` without TLS and drives the connection on a task of the current runtime.
///
/// # Panics
///
/// Outside a tokio runtime.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away; the client's next query
        // reports the latter.
        let _ = connection.await;
    });
    Ok(client)
}

/// Creates a new, empty database on the test server and returns its URL: the server's URL
/// (same user, host and port) with the new database's name.
///
/// The name is `prefix` (lowercased, anything but `[a-z0-9_]` replaced with `_`), `_` and 12
/// random hex digits, so every call gets its own database. Retries for up to a minute while
/// the server cannot be reached (another test may be restarting it).
///
/// # Panics
///
/// When `POSTGRES_TEST_URL` is not set, or the database cannot be created.
pub async fn fresh_database(prefix: &str) -> String {
    let server = postgres_url();
    let deadline = Instant::now() + UNREACHABLE_LIMIT;
    loop {
        let name = database_name(prefix);
        let result = async {
            let client = connect(&server).await?;
            client
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .await
        }
        .await;
        match result {
            Ok(()) => return with_database(&server, &name),
            Err(error) if is_transient(&error) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("creating the database {name} on {server}: {error:?}"),
        }
    }
}

/// Restarts the test server (`$POSTGRES_TEST_CTL restart`: `pg_ctl restart -m fast -w`):
/// every open connection is closed; new ones are accepted when this returns.
///
/// Blocks the calling thread until `pg_ctl` is done; from async code, call it through
/// `tokio::task::spawn_blocking` when other tasks of the runtime must run meanwhile.
///
/// # Panics
///
/// When `POSTGRES_TEST_CTL` is not set or the restart fails (with `pg_ctl`'s output).
pub fn restart_postgres() {
    control("restart");
}

/// Stops the test server (`$POSTGRES_TEST_CTL stop`: `pg_ctl stop -m fast -w`): every open
/// connection is closed, and new ones are refused until [`start_postgres`].
///
/// Blocks the calling thread, like [`restart_postgres`].
///
/// # Panics
///
/// When `POSTGRES_TEST_CTL` is not set or the stop fails (with `pg_ctl`'s output).
pub fn stop_postgres() {
    control("stop");
}

/// Starts the test server again after [`stop_postgres`] (`$POSTGRES_TEST_CTL start`:
/// `pg_ctl start -w`): it accepts connections when this returns.
///
/// Blocks the calling thread, like [`restart_postgres`].
///
/// # Panics
///
/// When `POSTGRES_TEST_CTL` is not set or the start fails (with `pg_ctl`'s output).
pub fn start_postgres() {
    control("start");
}

/// Runs `$POSTGRES_TEST_CTL action`, panicking with its output when it fails.
fn control(action: &str) {
    let ctl = match std::env::var(CTL_VAR) {
        Ok(ctl) if !ctl.trim().is_empty() => ctl,
        _ => panic!(
            "{CTL_VAR} is not set, so the test cannot {action} PostgreSQL: run the tests with \
             scripts/test, which starts a throwaway PostgreSQL and sets it (a server given \
             through {URL_VAR} comes without it)"
        ),
    };
    let output = Command::new(&ctl)
        .arg(action)
        .output()
        .unwrap_or_else(|error| panic!("running {ctl} {action}: {error}"));
    if !output.status.success() {
        panic!(
            "{ctl} {action} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A new database name: the sanitised prefix, `_`, 12 random hex digits.
fn database_name(prefix: &str) -> String {
    let mut name: String = prefix
        .chars()
        .take(40)
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        name.insert_str(0, "db_");
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{name}_{}", &id[..12])
}

/// `url` with its database replaced by `name`; `url` is a `postgres://` or `postgresql://`
/// URL, or a libpq `key=value` string.
fn with_database(url: &str, name: &str) -> String {
    let Some(scheme_end) = ["postgres://", "postgresql://"]
        .iter()
        .find(|scheme| url.starts_with(*scheme))
        .map(|scheme| scheme.len())
    else {
        return format!("{url} dbname={name}");
    };
    let (base, query) = match url.find('?') {
        Some(at) => (&url[..at], &url[at..]),
        None => (url, ""),
    };
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |at| scheme_end + at);
    format!("{}/{name}{query}", &base[..authority_end])
}

/// Whether `error` may pass once the server is back: it cannot be reached, or is starting or
/// shutting down.
fn is_transient(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        None => true,
        Some(db) => [
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
        ]
        .contains(db.code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_name_is_a_fresh_lowercase_identifier() {
        let name = database_name("Store-Tests");
        assert!(name.starts_with("store_tests_"), "{name}");
        assert_eq!(name.len(), "store_tests_".len() + 12);
        assert_ne!(database_name("store"), database_name("store"));
        assert!(database_name("1x").starts_with("db_1x_"));
        assert!(database_name(&"a".repeat(100)).len() <= 63);
    }

    #[test]
    fn the_url_gets_the_new_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t_1"),
            "postgres://postgres@127.0.0.1:5432/t_1"
        );
        assert_eq!(
            with_database("postgresql://u:p@h:1?sslmode=disable", "t_1"),
            "postgresql://u:p@h:1/t_1?sslmode=disable"
        );
        assert_eq!(
            with_database("host=h user=u dbname=postgres", "t_1"),
            "host=h user=u dbname=postgres dbname=t_1"
        );
    }
}
