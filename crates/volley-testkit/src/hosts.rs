//! Several hosts on one machine: Linux network namespaces joined by a bridge, with links that a
//! test can cut and pairs of hosts it can partition.
//!
//! # What [`Hosts::create`] makes
//!
//! For a run numbered `<n>` of the process `<pid>` (a process may hold several at once):
//!
//! - a bridge namespace `vly-<pid>-<n>` holding the bridge `br0`;
//! - one namespace per host, `vly-<pid>-<n>-<host>`, with its loopback up and one interface,
//!   `eth0`, the end of a veth pair whose other end (`v<i>`, the host's index) is a port of
//!   `br0`;
//! - one more veth pair from the root namespace (`vly<pid>r<n>` there) to the bridge
//!   (`uplink`), so that the test process itself — in the root namespace — reaches every host:
//!   a front's HTTP port, the fakes' stats. Running the test's own requests through
//!   `ip netns exec` would need a process per request; the uplink lets the test kit's async
//!   clients talk to the hosts directly.
//!
//! # Addressing
//!
//! Every run takes a private /24, `10.<a>.<b>.0/24`, chosen at creation so that it overlaps no
//! address or route of the root namespace (`ip -4 -o addr`, `ip -4 route`; a default route does
//! not count) — including the subnets of other runs in progress, whose uplinks hold an address
//! in theirs (the choice is made under a file lock, so two runs starting at once cannot take the
//! same). Host `i` (in the order given) is `10.<a>.<b>.<i+1>`, the root namespace's uplink is
//! `10.<a>.<b>.254` ([`Hosts::root_addr`]). Nothing is routed outside: the hosts have no
//! default route and there is no NAT, so their traffic never leaves the bridge; the root
//! namespace gains only the connected route of the run's /24.
//!
//! # Cleanup, whatever stops the run
//!
//! - Dropping [`Hosts`] kills whatever still runs in its namespaces and deletes them (a veth
//!   dies with its namespace: deleting the bridge namespace removes the uplink too).
//! - A watchdog, started at creation in a session of its own (`setsid`, so a terminal's Ctrl-C
//!   or a signal to the test's process group does not reach it), holds the read end of a pipe
//!   whose write end only the test process holds. When the test process ends — even by
//!   SIGKILL — the pipe closes, and the watchdog kills the processes in the run's namespaces
//!   and deletes them, and removes the directories the run named to it
//!   ([`Hosts::remove_on_exit`]: a cluster's configuration, certificates and data).
//! - At creation, a sweep deletes the namespaces and uplinks (`vly-<pid>-…`, `vly<pid>r…`) of
//!   processes that no longer exist, should a watchdog itself have been killed.
//!
//! [`Hosts::leftovers`] lists what a process left; the tests assert it is nothing.
//!
//! # Faults
//!
//! There is no netem and no iptables here; links are cut with `ip` alone:
//!
//! - [`Hosts::cut`] sets the host's port on the bridge down: the host reaches no one and no one
//!   reaches it, the test process included; its processes keep running. [`Hosts::heal`] sets
//!   it up again.
//! - [`Hosts::partition`] adds a blackhole route to each host for the other's address: the two
//!   cannot talk, while both still reach everyone else. [`Hosts::unpartition`] removes them.
//! - [`Hosts::block`] does one side only: `from` cannot send to `to`. For TCP that is a cut in
//!   both directions (a handshake or an acknowledgement never gets back); for datagrams it is
//!   one-way. A `connect` towards a blackholed address fails at once (`EINVAL`), where one
//!   across a cut link times out.
//!
//! # Privileges
//!
//! Making namespaces needs root (as CI runs the tests) or `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`.
//! Any other user gets them in user namespaces of its own, where the kernel allows
//! unprivileged ones (as `unshare -Urnm` makes them): a test that makes hosts starts with
//! [`crate::needs_namespaces!`], which, without the capabilities, re-runs the test in a child
//! as root of a user namespace of its own, with its own network and mount namespaces, and
//! passes when the child passes ([`in_namespaces`]). Everything above then happens inside the
//! child's namespaces: its "root namespace" is the child's network namespace, its `ip netns`
//! names are in a tmpfs of its own on `/run/netns`, and nothing of it is seen outside. The
//! cleanup holds as well: the child exits when the test process ends, however it ends, its
//! watchdog then kills what runs in its hosts, and the namespaces end with the last process in
//! them. Where neither root nor user namespaces are to be had, the test fails with a message
//! that says what it needs; tests never skip. ([`Hosts::create`] itself, without the
//! capabilities, fails with a message that says so.)
//!
//! Everything is synchronous (`std::process::Command` running `/usr/sbin/ip`); creating ten
//! hosts takes a few tens of milliseconds.

