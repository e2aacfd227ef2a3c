//! The SSRF guard: which push endpoints Volley may connect to.
//!
//! A Web Push endpoint is a URL chosen by whoever registered the subscription, so without a
//! guard any app could make Volley's agents POST to `https://169.254.169.254/…`, to a
//! database on the private network, or to a loopback admin port. The guard allows an
//! endpoint only when its host is on the app's allow-list (when it has one) and *every*
//! address the host resolves to is public, or inside a range the app explicitly allows
//! (`webpush.allow_private`, for a push service inside the network or a test fake).
//!
//! The guard returns the addresses it checked and the client connects to exactly those (the
//! pool's [`Resolve`] hook), so a name cannot resolve to a public address for the check and a
//! private one for the connect. A name with both public and private addresses is refused:
//! that is what a DNS-rebinding attack looks like.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;

use volley_provider::pool::Resolve;

/// An address range, `10.0.0.0/8` or `fd00::/8`; a bare address is a single-address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the range (IPv4 ranges never contain IPv6 addresses: an
    /// IPv4-mapped address is matched by [`Guard`] through its IPv4 form).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = GuardError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let entry = text.trim();
        let invalid = |why: &str| GuardError::Cidr {
            entry: entry.to_string(),
            why: why.to_string(),
        };
        let (address, prefix) = match entry.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (entry, None),
        };
        let network: IpAddr = address
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| invalid("not an ip address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| invalid(&format!("prefix length must be 0 to {max}")))?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Why a guard could not be built; names the entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// An `allow_private` entry is not a CIDR range or an address.
    #[error("webpush.allow_private entry {entry:?} is not an address or CIDR range: {why}")]
    Cidr {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// An `allowed_hosts` entry is not a host name.
    #[error("webpush.allowed_hosts entry {0:?} is not a host name")]
    Host(String),
}

/// Why an endpoint may not be contacted. The message names the host and address, never the
/// endpoint's path (a secret of the subscription).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The endpoint is not https.
    NotHttps {
        /// The scheme found.
        scheme: String,
    },
    /// The host is not on the app's allow-list.
    HostNotAllowed {
        /// The endpoint's host.
        host: String,
    },
    /// The host is or resolves to an address that is not public.
    NotPublic {
        /// The endpoint's host.
        host: String,
        /// The first address refused.
        address: IpAddr,
        /// What kind of address it is (`loopback`, `private`, `link-local`, ...).
        class: &'static str,
    },
    /// The port is not 443 and the address is not in the app's `allow_private`.
    PortNotAllowed {
        /// The endpoint's host.
        host: String,
        /// The endpoint's port.
        port: u16,
    },
    /// The host name does not resolve.
    Unresolvable {
        /// The endpoint's host.
        host: String,
        /// The resolver's error.
        error: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotHttps { scheme } => {
                write!(
                    f,
                    "endpoint scheme is {scheme}: push endpoints must be https"
                )
            }
            Refusal::HostNotAllowed { host } => {
                write!(
                    f,
                    "endpoint host {host} is not in the app's webpush.allowed_hosts"
                )
            }
            Refusal::NotPublic {
                host,
                address,
                class,
            } => {
                if host.parse::<IpAddr>().is_ok_and(|ip| ip == *address) {
                    write!(f, "endpoint host is {address}")?;
                } else {
                    write!(f, "endpoint host {host} resolves to {address}")?;
                }
                write!(
                    f,
                    ", {} {class} address: only public addresses are allowed unless the app's \
                     webpush.allow_private lists it",
                    article(class)
                )
            }
            Refusal::PortNotAllowed { host, port } => write!(
                f,
                "endpoint {host}:{port}: only port 443 is allowed unless the app's \
                 webpush.allow_private lists the address"
            ),
            Refusal::Unresolvable { host, error } => {
                write!(f, "endpoint host {host} does not resolve: {error}")
            }
        }
    }
}

