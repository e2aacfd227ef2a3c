//! The tests that make hosts, run by a user other than root: each re-runs itself in user,
//! network and mount namespaces of its own, as `unshare -Urnm` makes them; see
//! [`in_namespaces`].

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::ip;
use crate::relay::{Endpoint, Relay};
use crate::wait::wait_until_blocking;

/// Set in the child that runs a test in namespaces of its own: the test's name. (None of these
/// variables is a `VOLLEY_*` one: volley processes read those as configuration.)
const TEST_VAR: &str = "TESTKIT_NS_TEST";
/// A directory private to the child's run (its hosts' lock; the PostgreSQL socket).
const DIR_VAR: &str = "TESTKIT_NS_DIR";
/// The test PostgreSQL server's address, which the child serves on its own loopback...
const POSTGRES_ADDR_VAR: &str = "TESTKIT_NS_POSTGRES_ADDR";
/// ... through this unix socket, a relay of the parent's to the server.
const POSTGRES_SOCKET_VAR: &str = "TESTKIT_NS_POSTGRES_SOCKET";

/// The line the child writes once it runs the test, followed by the test's name and its user
/// namespace (`user:[…]`).
const MARKER: &str = "volley-testkit: in namespaces of its own (unshare -Urnm):";

/// How long a child's processes may take to be gone once it has exited.
const GONE: Duration = Duration::from_secs(60);

/// Where [`crate::hosts::Hosts`] may be made for the test `test`: returns false when the test
/// should go on in this process — it is root (or holds `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`),
/// or it is the child below — and true once a child ran the test in its stead, and passed.
///
/// Otherwise it runs `unshare -Urnm -- <this test binary> --exact <test> --include-ignored
/// --nocapture --test-threads=1`: the same test, as root of a user namespace of its own, with
/// a network namespace and a mount namespace of its own. There, before the test goes on, this
/// mounts a tmpfs on `/run/netns` (where `ip netns add` keeps the namespaces it names; on `/run`
/// when that directory does not exist), so that the child's namespaces are seen by it alone,
/// and sets its loopback up. Each of its hosts is then a network namespace owned by its user
/// namespace, and nothing of them is seen outside it: not in `ip netns` of the machine, not in
/// its root namespace's links.
///
/// - The child's output (stdout and stderr) is written to this test's stdout, which the test
///   harness shows when the test fails, like the test's own. When the child fails, or runs no
///   test of that name, this panics.
/// - When the test process ends, however it ends (SIGKILL included), the child ends: it holds
///   the write end of the child's stdin, and the child exits when its stdin closes (removing
///   the directory the test process made for the run, below). Its hosts' watchdog then kills
///   whatever runs in its namespaces ([`crate::hosts`]); once the last of its processes is
///   gone, so are its namespaces (named ones are bind mounts in the child's mount namespace,
///   which ends with the last process in it). After the child exits, this waits until no
///   process is left in its user namespace, and panics if one is.
/// - The throwaway PostgreSQL of `scripts/test` listens on the machine's loopback, out of the
///   child's reach; a file is not. When `POSTGRES_TEST_URL` is set, this process relays a unix
///   socket in a private directory to the server, and the child relays its own loopback, at
///   the server's address, to that socket: the test and the relay of
///   [`crate::procs::HostCluster::postgres`] (which uses the socket directly) reach the server
///   at the URL's address, and TLS passes through, checked against the URL's host as before.
///
/// Where neither root nor user namespaces are to be had (`unshare -Urnm true` fails:
/// `user.max_user_namespaces` is 0, or AppArmor restricts unprivileged user namespaces), this
/// panics with a message that says what is needed: the tests fail, never skip.
///
/// [`crate::needs_namespaces!`] calls this at the top of a test, with the test's name.
pub fn in_namespaces(test: &str) -> bool {
    if std::env::var(TEST_VAR).as_deref() == Ok(test) {
        enter(test);
        return false;
    }
    if privileged() {
        return false;
    }
    run_in_child(test);
    true
}

/// The name of the test a `type_name` of a function declared in its body gives
/// (`hosts::a_test::{{closure}}::here`: `a_test`), as the test harness names it: the path
/// without the crate, the closures and the function.
pub fn test_name(type_name: &str) -> &str {
    let path = type_name
        .split_once("::")
        .map_or(type_name, |(_crate, path)| path);
    let path = path
        .rsplit_once("::")
        .map_or(path, |(path, _function)| path);
    path.trim_end_matches("::{{closure}}")
}

/// The user namespace of the process `pid` (`user:[…]`), when it can be read.
pub fn user_namespace(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/user"))
        .ok()
        .map(|link| link.display().to_string())
}