use std::fs::File;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context as _};

mod namespaces;

pub(crate) use namespaces::reach;
pub use namespaces::{in_namespaces, processes_in, running, test_name, user_namespace};

/// The `ip` program (iproute2).
const IP: &str = "/usr/sbin/ip";

/// Every namespace and root-namespace interface of a run starts with this.
const PREFIX: &str = "vly";

/// The last octet of the root namespace's address on a run's bridge.
const ROOT_OCTET: u8 = 254;

/// Runs made by this process so far: a process may hold several [`Hosts`] at once.
static RUNS: AtomicU32 = AtomicU32::new(0);

/// One simulated host.
#[derive(Debug)]
struct Host {
    name: String,
    namespace: String,
    addr: Ipv4Addr,
    /// Its port on the bridge, in the bridge namespace.
    port: String,
}

/// N named hosts in network namespaces on one bridge; see the module documentation.
#[derive(Debug)]
pub struct Hosts {
    /// `vly-<pid>-<n>`: the bridge namespace's name, and every host namespace's prefix.
    run: String,
    /// The first three octets of the run's /24.
    subnet: [u8; 3],
    hosts: Vec<Host>,
    /// The root namespace's end of the uplink.
    root_link: String,
    /// The watchdog, and the write end of its pipe.
    watchdog: Option<(Child, ChildStdin)>,
}

impl Hosts {
    /// Creates one host per name (`[a-z0-9-]`, distinct), each with its own address, all on
    /// one bridge that the test process reaches too.
    pub fn create(names: &[&str]) -> anyhow::Result<Hosts> {
        validate_names(names)?;
        sweep();
        let pid = std::process::id();
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let run = format!("{PREFIX}-{pid}-{n}");
        let mut hosts = Hosts {
            root_link: format!("{PREFIX}{pid}r{n}"),
            run,
            subnet: [0; 3],
            hosts: Vec::new(),
            watchdog: None,
        };
        // The watchdog first: whatever is made from here on is removed if this process dies.
        hosts.watchdog = Some(hosts.start_watchdog()?);
        ip(None, &["netns", "add", &hosts.run]).map_err(|error| {
            anyhow::anyhow!(
                "cannot create network namespaces ({error:#}): the multi-host tests need root \
                 (as CI runs them) or CAP_SYS_ADMIN and CAP_NET_ADMIN, which a test without \
                 them gets in user namespaces of its own by starting with \
                 volley_testkit::needs_namespaces!()"
            )
        })?;
        ip_batch(
            Some(&hosts.run),
            &["link add br0 type bridge", "link set br0 up"],
        )?;
        for (i, name) in names.iter().enumerate() {
            let host = Host {
                name: (*name).to_owned(),
                namespace: format!("{}-{name}", hosts.run),
                addr: Ipv4Addr::UNSPECIFIED,
                port: format!("v{i}"),
            };
            ip(None, &["netns", "add", &host.namespace])?;
            ip_batch(
                Some(&hosts.run),
                &[
                    &format!(
                        "link add {} type veth peer name eth0 netns {}",
                        host.port, host.namespace
                    ),
                    &format!("link set {} master br0 up", host.port),
                ],
            )?;
            hosts.hosts.push(host);
        }
        // The subnet is chosen, and the uplink's address that claims it added, under a lock:
        // another run starting now sees the claim.
        let lock = lock_file()?;
        hosts.subnet = free_subnet(pid, n)?;
        ip(
            None,
            &[
                "link",
                "add",
                &hosts.root_link,
                "type",
                "veth",
                "peer",
                "name",
                "uplink",
                "netns",
                &hosts.run,
            ],
        )?;
        let root_addr = format!("{}/24", hosts.root_addr());
        ip(None, &["addr", "add", &root_addr, "dev", &hosts.root_link])?;
        drop(lock);
        ip(None, &["link", "set", &hosts.root_link, "up"])?;
        ip_batch(Some(&hosts.run), &["link set uplink master br0 up"])?;
        for i in 0..hosts.hosts.len() {
            let addr = hosts.nth_addr(i);
            let host = &mut hosts.hosts[i];
            host.addr = addr;
            ip_batch(
                Some(&host.namespace),
                &[
                    &format!("addr add {addr}/24 dev eth0"),
                    "link set eth0 up",
                    "link set lo up",
                ],
            )?;
        }
        Ok(hosts)
    }