impl Refusal {
    /// A short stable code for reports and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotHttps { .. } => "EndpointNotHttps",
            Refusal::HostNotAllowed { .. } => "EndpointHostNotAllowed",
            Refusal::NotPublic { .. } => "EndpointNotPublic",
            Refusal::PortNotAllowed { .. } => "EndpointPortNotAllowed",
            Refusal::Unresolvable { .. } => "EndpointUnresolvable",
        }
    }

    /// The refusal as a job's failure reason: its code and what kind of thing was refused,
    /// without the host, address or port (those are the user's to choose, so a reason naming
    /// them would make every refusal a counter of its own, and would tell a caller where an
    /// internal name points). One of a few dozen texts.
    pub fn summary(&self) -> String {
        let code = self.code();
        match self {
            Refusal::NotHttps { .. } => format!("{code}: push endpoints must be https"),
            Refusal::HostNotAllowed { .. } => {
                format!("{code}: the host is not under the app's webpush.allowed_hosts")
            }
            Refusal::NotPublic { class, .. } => format!(
                "{code}: the host is {} {class} address; only public addresses are allowed \
                 unless the app's webpush.allow_private lists it",
                article(class)
            ),
            Refusal::PortNotAllowed { .. } => format!(
                "{code}: only port 443 is allowed unless the app's webpush.allow_private lists \
                 the address"
            ),
            Refusal::Unresolvable { .. } => format!("{code}: the host does not resolve"),
        }
    }
}

/// "an" or "a" before a class of address, by sound: "an unspecified", "a unique local".
fn article(class: &str) -> &'static str {
    if class.starts_with(['a', 'e', 'i', 'o'])
        || (class.starts_with("un") && !class.starts_with("uni"))
    {
        "an"
    } else {
        "a"
    }
}

/// Decides which endpoint hosts and addresses may be contacted; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Lower-case host suffixes; empty allows any host.
    allowed_hosts: Vec<String>,
    allow_private: Vec<Cidr>,
}

impl Guard {
    /// `allowed_hosts`: host names whose endpoints (and their subdomains') are allowed; empty
    /// allows any host. `allow_private`: ranges (`127.0.0.0/8`, `::1/128`, `10.1.2.3`)
    /// allowed although not public.
    pub fn new(
        allowed_hosts: Vec<String>,
        allow_private: Vec<String>,
    ) -> Result<Guard, GuardError> {
        let allowed_hosts = allowed_hosts
            .into_iter()
            .map(|entry| {
                let host = normalize_host(&entry).to_ascii_lowercase();
                let valid = !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
                if valid {
                    Ok(host.trim_start_matches('.').to_string())
                } else {
                    Err(GuardError::Host(entry))
                }
            })
            .collect::<Result<_, _>>()?;
        let allow_private = allow_private
            .iter()
            .map(|entry| entry.parse())
            .collect::<Result<_, _>>()?;
        Ok(Guard {
            allowed_hosts,
            allow_private,
        })
    }

    /// Checks the host against the allow-list without resolving it.
    pub fn check_host(&self, host: &str) -> Result<(), Refusal> {
        let host = normalize_host(host);
        if self.allowed_hosts.is_empty()
            || self
                .allowed_hosts
                .iter()
                .any(|entry| suffix_matches(host, entry))
        {
            Ok(())
        } else {
            Err(Refusal::HostNotAllowed {
                host: host.to_string(),
            })
        }
    }

    /// Checks one address: public, or inside `allow_private`.
    pub fn check_address(&self, host: &str, address: IpAddr) -> Result<(), Refusal> {
        let Some(class) = non_public_class(address) else {
            return Ok(());
        };
        if self.allows_private(address) {
            Ok(())
        } else {
            Err(Refusal::NotPublic {
                host: normalize_host(host).to_string(),
                address,
                class,
            })
        }
    }

    /// Whether `address` (or the IPv4 address an IPv4-mapped one carries) is inside the app's
    /// `allow_private` ranges.
    fn allows_private(&self, address: IpAddr) -> bool {
        let mapped = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow_private
            .iter()
            .any(|range| range.contains(address) || mapped.is_some_and(|v4| range.contains(v4)))
    }