/// The processes alive (zombies aside) in the user namespace `namespace` (`user:[…]`) that
/// this process can see: its user's.
pub fn processes_in(namespace: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| user_namespace(*pid).as_deref() == Some(namespace))
        .filter(|pid| running(*pid))
        .collect()
}

/// Whether the process `pid` runs: it exists and is no zombie.
pub fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S …`: the state follows the last parenthesis.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The directory private to this run of a test in namespaces of its own, when it is one.
pub(super) fn private_dir() -> Option<PathBuf> {
    std::env::var_os(TEST_VAR)?;
    std::env::var_os(DIR_VAR).map(PathBuf::from)
}

/// Where to connect for the server at `addr`: in a child of [`in_namespaces`], the parent's
/// unix socket for the test PostgreSQL server's address; else `addr`.
pub(crate) fn reach(addr: SocketAddr) -> Endpoint {
    match bridged_postgres() {
        Some((server, socket)) if server == addr && std::env::var_os(TEST_VAR).is_some() => {
            Endpoint::Unix(socket)
        }
        _ => Endpoint::Tcp(addr),
    }
}

/// The test PostgreSQL server's address and the unix socket the parent relays to it.
fn bridged_postgres() -> Option<(SocketAddr, PathBuf)> {
    let addr = std::env::var(POSTGRES_ADDR_VAR).ok()?.parse().ok()?;
    let socket = std::env::var_os(POSTGRES_SOCKET_VAR)?;
    Some((addr, socket.into()))
}

/// Whether this process may make network namespaces itself: it holds `CAP_SYS_ADMIN` and
/// `CAP_NET_ADMIN` (root does).
fn privileged() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .unwrap_or(0);
    [CAP_NET_ADMIN, CAP_SYS_ADMIN]
        .iter()
        .all(|cap| effective & (1 << cap) != 0)
}

/// Why unprivileged user namespaces cannot be had here, if they cannot (checked once).
fn unshare_refused() -> Option<&'static str> {
    static REFUSED: OnceLock<Option<String>> = OnceLock::new();
    REFUSED
        .get_or_init(|| {
            match Command::new("unshare")
                .args(["-Urnm", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
            {
                Ok(out) if out.status.success() => None,
                Ok(out) => Some(format!(
                    "`unshare -Urnm true` fails ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(error) => Some(format!("`unshare` (util-linux) cannot run: {error}")),
            }
        })
        .as_deref()
}

/// Runs the test `test` in a child in namespaces of its own; see [`in_namespaces`].
fn run_in_child(test: &str) {
    if let Some(refused) = unshare_refused() {
        panic!(
            "the network-fault tests make network namespaces: they need root (as CI runs \
             them), CAP_SYS_ADMIN and CAP_NET_ADMIN, or unprivileged user namespaces, in which \
             each test runs itself as `unshare -Urnm` would; this process is not root, and \
             {refused}. Run them as root, or allow unprivileged user namespaces \
             (user.max_user_namespaces above 0; kernel.unprivileged_userns_clone=1 where the \
             kernel has it; kernel.apparmor_restrict_unprivileged_userns=0 where AppArmor \
             restricts them)"
        );
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = tempfile::Builder::new()
        .prefix("volley-ns.")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("a private directory for the test's namespaces");
    let mut command = Command::new("unshare");
    command
        .args(["-Urnm", "--"])
        .arg(&exe)
        .args([
            "--exact",
            test,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(TEST_VAR, test)
        .env(DIR_VAR, dir.path());
    // Served in the child on its loopback, through a socket of this directory.
    let _postgres = crate::pg::server_addr().map(|addr| {
        let socket = dir.path().join("postgres.sock");
        let relay = Relay::between(Endpoint::Unix(socket.clone()), Endpoint::Tcp(addr))
            .expect("the relay to the test PostgreSQL starts");
        command
            .env(POSTGRES_ADDR_VAR, addr.to_string())
            .env(POSTGRES_SOCKET_VAR, &socket);
        relay
    });
    // Its stdout and stderr on one pipe, in the order written.
    let (output, writer) = std::io::pipe().expect("a pipe");
    command
        .stdin(Stdio::piped())
        .stdout(writer.try_clone().expect("the pipe's write end"))
        .stderr(writer);
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("running unshare -Urnm: {error}"));
    // The command holds the pipe's write ends: the output ends when the child's do.
    drop(command);
    // The child ends when this closes: when the test is done, or this process dies.
    let stdin = child.stdin.take();

    let mut user_ns = None;
    let mut output = BufReader::new(output);
    let mut line = Vec::new();
    while output.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
        let text = String::from_utf8_lossy(&line);
        // Anywhere in the line: the harness writes `test <name> ... ` before it.
        if let Some(at) = text.find(MARKER) {
            let mut words = text[at + MARKER.len()..].split_whitespace();
            if words.next() == Some(test) {
                user_ns = words.next().map(str::to_owned);
            }
        }
        print!("{text}");
        line.clear();
    }
    let status = child.wait().expect("waiting for the test's child");
    drop(stdin);
    let Some(user_ns) = user_ns else {
        panic!(
            "{test} did not run in namespaces of its own: `unshare -Urnm -- {} --exact {test} \
             …` exited with {status} (its output is above)",
            exe.display()
        );
    };
    assert!(
        status.success(),
        "{test} failed in namespaces of its own ({status}; its output is above)"
    );
    // Nothing of the run outlives it: no process, so no namespace.
    wait_until_blocking(GONE, "the test's namespaces to be gone", || {
        processes_in(&user_ns).is_empty()
    })
    .unwrap_or_else(|_| {
        let left: Vec<String> = processes_in(&user_ns)
            .into_iter()
            .map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!(
                    "{pid}: {}",
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                )
            })
            .collect();
        panic!("processes of {test} outlived it in its namespaces ({user_ns}): {left:?}")
    });
}

/// In the child: gets its namespaces ready for hosts, once, and says it runs the test.
fn enter(test: &str) {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if let Err(error) = set_up() {
            panic!("getting the namespaces of {test} ready: {error:#}");
        }
    });
    let user_ns = user_namespace(std::process::id()).unwrap_or_default();
    println!("{MARKER} {test} {user_ns}");
}

/// See [`in_namespaces`]: exit when stdin closes, `/run/netns` of its own, loopback up, the
/// test PostgreSQL server's address served on it.
fn set_up() -> anyhow::Result<()> {
    // Never in the machine's own namespaces: a variable set by hand must not lead here.
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    if uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"] {
        bail!("{TEST_VAR} is set, but this process is in the machine's user namespace");
    }
    std::thread::Builder::new()
        .name("stdin-watch".to_owned())
        .spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            // Its parent is gone, and cannot remove the directory it made for the run.
            if let Some(dir) = private_dir() {
                let _ = std::fs::remove_dir_all(dir);
            }
            // The pipe of the output may be gone too: no panic on a failed write.
            let _ = writeln!(
                std::io::stderr(),
                "volley-testkit: the test process that ran this one is gone; exiting"
            );
            std::process::exit(1);
        })
        .context("starting the thread that watches stdin")?;

    let netns = Path::new("/run/netns");
    if netns.is_dir() {
        mount_tmpfs(netns)?;
    } else {
        // Root's /run, where this user may not make the directory: a tmpfs of its own instead.
        mount_tmpfs(Path::new("/run"))?;
        std::fs::create_dir(netns).context("creating /run/netns")?;
    }
    ip(None, &["link", "set", "lo", "up"])?;

    if let Some((addr, socket)) = bridged_postgres() {
        if !addr.ip().is_loopback() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            let local = format!("{}/{prefix}", addr.ip());
            ip(None, &["addr", "add", &local, "dev", "lo"])?;
        }
        let relay = Relay::between(Endpoint::Tcp(addr), Endpoint::Unix(socket))
            .context("serving the test PostgreSQL server's address")?;
        // For the rest of the process.
        static POSTGRES: OnceLock<Relay> = OnceLock::new();
        let _ = POSTGRES.set(relay);
    }
    Ok(())
}

/// Mounts a tmpfs on `dir`, in this process's mount namespace.
fn mount_tmpfs(dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0755", "volley-netns"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .context("running mount")?;
    if !out.status.success() {
        bail!(
            "mount -t tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_is_named_after_its_path_without_the_crate() {
        fn here() {}
        assert_eq!(
            test_name(std::any::type_name_of_val(&here)),
            "hosts::namespaces::tests::a_test_is_named_after_its_path_without_the_crate"
        );
        assert_eq!(test_name("hosts::a_test::{{closure}}::here"), "a_test");
        assert_eq!(test_name("hosts::a_test::here"), "a_test");
    }

    #[test]
    fn this_process_is_alive_and_in_its_user_namespace() {
        let pid = std::process::id();
        let user_ns = user_namespace(pid).unwrap();
        assert!(user_ns.starts_with("user:["), "{user_ns}");
        assert!(processes_in(&user_ns).contains(&pid));
        assert!(!running(u32::MAX));
    }
}
