//! The agent registry: who is registered, when each was last heard from, and which apps and
//! platforms any agent has ever declared (kept in the store, so that a restarted controller
//! still knows an app is served while its agents come back).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use volley_contracts::{AgentId, AgentInfo, AgentStat, Platform};

/// A registered agent.
#[derive(Debug)]
pub(crate) struct AgentEntry {
    pub(crate) info: AgentInfo,
    last_seen: Instant,
    /// When its link certificate expires, as its last heartbeat said.
    certificate_expires_at: Option<i64>,
    /// The certificate name of the link it registered on (`None` on insecure links): only a
    /// link of that name may heartbeat for it.
    peer_name: Option<String>,
    counters: AgentCounters,
    /// Cancelled when it is dropped: its dispatcher's workers stop.
    pub(crate) stop: CancellationToken,
}

/// Every registered agent, and what agents have declared.
#[derive(Debug)]
pub(crate) struct Registry {
    agents: Mutex<HashMap<AgentId, AgentEntry>>,
    next_id: AtomicU64,
    /// Per app, the platforms (by index) some agent has declared, in this run or an earlier
    /// one. Read by every submission: looked up by the app's name, no key to build.
    declared: Mutex<HashMap<String, [bool; Platform::ALL.len()]>>,
}

impl Registry {
    /// A registry that knows the pairs declared in earlier runs.
    pub(crate) fn new(declared: impl IntoIterator<Item = (String, Platform)>) -> Registry {
        let mut known: HashMap<String, [bool; Platform::ALL.len()]> = HashMap::new();
        for (app, platform) in declared {
            known.entry(app).or_default()[platform.index()] = true;
        }
        Registry {
            agents: Mutex::default(),
            next_id: AtomicU64::new(1),
            declared: Mutex::new(known),
        }
    }

    /// Adds an agent; returns its id and the (app, platform) pairs it is the first to
    /// declare (for the store).
    pub(crate) fn insert(
        &self,
        info: AgentInfo,
        peer_name: Option<String>,
        stop: CancellationToken,
    ) -> (AgentId, AgentCounters, Vec<(String, Platform)>) {
        // What it declares is known before its id is taken: admission reads a taken id as
        // "agents have registered" and then trusts the declarations.
        let mut fresh = Vec::new();
        {
            let mut declared = self.declared.lock();
            for served in &info.apps {
                let known = declared.entry(served.app.clone()).or_default();
                for platform in &served.platforms {
                    if !std::mem::replace(&mut known[platform.index()], true) {
                        fresh.push((served.app.clone(), *platform));
                    }
                }
            }
        }
        let id = AgentId(self.next_id.fetch_add(1, Ordering::AcqRel));
        let counters = AgentCounters::default();
        self.agents.lock().insert(
            id,
            AgentEntry {
                info,
                last_seen: Instant::now(),
                certificate_expires_at: None,
                peer_name,
                counters: counters.clone(),
                stop,
            },
        );
        (id, counters, fresh)
    }

    /// Removes an agent and stops its dispatcher; returns it if it was registered.
    pub(crate) fn remove(&self, id: AgentId) -> Option<AgentEntry> {
        let entry = self.agents.lock().remove(&id)?;
        entry.stop.cancel();
        Some(entry)
    }

    /// Notes a heartbeat from a link whose certificate names `peer_name`.
    pub(crate) fn touch(
        &self,
        id: AgentId,
        peer_name: Option<&str>,
        certificate_expires_at: Option<i64>,
    ) -> Touch {
        match self.agents.lock().get_mut(&id) {
            Some(entry) if entry.peer_name.is_some() && entry.peer_name.as_deref() != peer_name => {
                Touch::OtherPeer
            }
            Some(entry) => {
                entry.last_seen = Instant::now();
                entry.certificate_expires_at = certificate_expires_at;
                Touch::Renewed
            }
            None => Touch::Unknown,
        }
    }

    /// Whether a call from a link whose certificate names `peer_name` may speak for agent
    /// `id` (as for a heartbeat, without counting as one).
    pub(crate) fn check(&self, id: AgentId, peer_name: Option<&str>) -> Touch {
        match self.agents.lock().get(&id) {
            Some(entry) if entry.peer_name.is_some() && entry.peer_name.as_deref() != peer_name => {
                Touch::OtherPeer
            }
            Some(_) => Touch::Renewed,
            None => Touch::Unknown,
        }
    }

    /// A registered agent's counters, and the token cancelled when it is dropped.
    pub(crate) fn handle(&self, id: AgentId) -> Option<(AgentCounters, CancellationToken)> {
        self.agents
            .lock()
            .get(&id)
            .map(|entry| (entry.counters.clone(), entry.stop.clone()))
    }