    /// The addresses of `host` that may be contacted: the host must pass the allow-list, and
    /// every address it resolves to must pass [`Guard::check_address`].
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        self.check_host(host)?;
        let host = normalize_host(host);
        let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                let unresolvable = |error: String| Refusal::Unresolvable {
                    host: host.to_string(),
                    error,
                };
                let mut found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| unresolvable(e.to_string()))?
                    .collect();
                let mut seen = std::collections::HashSet::new();
                found.retain(|address| seen.insert(*address));
                if found.is_empty() {
                    return Err(unresolvable("no addresses".into()));
                }
                found
            }
        };
        self.check_addresses(host, &addresses)?;
        // Push services listen on 443; another port of a public host is how an endpoint
        // would have the agents probe a service that is not a push service.
        if port != 443 && !addresses.iter().all(|a| self.allows_private(a.ip())) {
            return Err(Refusal::PortNotAllowed {
                host: host.to_string(),
                port,
            });
        }
        Ok(addresses)
    }

    /// Checks every address a host resolved to: one non-public address refuses the host,
    /// even among public ones (the shape of a DNS-rebinding attack).
    pub fn check_addresses(&self, host: &str, addresses: &[SocketAddr]) -> Result<(), Refusal> {
        addresses
            .iter()
            .try_for_each(|address| self.check_address(host, address.ip()))
    }
}

impl Resolve for Guard {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<SocketAddr>, String>> + Send + 'a>> {
        Box::pin(async move {
            Guard::resolve(self, host, port)
                .await
                .map_err(|r| r.to_string())
        })
    }
}

/// A host without IPv6 brackets or a trailing dot (`example.com.` is `example.com`).
fn normalize_host(host: &str) -> &str {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.strip_suffix('.').unwrap_or(host)
}

/// `entry` matches itself and its subdomains, case-insensitively, on label boundaries:
/// `push.example.com` matches `a.push.example.com`, not `evilpush.example.com`.
fn suffix_matches(host: &str, entry: &str) -> bool {
    if host.len() < entry.len() {
        return false;
    }
    let (head, tail) = host.split_at(host.len() - entry.len());
    tail.eq_ignore_ascii_case(entry) && (head.is_empty() || head.ends_with('.'))
}

/// `None` for a public address; else the kind of address, for the refusal message.
pub fn non_public_class(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn in_v4(ip: Ipv4Addr, network: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(network)) & mask
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "shared (carrier-grade NAT)"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "reserved (IETF protocol assignments)"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 31, 196, 0], 24, "reserved (AS112)"),
        ([192, 52, 193, 0], 24, "reserved (AMT)"),
        ([192, 88, 99, 0], 24, "reserved (6to4 relay)"),
        ([192, 168, 0, 0], 16, "private"),
        ([192, 175, 48, 0], 24, "reserved (AS112)"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([255, 255, 255, 255], 32, "broadcast"),
        ([240, 0, 0, 0], 4, "reserved"),
    ];
    RANGES
        .iter()
        .find(|(network, prefix, _)| in_v4(ip, *network, *prefix))
        .map(|(_, _, class)| *class)
}