    /// The host's address.
    pub fn addr(&self, name: &str) -> Ipv4Addr {
        self.host(name).addr
    }

    /// The root namespace's address on the bridge (`10.<a>.<b>.254`): where the hosts see the
    /// test process's connections come from.
    pub fn root_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, ROOT_OCTET)
    }

    /// The run's subnet, `10.<a>.<b>.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    /// The name of the host's network namespace (`vly-<pid>-<n>-<host>`).
    pub fn namespace(&self, name: &str) -> &str {
        &self.host(name).namespace
    }

    /// A command that runs `program` on the host: `ip netns exec <namespace> program`. `ip`
    /// execs the program, so the child's pid is the program's own and signals reach it.
    pub fn command(&self, name: &str, program: impl AsRef<Path>) -> Command {
        let mut command = Command::new(IP);
        command
            .args(["netns", "exec", self.namespace(name)])
            .arg(program.as_ref());
        command
    }

    /// Cuts the host's link: it reaches no one, and no one (the test process included) reaches
    /// it, until [`Hosts::heal`].
    pub fn cut(&self, name: &str) -> anyhow::Result<()> {
        self.set_port(name, "down")
    }

    /// Restores a link [`Hosts::cut`] cut.
    pub fn heal(&self, name: &str) -> anyhow::Result<()> {
        self.set_port(name, "up")
    }

    /// `a` and `b` can no longer talk to each other; each still reaches every other host.
    pub fn partition(&self, a: &str, b: &str) -> anyhow::Result<()> {
        self.block(a, b)?;
        self.block(b, a)
    }

    /// Ends a [`Hosts::partition`].
    pub fn unpartition(&self, a: &str, b: &str) -> anyhow::Result<()> {
        self.unblock(a, b)?;
        self.unblock(b, a)
    }

    /// `from` can no longer send to `to` (a blackhole route for `to`'s address on `from`).
    pub fn block(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let to = format!("{}/32", self.addr(to));
        ip(
            Some(self.namespace(from)),
            &["route", "replace", "blackhole", &to],
        )
    }

    /// Ends a [`Hosts::block`].
    pub fn unblock(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let to = format!("{}/32", self.addr(to));
        ip(
            Some(self.namespace(from)),
            &["route", "del", "blackhole", &to],
        )
    }

    /// The namespaces and root-namespace links still there of the process `pid`'s runs.
    pub fn leftovers(pid: u32) -> Vec<String> {
        let mut left: Vec<String> = namespaces()
            .into_iter()
            .filter(|namespace| namespace_pid(namespace) == Some(pid))
            .collect();
        left.extend(
            root_links()
                .into_iter()
                .filter(|link| link_pid(link) == Some(pid)),
        );
        left
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|host| host.name == name)
            .unwrap_or_else(|| panic!("no host named {name:?}"))
    }

    fn nth_addr(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, i as u8 + 1)
    }

    fn set_port(&self, name: &str, state: &str) -> anyhow::Result<()> {
        let port = &self.host(name).port;
        ip(Some(&self.run), &["link", "set", port, state])
    }

    /// Has the watchdog remove `dir` (a directory the run's processes use: their
    /// configuration, certificates, data) if this process dies before dropping the hosts; a
    /// run that ends normally removes its own.
    pub fn remove_on_exit(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.to_str().context("a directory path that is not UTF-8")?;
        anyhow::ensure!(
            !path.contains('\n') && dir.is_absolute(),
            "the watchdog takes absolute paths of one line: {path:?}"
        );
        let (_, stdin) = self.watchdog.as_ref().context("no watchdog")?;
        // The pipe is written to only here and by the drop, both through `&self`/`&mut self`.
        let mut stdin: &ChildStdin = stdin;
        writeln!(stdin, "{path}").context("telling the watchdog")?;
        Ok(())
    }

    /// Starts the watchdog; see the module documentation.
    fn start_watchdog(&self) -> anyhow::Result<(Child, ChildStdin)> {
        let mut child = Command::new("setsid")
            .args([
                "sh",
                "-c",
                &cleanup_script(&self.run, &self.root_link, true),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the namespaces' watchdog (setsid sh)")?;
        let stdin = child.stdin.take().context("the watchdog's pipe")?;
        Ok((child, stdin))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args(["-c", &cleanup_script(&self.run, &self.root_link, false)])
            .stdin(Stdio::null())
            .status();
        if let Some((mut child, mut stdin)) = self.watchdog.take() {
            // It finds nothing left, and exits (the directories are their owners' to remove).
            let _ = stdin.write_all(b"done\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// A shell script that kills the processes in the run's namespaces, then deletes them and the
/// uplink. The watchdog's first reads its pipe until it closes (the test process died: it then
/// also removes the directories named on the pipe, a line each) or says `done` (a clean drop).
fn cleanup_script(run: &str, root_link: &str, wait: bool) -> String {
    let wait = if wait {
        "clean=
while read -r line; do
  if [ \"$line\" = done ]; then clean=1; break; fi
  set -- \"$@\" \"$line\"
done
"
    } else {
        ""
    };
    let remove = if wait.is_empty() {
        ""
    } else {
        "[ -n \"$clean\" ] || [ $# -eq 0 ] || rm -rf -- \"$@\"\n"
    };
    format!(
        "{wait}for ns in $({IP} netns list | cut -d' ' -f1); do
  case \"$ns\" in
    {run}|{run}-*)
      for p in $({IP} netns pids \"$ns\"); do kill -9 \"$p\"; done
      {IP} netns del \"$ns\" ;;
  esac
done
{IP} link del {root_link} 2>/dev/null
{remove}true"
    )
}

/// Deletes what runs of dead processes left (their watchdog was killed too).
fn sweep() {
    for namespace in namespaces() {
        if let Some(pid) = namespace_pid(&namespace).filter(|pid| !running(*pid)) {
            let _ = Command::new("sh")
                .args([
                    "-c",
                    &format!(
                        "for p in $({IP} netns pids {namespace}); do kill -9 $p; done; \
                         {IP} netns del {namespace}"
                    ),
                ])
                .stderr(Stdio::null())
                .status();
            tracing::info!(%namespace, pid, "deleted a namespace a dead run left");
        }
    }
    for link in root_links() {
        if link_pid(&link).is_some_and(|pid| !running(pid)) {
            let _ = ip(None, &["link", "del", &link]);
        }
    }
}

/// Every named network namespace.
fn namespaces() -> Vec<String> {
    output(None, &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Every interface of the root namespace.
fn root_links() -> Vec<String> {
    output(None, &["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// The pid in a run's namespace name, `vly-<pid>-…`.
fn namespace_pid(namespace: &str) -> Option<u32> {
    namespace
        .strip_prefix(PREFIX)?
        .strip_prefix('-')?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// The pid in a run's uplink name, `vly<pid>r<n>`.
fn link_pid(link: &str) -> Option<u32> {
    let rest = link.strip_prefix(PREFIX)?;
    let (pid, n) = rest.split_once('r')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

fn validate_names(names: &[&str]) -> anyhow::Result<()> {
    if names.is_empty() || names.len() > 250 {
        bail!("between 1 and 250 hosts, not {}", names.len());
    }
    for (i, name) in names.iter().enumerate() {
        let valid = !name.is_empty()
            && name.len() <= 40
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            bail!("host name {name:?}: 1 to 40 of a-z, 0-9 and -");
        }
        if names[..i].contains(name) {
            bail!("host name {name:?} given twice");
        }
    }
    Ok(())
}

/// A lock on a file every run in this network namespace shares, held while a subnet is chosen
/// and claimed: in the temporary directory, or, in namespaces of a test's own
/// ([`in_namespaces`]), in the directory private to them.
fn lock_file() -> anyhow::Result<File> {
    let dir = namespaces::private_dir().unwrap_or_else(std::env::temp_dir);
    let path = dir.join("volley-hosts.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// A `10.<a>.<b>` that overlaps no address or route of the root namespace.
fn free_subnet(pid: u32, n: u32) -> anyhow::Result<[u8; 3]> {
    let mut taken = Vec::new();
    let addrs = output(None, &["-4", "-o", "addr", "show"])?;
    for line in addrs.lines() {
        let mut words = line.split_whitespace();
        if words.any(|word| word == "inet") {
            taken.extend(words.next().and_then(parse_prefix));
        }
    }
    let routes = output(None, &["-4", "route", "show", "table", "all"])?;
    for line in routes.lines() {
        let mut words = line.split_whitespace();
        let mut first = words.next().unwrap_or_default();
        if ROUTE_TYPES.contains(&first) {
            first = words.next().unwrap_or_default();
        }
        if first != "default" {
            taken.extend(parse_prefix(first));
        }
    }
    // Start somewhere that depends on the run, so that runs rarely even look at the same one.
    let start = (pid.wrapping_mul(2_654_435_761) ^ n.wrapping_mul(40_503)) as usize;
    (0..65_536)
        .map(|k| (start + k) % 65_536)
        .map(|k| [10, (k >> 8) as u8, k as u8])
        // 10.0.x and 10.255.x are the ones people pick by hand.
        .filter(|[_, a, _]| *a != 0 && *a != 255)
        .find(|[_, a, b]| {
            let net = u32::from(Ipv4Addr::new(10, *a, *b, 0));
            !taken
                .iter()
                .any(|(addr, len)| overlaps(net, 24, *addr, *len))
        })
        .context("no free 10.x.y.0/24 for the hosts")
}

/// The route types `ip route` may print before a destination.
const ROUTE_TYPES: &[&str] = &[
    "unicast",
    "local",
    "broadcast",
    "multicast",
    "blackhole",
    "unreachable",
    "prohibit",
    "throw",
    "nat",
    "anycast",
];

/// `a.b.c.d/len` (or a bare address, a /32).
fn parse_prefix(text: &str) -> Option<(u32, u32)> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, len.parse().ok()?),
        None => (text, 32),
    };
    let addr: Ipv4Addr = addr.parse().ok()?;
    Some((u32::from(addr), len))
}

/// Whether two prefixes share an address: they agree on the shorter one's bits.
fn overlaps(a: u32, a_len: u32, b: u32, b_len: u32) -> bool {
    let len = a_len.min(b_len);
    if len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - len);
    a & mask == b & mask
}

/// Runs `ip` (in `namespace`, with `-n`), failing with its stderr.
fn ip(namespace: Option<&str>, args: &[&str]) -> anyhow::Result<()> {
    output(namespace, args).map(drop)
}

/// Runs `ip -batch -` (in `namespace`) on `lines`: one process for several changes.
fn ip_batch(namespace: Option<&str>, lines: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new(IP);
    if let Some(namespace) = namespace {
        command.args(["-n", namespace]);
    }
    let mut child = command
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {IP}"))?;
    let mut stdin = child.stdin.take().context("ip's stdin")?;
    stdin.write_all(lines.join("\n").as_bytes())?;
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -batch ({}): {}",
            lines.join("; "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `ip` (in `namespace`) and returns its stdout, failing with its stderr.
fn output(namespace: Option<&str>, args: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new(IP);
    if let Some(namespace) = namespace {
        command.args(["-n", namespace]);
    }
    let out = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {IP}"))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `bash` says connecting from `host` to `addr:port` (a closed port: a reachable host
    /// refuses at once), within a second.
    fn connect(hosts: &Hosts, host: &str, addr: Ipv4Addr) -> String {
        let out = hosts
            .command(host, "timeout")
            .args(["1", "bash", "-c", &format!("echo > /dev/tcp/{addr}/9")])
            .output()
            .unwrap();
        if out.status.code() == Some(124) {
            return "timed out".to_owned();
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    #[test]
    fn hosts_reach_each_other_until_cut_or_partitioned_and_leave_nothing() {
        crate::needs_namespaces!();
        let hosts = Hosts::create(&["a", "b", "c"]).unwrap();
        let (a, b, c) = (hosts.addr("a"), hosts.addr("b"), hosts.addr("c"));
        assert_ne!(a, b);
        assert!(hosts.subnet().starts_with("10."), "{}", hosts.subnet());
        assert!(connect(&hosts, "a", b).contains("Connection refused"));

        hosts.partition("a", "b").unwrap();
        assert!(connect(&hosts, "a", b).contains("Invalid argument"));
        assert!(connect(&hosts, "b", a).contains("Invalid argument"));
        assert!(connect(&hosts, "a", c).contains("Connection refused"));
        hosts.unpartition("a", "b").unwrap();
        assert!(connect(&hosts, "b", a).contains("Connection refused"));

        hosts.cut("c").unwrap();
        assert_eq!(connect(&hosts, "a", c), "timed out");
        hosts.heal("c").unwrap();
        assert!(connect(&hosts, "a", c).contains("Connection refused"));

        // The test process reaches the hosts through the uplink.
        let error = std::net::TcpStream::connect((c, 9)).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);

        let namespace = hosts.namespace("a").to_owned();
        assert!(namespaces().contains(&namespace));
        drop(hosts);
        assert!(!namespaces().contains(&namespace));
    }

    #[test]
    fn names_of_runs_give_back_their_pid() {
        assert_eq!(namespace_pid("vly-4242-0-front-0"), Some(4242));
        assert_eq!(namespace_pid("vly-4242-1"), Some(4242));
        assert_eq!(namespace_pid("other-4242"), None);
        assert_eq!(link_pid("vly4242r3"), Some(4242));
        assert_eq!(link_pid("vlyabc"), None);
        assert!(format!("{PREFIX}{}r{}", 4_194_304, 999).len() <= 15);
    }

    #[test]
    fn prefixes_overlap_when_they_share_an_address() {
        let net = |text| parse_prefix(text).unwrap();
        let (a, a_len) = net("10.1.2.0/24");
        assert!(overlaps(a, a_len, net("10.0.0.0/8").0, 8));
        assert!(overlaps(a, a_len, net("10.1.2.7").0, 32));
        assert!(!overlaps(a, a_len, net("10.1.3.0/24").0, 24));
        assert!(!overlaps(a, a_len, net("192.0.2.0/24").0, 24));
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(validate_names(&["a", "a"]).is_err());
        assert!(validate_names(&["A"]).is_err());
        assert!(validate_names(&[]).is_err());
        assert!(validate_names(&["front-0", "agent-1"]).is_ok());
    }
}