    /// Agents not heard from for longer than `timeout`.
    pub(crate) fn silent(&self, timeout: Duration) -> Vec<AgentId> {
        self.agents
            .lock()
            .iter()
            .filter(|(_, entry)| entry.last_seen.elapsed() > timeout)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether a job for `app` on `platform` may be accepted: some agent has declared the
    /// pair, or no agent has registered yet since the start (agents may still be starting).
    pub(crate) fn may_be_served(&self, app: &str, platform: Platform) -> bool {
        // Ids start at 1: none handed out yet means no agent has registered since the start,
        // and an app no agent ever declared may still be served by one that is starting.
        if self.next_id.load(Ordering::Acquire) == 1 {
            return true;
        }
        self.declared
            .lock()
            .get(app)
            .is_some_and(|platforms| platforms[platform.index()])
    }

    /// The registered agents, for the stats.
    pub(crate) fn stats(&self) -> Vec<AgentStat> {
        let mut agents: Vec<AgentStat> = self
            .agents
            .lock()
            .iter()
            .map(|(id, entry)| AgentStat {
                id: *id,
                name: entry.info.name.clone(),
                addr: entry.info.addr.clone(),
                in_flight: entry.counters.in_flight.load(Ordering::Relaxed) as u32,
                chunks_done: entry.counters.chunks_done.load(Ordering::Relaxed),
                certificate_expires_at: entry.certificate_expires_at,
                ops_addr: entry.info.ops_addr.clone(),
                // Filled in by the scheduler, which knows the pauses.
                paused: Vec::new(),
            })
            .collect();
        agents.sort_by_key(|agent| agent.id.0);
        agents
    }
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Touch {
    /// The agent is registered; its heartbeat is noted.
    Renewed,
    /// No agent has this id (any more).
    Unknown,
    /// The agent registered on a link of another certificate name.
    OtherPeer,
}

/// The counters a registered agent's dispatcher updates and the stats read.
#[derive(Debug, Clone, Default)]
pub(crate) struct AgentCounters {
    /// Chunks out with the agent right now.
    pub(crate) in_flight: Arc<AtomicU64>,
    pub(crate) chunks_done: Arc<AtomicU64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley_contracts::ServedApp;

    #[test]
    fn only_declared_pairs_are_served_once_an_agent_registered() {
        let registry = Registry::new([("old".to_owned(), Platform::Fcm)]);
        assert!(
            registry.may_be_served("anything", Platform::Apns),
            "before any agent registered"
        );
        let info = AgentInfo {
            name: "a".into(),
            addr: "x".into(),
            apps: vec![ServedApp {
                app: "shop".into(),
                platforms: vec![Platform::Apns],
            }],
            window: 4,
            ops_addr: String::new(),
        };
        let (id, _, fresh) = registry.insert(info.clone(), None, CancellationToken::new());
        assert_eq!(fresh, [("shop".to_owned(), Platform::Apns)]);
        assert!(registry.may_be_served("shop", Platform::Apns));
        assert!(!registry.may_be_served("shop", Platform::Fcm));
        assert!(
            registry.may_be_served("old", Platform::Fcm),
            "declared earlier"
        );
        assert!(!registry.may_be_served("other", Platform::Apns));
        // A second agent with the same apps declares nothing new; declarations outlive agents.
        let (_, _, fresh) = registry.insert(info, None, CancellationToken::new());
        assert!(fresh.is_empty());
        registry.remove(id);
        assert!(registry.may_be_served("shop", Platform::Apns));
    }

    #[test]
    fn only_the_certificate_an_agent_registered_with_renews_it() {
        let registry = Registry::new([]);
        let info = AgentInfo {
            name: "a1".into(),
            addr: "x".into(),
            apps: Vec::new(),
            window: 1,
            ops_addr: String::new(),
        };
        let (id, _, _) = registry.insert(info, Some("a1".into()), CancellationToken::new());
        assert_eq!(registry.touch(id, Some("a2"), None), Touch::OtherPeer);
        assert_eq!(registry.touch(id, None, None), Touch::OtherPeer);
        assert_eq!(registry.touch(id, Some("a1"), Some(7)), Touch::Renewed);
        assert_eq!(registry.check(id, Some("a2")), Touch::OtherPeer);
        assert_eq!(registry.check(id, Some("a1")), Touch::Renewed);
        assert_eq!(registry.stats()[0].certificate_expires_at, Some(7));
        registry.remove(id);
        assert_eq!(registry.touch(id, Some("a1"), None), Touch::Unknown);
        assert_eq!(registry.check(id, Some("a1")), Touch::Unknown);
    }
}