fn in_v6(ip: Ipv6Addr, network: u128, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == network & mask
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Addresses that carry an IPv4 address are judged by it: a mapped or NAT64 address of
    // 127.0.0.1 reaches 127.0.0.1.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    if in_v6(ip, 0, 96) {
        // IPv4-compatible (deprecated), ::a.b.c.d.
        return v4_class(Ipv4Addr::from(bits as u32)).or(Some("reserved (IPv4-compatible)"));
    }
    if in_v6(ip, 0x0064_ff9b << 96, 96) {
        return v4_class(Ipv4Addr::from(bits as u32));
    }
    if in_v6(ip, 0x2002 << 112, 16) {
        return v4_class(Ipv4Addr::from((bits >> 80) as u32));
    }
    const RANGES: &[(u128, u32, &str)] = &[
        (0x0064_ff9b_0001 << 80, 48, "private (local-use NAT64)"),
        (0x0100 << 112, 64, "reserved (discard-only)"),
        (0x2001_0db8 << 96, 32, "documentation"),
        (0x2001_0000 << 96, 32, "reserved (Teredo)"),
        (
            0x2001_0000 << 96,
            23,
            "reserved (IETF protocol assignments)",
        ),
        (0x3fff << 112, 20, "documentation"),
        (0x5f00 << 112, 16, "reserved (SRv6)"),
        (0xfc00 << 112, 7, "unique local"),
        (0xfe80 << 112, 10, "link-local"),
        (0xfec0 << 112, 10, "site-local"),
        (0xff00 << 112, 8, "multicast"),
    ];
    if let Some((_, _, class)) = RANGES
        .iter()
        .find(|(network, prefix, _)| in_v6(ip, *network, *prefix))
    {
        return Some(class);
    }
    // Only 2000::/3 is allocated as global unicast; everything else is reserved.
    if !in_v6(ip, 0x2000 << 112, 3) {
        return Some("reserved");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Guard {
        Guard::new(vec![], vec![]).unwrap()
    }

    fn refused_class(guard: &Guard, host: &str) -> &'static str {
        let ip: IpAddr = normalize_host(host).parse().unwrap();
        match guard.check_address(host, ip) {
            Err(Refusal::NotPublic { class, .. }) => class,
            other => panic!("{host}: {other:?}"),
        }
    }

    #[test]
    fn non_public_addresses_are_refused_by_class() {
        let guard = open();
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("10.1.2.3", "private"),
            ("192.168.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.7", "documentation"),
            ("2001:db8::1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.1", "benchmarking"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fec0::1", "site-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::1", "private"),
            ("2001::1", "reserved (Teredo)"),
            ("100::1", "reserved (discard-only)"),
            ("4000::1", "reserved"),
        ];
        for (address, class) in cases {
            assert_eq!(refused_class(&guard, address), class, "{address}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let guard = open();
        for address in [
            "8.8.8.8",
            "142.250.74.10",
            "172.32.0.1",
            "100.128.0.1",
            "198.20.0.1",
            "2607:f8b0:4004:c07::5f",
            "2a00:1450:4001:82b::200a",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(guard.check_address(address, ip), Ok(()), "{address}");
        }
    }

    #[tokio::test]
    async fn literals_and_localhost_are_refused_with_a_message_that_says_how_to_allow_them() {
        let guard = open();
        let refusal = guard.resolve("127.0.0.1", 443).await.unwrap_err();
        assert_eq!(refusal.code(), "EndpointNotPublic");
        assert_eq!(
            refusal.to_string(),
            "endpoint host is 127.0.0.1, a loopback address: only public addresses are allowed \
             unless the app's webpush.allow_private lists it"
        );
        let refusal = guard.resolve("[::1]", 443).await.unwrap_err();
        assert!(
            refusal
                .to_string()
                .starts_with("endpoint host is ::1, a loopback address"),
            "{refusal}"
        );
        let refusal = guard.resolve("169.254.169.254", 443).await.unwrap_err();
        assert!(
            refusal.to_string().contains("a link-local address"),
            "{refusal}"
        );
        let refusal = guard.resolve("0.0.0.0", 443).await.unwrap_err();
        assert!(
            refusal.to_string().contains("an unspecified address"),
            "{refusal}"
        );
        let refusal = guard.resolve("fc00::1", 443).await.unwrap_err();
        assert!(
            refusal.to_string().contains("a unique local address"),
            "{refusal}"
        );

        // localhost resolves (from /etc/hosts) to loopback addresses only.
        let refusal = guard.resolve("localhost", 443).await.unwrap_err();
        assert_eq!(refusal.code(), "EndpointNotPublic");
        assert!(
            refusal
                .to_string()
                .starts_with("endpoint host localhost resolves to "),
            "{refusal}"
        );
        assert!(
            refusal.to_string().contains("a loopback address"),
            "{refusal}"
        );
    }

    #[tokio::test]
    async fn a_public_host_is_reached_on_port_443_only() {
        let guard = Guard::new(vec![], vec!["127.0.0.0/8".into()]).unwrap();
        assert_eq!(
            guard.resolve("93.184.216.34", 443).await.unwrap(),
            vec!["93.184.216.34:443".parse().unwrap()]
        );
        let refusal = guard.resolve("93.184.216.34", 22).await.unwrap_err();
        assert_eq!(refusal.code(), "EndpointPortNotAllowed");
        assert!(
            !refusal.summary().contains("93.184"),
            "{}",
            refusal.summary()
        );
        // An address the app allows may be reached on any port (an in-house service).
        assert!(guard.resolve("127.0.0.1", 8443).await.is_ok());
    }

    #[test]
    fn a_summary_names_the_kind_of_address_and_never_the_address() {
        let refusal = Refusal::NotPublic {
            host: "internal.example".into(),
            address: "10.2.3.4".parse().unwrap(),
            class: "private",
        };
        assert_eq!(
            refusal.summary(),
            "EndpointNotPublic: the host is a private address; only public addresses are \
             allowed unless the app's webpush.allow_private lists it"
        );
    }

    #[tokio::test]
    async fn allow_private_admits_its_ranges_only() {
        let guard = Guard::new(
            vec![],
            vec!["127.0.0.0/8".into(), "::1/128".into(), "10.1.2.3".into()],
        )
        .unwrap();
        assert_eq!(
            guard.resolve("127.0.0.1", 8443).await.unwrap(),
            vec!["127.0.0.1:8443".parse().unwrap()]
        );
        assert_eq!(
            guard.resolve("::1", 8443).await.unwrap(),
            vec!["[::1]:8443".parse().unwrap()]
        );
        let all = guard.resolve("localhost", 8443).await.unwrap();
        assert!(
            !all.is_empty() && all.iter().all(|a| a.ip().is_loopback()),
            "{all:?}"
        );
        guard.resolve("10.1.2.3", 1).await.unwrap();
        guard.resolve("::ffff:127.0.0.2", 1).await.unwrap();
        assert_eq!(
            guard.resolve("10.1.2.4", 1).await.unwrap_err().code(),
            "EndpointNotPublic"
        );
        assert_eq!(
            guard.resolve("192.168.1.1", 1).await.unwrap_err().code(),
            "EndpointNotPublic"
        );
        assert_eq!(
            guard.resolve("8.8.8.8", 443).await.unwrap(),
            vec!["8.8.8.8:443".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn the_host_allow_list_matches_whole_labels() {
        let guard = Guard::new(
            vec!["push.example.com".into(), ".Mozilla.com".into()],
            vec!["127.0.0.0/8".into()],
        )
        .unwrap();
        for host in [
            "push.example.com",
            "a.push.example.com",
            "PUSH.example.com.",
            "updates.push.services.mozilla.com",
        ] {
            assert_eq!(guard.check_host(host), Ok(()), "{host}");
        }
        for host in [
            "evilpush.example.com",
            "example.com",
            "push.example.com.evil.net",
            "127.0.0.1",
        ] {
            let refusal = guard.check_host(host).unwrap_err();
            assert_eq!(refusal.code(), "EndpointHostNotAllowed", "{host}");
        }
        // Refused before any lookup: the allow-list comes first.
        let refusal = guard.resolve("127.0.0.1", 443).await.unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "endpoint host 127.0.0.1 is not in the app's webpush.allowed_hosts"
        );
    }

    #[test]
    fn a_name_with_public_and_private_addresses_is_refused() {
        let guard = open();
        let addresses: Vec<SocketAddr> = ["8.8.8.8:443", "10.0.0.7:443", "1.1.1.1:443"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let refusal = guard
            .check_addresses("rebind.example", &addresses)
            .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "endpoint host rebind.example resolves to 10.0.0.7, a private address: only public \
             addresses are allowed unless the app's webpush.allow_private lists it"
        );
        guard
            .check_addresses("public.example", &[addresses[0], addresses[2]])
            .unwrap();
    }

    #[tokio::test]
    async fn unresolvable_names_are_refused() {
        let refusal = open()
            .resolve("no-such-host.invalid", 443)
            .await
            .unwrap_err();
        assert_eq!(refusal.code(), "EndpointUnresolvable");
        assert!(refusal
            .to_string()
            .starts_with("endpoint host no-such-host.invalid does not resolve"));
    }

    #[test]
    fn bad_configuration_names_the_entry() {
        let error = Guard::new(vec![], vec!["10.0.0.0/33".into()]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "webpush.allow_private entry \"10.0.0.0/33\" is not an address or CIDR range: prefix length must be 0 to 32"
        );
        let error = Guard::new(vec![], vec!["localhost".into()]).unwrap_err();
        assert!(error.to_string().contains("not an ip address"), "{error}");
        let error = Guard::new(vec!["https://push.example.com/".into()], vec![]).unwrap_err();
        assert_eq!(error, GuardError::Host("https://push.example.com/".into()));
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let cidr = |text: &str| text.parse::<Cidr>().unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(cidr("127.0.0.0/8").contains(ip("127.9.9.9")));
        assert!(!cidr("127.0.0.0/8").contains(ip("128.0.0.1")));
        assert!(cidr("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::1")));
        assert!(cidr("fd00::/8").contains(ip("fd12::1")));
        assert!(cidr("::1").contains(ip("::1")));
        assert!(!cidr("::1").contains(ip("::2")));
        assert!(cidr("[::1]/128").contains(ip("::1")));
        assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
    }
}
