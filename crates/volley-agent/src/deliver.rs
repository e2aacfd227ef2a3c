//! Delivering one chunk: many concurrent sends, each through its app's breaker and rate
//! limit, retried by the retry policy, and one report.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;
use volley_contracts::{
    ApnsRender, ChunkFailure, ChunkReport, ErrorCode, FcmRender, TokenList, WebPushRender,
    WireError,
};
use volley_provider::{Outcome, Reason};

use crate::breaker::{Admit, Breaker, Signal, Transition};
use crate::limit::RateLimit;
use crate::ops::LaneMetrics;
use crate::retry::{decide, Decision, RetryPolicy, RetryState};

/// One app's provider on this agent: its breaker and rate limit, shared by all its chunks.
#[derive(Debug)]
pub(crate) struct Lane {
    /// `app/provider`, for logs.
    pub(crate) name: String,
    pub(crate) breaker: Mutex<Breaker>,
    pub(crate) limit: Option<RateLimit>,
    /// Longest a notification waits for an open breaker.
    pub(crate) max_wait: Duration,
    /// Its metrics, resolved once.
    pub(crate) metrics: LaneMetrics,
}

/// The time limits of one chunk's notifications.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// No send starts at or after this (the chunk must report before the controller's
    /// deadline).
    pub(crate) deadline: Instant,
    /// No retry starts at or after this: the notification's expiration.
    pub(crate) expiry: Option<Instant>,
    /// How long the chunk already waited for the breaker before it was accepted.
    pub(crate) waited: Duration,
    /// Whether the chunk's unsent rest may be handed back to the controller when its app's
    /// circuit opens (see [`Sent::returned`]): not once the circuit has been open for
    /// `max_wait`, when an outage must end jobs rather than move them around.
    pub(crate) hand_back: bool,
}

/// What one chunk's sends came to.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// The notifications with a final outcome, and the possible duplicates among all of them
    /// (also those returned after a send that may have reached the provider: another agent
    /// sends them again).
    pub(crate) report: ChunkReport,
    /// The indices given back unsent, ascending: the app's circuit opened while they had no
    /// final outcome. None of their sends is in flight any more, and none starts after.
    /// Handing them back lets other agents carry them instead of failing them here as
    /// `CircuitOpen` after `max_wait`, and frees this agent's window slot for other apps.
    pub(crate) returned: Vec<u32>,
}

impl Sent {
    /// Whether the whole chunk went back untouched: nothing final, nothing possibly sent.
    pub(crate) fn untouched(&self) -> bool {
        self.report == ChunkReport::default()
    }
}

/// A notification given back without a final outcome; `possible_duplicates` counts its sends
/// that may have reached the provider and the retries after them.
#[derive(Debug, Clone, Copy)]
struct Returned {
    possible_duplicates: u32,
}

/// Whether one chunk is being handed back: set once, by the first of its notifications to
/// find its app's circuit open; every other one then stops at its next step.
#[derive(Debug, Default)]
struct HandBack {
    set: AtomicBool,
    /// Wakes the notifications waiting (for a retry, the circuit or the rate limit).
    wake: Notify,
}

impl HandBack {
    fn is_set(&self) -> bool {
        self.set.load(Ordering::Relaxed)
    }

    fn start(&self) {
        if !self.set.swap(true, Ordering::Relaxed) {
            self.wake.notify_waiters();
        }
    }

    /// Waits for `until`, or less if the hand-back starts meanwhile.
    async fn sleep_until(&self, until: Instant) {
        let woken = self.wake.notified();
        if self.is_set() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            () = woken => {}
        }
    }
}

impl Limits {
    fn retry_deadline(&self) -> Instant {
        self.expiry
            .map_or(self.deadline, |expiry| expiry.min(self.deadline))
    }
}

/// The notification expired before the agent got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired;

/// When an APNs notification stops being worth retrying: its `apns-expiration` (epoch
/// seconds) on this clock; 0 means "try once" (no retry).
pub(crate) fn apns_expiry(
    expiration: Option<u64>,
    now: Instant,
    epoch_now: SystemTime,
) -> Result<Option<Instant>, Expired> {
    match expiration {
        None => Ok(None),
        Some(0) => Ok(Some(now)),
        Some(seconds) => {
            let since_epoch = epoch_now.duration_since(UNIX_EPOCH).unwrap_or_default();
            match Duration::from_secs(seconds).checked_sub(since_epoch) {
                Some(left) if !left.is_zero() => Ok(Some(now + left)),
                _ => Err(Expired),
            }
        }
    }
}

/// The `android.ttl` of an FCM rendering (`"3600s"`, `"0.5s"`), read once per chunk.
///
/// The chunk does not carry the job's creation time, so the agent treats the TTL as a budget
/// for retries from when it received the chunk; `"0s"` means "try once".
pub(crate) fn fcm_ttl(render: &FcmRender) -> Option<Duration> {
    let mut body = render.prefix.to_vec();
    body.extend_from_slice(&render.suffix);
    let root: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let ttl = root["message"]["android"]["ttl"].as_str()?;
    let seconds: f64 = ttl.strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// The chunk's APNs rendering as the client's prepared notification, and the `apns-id` the
/// caller chose.
///
/// The topic is the caller's when the job names one; otherwise the app's bundle id with the
/// suffix Apple requires for the push type (`.voip`, `.push-type.liveactivity`...).
pub(crate) fn prepare_apns(
    bundle_id: &str,
    render: &ApnsRender,
    default_collapse_id: Option<&str>,
) -> Result<(volley_apns::PreparedNotification, Option<uuid::Uuid>), WireError> {
    let invalid = |error: String| WireError::new(ErrorCode::InvalidArgument, error);
    let push_type: volley_apns::PushType = render
        .push_type
        .parse()
        .map_err(|error: volley_apns::PayloadError| invalid(error.to_string()))?;
    let topic = match &render.topic {
        Some(topic) => topic.clone(),
        None => push_type.topic_for(bundle_id).into_owned(),
    };
    let apns_id = render
        .apns_id
        .as_deref()
        .map(|id| {
            id.parse::<uuid::Uuid>()
                .map_err(|_| invalid("apns_id is not a uuid".into()))
        })
        .transpose()?;
    let notification = volley_apns::Notification {
        topic,
        push_type,
        priority: Some(
            volley_apns::Priority::from_u8(render.priority).map_err(|e| invalid(e.to_string()))?,
        ),
        expiration: render.expiration,
        collapse_id: render
            .collapse_id
            .clone()
            .or_else(|| default_collapse_id.map(str::to_owned)),
        ..volley_apns::Notification::default()
    };
    let prepared = notification
        .prepare_with_payload(render.payload.clone())
        .map_err(|error| invalid(error.to_string()))?;
    Ok((prepared, apns_id))
}

/// The chunk's FCM rendering as the client's prepared message (to tokens, a topic or a
/// condition, as the rendering's prefix says), sent exactly as the front rendered it.
pub(crate) fn prepare_fcm(render: &FcmRender) -> Result<volley_fcm::PreparedMessage, WireError> {
    volley_fcm::PreparedMessage::from_parts(&render.prefix, render.suffix.clone())
        .map_err(|error| WireError::new(ErrorCode::InvalidArgument, error.to_string()))
}

/// The chunk's Web Push rendering as the client's prepared notification (the message is
/// encrypted per subscription as it is sent).
pub(crate) fn prepare_webpush(
    render: &WebPushRender,
) -> Result<volley_webpush::Prepared, WireError> {
    let urgency = match render.urgency.as_deref() {
        None => None,
        Some(text) => Some(text.parse().map_err(|_| {
            WireError::new(
                ErrorCode::InvalidArgument,
                format!("unknown web push urgency {text:?}"),
            )
        })?),
    };
    Ok(volley_webpush::Prepared {
        payload: render.payload.clone(),
        ttl: render.ttl,
        urgency,
        topic: render.topic.clone(),
    })
}

/// Sends one notification per token, `concurrency` at a time, and reports the outcomes.
///
/// A notification waiting (for a retry, an open breaker or a rate-limit slot) holds no
/// HTTP/2 stream: its previous request is answered and its next one not yet made.
pub(crate) async fn deliver_all<'a, F, Fut>(
    tokens: &'a TokenList,
    concurrency: usize,
    retry: RetryPolicy,
    lane: &Lane,
    limits: Limits,
    send: F,
) -> Sent
where
    F: Fn(&'a str) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let send = &send;
    let hand_back = &HandBack::default();
    let mut sent = Sent::default();
    // A single-notification job's chunk (most of an ingest) needs no stream of sends.
    if tokens.len() == 1 {
        let token = tokens.get(0).unwrap_or_default();
        let ending = deliver_one(token, retry, lane, limits, hand_back, send).await;
        settle(&mut sent, 0, ending);
        return sent;
    }
    // Indices, not `(index, &str)` items: a borrowed item type defeats the `Send` proof of
    // the tarpc handler future (higher-ranked lifetime inference).
    let mut endings = futures::stream::iter(0..tokens.len())
        .map(|index| {
            let token = tokens.get(index).unwrap_or_default();
            async move {
                let ending = deliver_one(token, retry, lane, limits, hand_back, send).await;
                (index as u32, ending)
            }
        })
        .buffer_unordered(concurrency);
    // Every notification ends, also after a hand-back (those not started end at once): the
    // answer goes only when none of the chunk's sends is in flight.
    while let Some((index, ending)) = endings.next().await {
        settle(&mut sent, index, ending);
    }
    sent.returned.sort_unstable();
    sent
}

/// Adds one notification's ending to its chunk's answer.
fn settle(sent: &mut Sent, index: u32, ending: Result<(Outcome, RetryState), Returned>) {
    match ending {
        Ok((outcome, state)) => record(&mut sent.report, index, outcome, state.possible_duplicates),
        Err(returned) => {
            sent.report.possible_duplicates += returned.possible_duplicates;
            sent.returned.push(index);
        }
    }
}

/// Adds one notification's final outcome to its chunk's report.
fn record(report: &mut ChunkReport, index: u32, outcome: Outcome, duplicates: u32) {
    report.possible_duplicates += duplicates;
    match outcome {
        Outcome::Delivered => report.delivered += 1,
        Outcome::InvalidToken {
            reason,
            timestamp_ms,
        } => report
            .invalid
            .push((index, reason.to_string(), timestamp_ms)),
        failed => report.failed.push(ChunkFailure {
            index,
            class: failed.class().to_owned(),
            reason: failed.reason().map(ToString::to_string).unwrap_or_default(),
        }),
    }
}

/// A report in which every token failed because the notification had expired.
pub(crate) fn expired_report(tokens: usize) -> ChunkReport {
    ChunkReport {
        failed: (0..tokens as u32)
            .map(|index| ChunkFailure {
                index,
                class: "expired".into(),
                reason: "Expired".into(),
            })
            .collect(),
        ..ChunkReport::default()
    }
}

fn given_up(reason: &'static str) -> Outcome {
    Outcome::Transient {
        reason: Reason::known(reason),
        retry_after: None,
        maybe_delivered: false,
    }
}

/// Sends one notification until its outcome is final, or until its chunk is handed back.
async fn deliver_one<'a, F, Fut>(
    token: &'a str,
    retry: RetryPolicy,
    lane: &Lane,
    limits: Limits,
    hand_back: &HandBack,
    send: &F,
) -> Result<(Outcome, RetryState), Returned>
where
    F: Fn(&'a str) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut state = RetryState::default();
    // Whether some send of this notification may have reached the provider, and how many
    // sends followed such a one: if it goes back, another agent's send is one more.
    let mut maybe_sent = false;
    let mut resent = 0;
    let returned = |maybe_sent: bool, resent: u32| Returned {
        possible_duplicates: resent + u32::from(maybe_sent),
    };
    let mut waited = limits.waited;
    // The first send is always made (an expired notification never gets here); retries
    // stop at the expiration.
    let mut latest = limits.deadline;
    loop {
        if hand_back.is_set() {
            return Err(returned(maybe_sent, resent));
        }
        let now = Instant::now();
        let (admitted, open) = {
            let mut breaker = lane.breaker.lock();
            (breaker.admit(now), breaker.open_until(now).is_some())
        };
        let probe = match admitted {
            Admit::Send { probe } => probe,
            Admit::WaitUntil(_) if open && limits.hand_back => {
                // Opened by another chunk's sends: this one goes back too rather than wait.
                hand_back.start();
                return Err(returned(maybe_sent, resent));
            }
            Admit::WaitUntil(until) => {
                waited += until - now;
                if waited > lane.max_wait || until >= latest {
                    return Ok((given_up("CircuitOpen"), state));
                }
                hand_back.sleep_until(until).await;
                continue;
            }
        };
        if let Some(limit) = &lane.limit {
            match limit.reserve(now, latest) {
                Some(wait) if wait.is_zero() => {}
                Some(wait) => hand_back.sleep_until(now + wait).await,
                None => {
                    if probe {
                        lane.breaker.lock().abandon_probe(now);
                    }
                    return Ok((given_up("RateLimited"), state));
                }
            }
        }
        if hand_back.is_set() {
            if probe {
                lane.breaker.lock().abandon_probe(now);
            }
            return Err(returned(maybe_sent, resent));
        }
        resent += u32::from(maybe_sent);
        let outcome = send(token).await;
        lane.metrics.response(&outcome);
        maybe_sent |= matches!(
            outcome,
            Outcome::Transient {
                maybe_delivered: true,
                ..
            }
        );
        let now = Instant::now();
        let (open, transition) = {
            let mut breaker = lane.breaker.lock();
            let transition = breaker.record(now, Signal::of(&outcome), probe);
            (breaker.open_until(now).is_some(), transition)
        };
        match transition {
            Some(Transition::Opened(cool_down)) => {
                lane.metrics.breaker_opened();
                tracing::warn!(lane = %lane.name, class = outcome.class(), reason = ?outcome.reason().map(Reason::as_str), ?cool_down, "circuit open: sends paused");
            }
            Some(Transition::Closed) => {
                tracing::info!(lane = %lane.name, "circuit closed: sends resume");
            }
            None => {}
        }
        latest = limits.retry_deadline();
        let jitter = || rand::thread_rng().gen::<f64>();
        match decide(&retry, &mut state, &outcome, now, latest, jitter) {
            Decision::Final => return Ok((outcome, state)),
            Decision::Retry(_) if (open && limits.hand_back) || hand_back.is_set() => {
                // Not retried here: another agent sends it.
                hand_back.start();
                return Err(returned(maybe_sent, resent));
            }
            // Waiting here holds no stream: the request is already answered.
            Decision::Retry(delay) => {
                lane.metrics.retried();
                hand_back.sleep_until(Instant::now() + delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcm_messages_go_out_as_rendered_without_a_collapse_key() {
        let message = volley_fcm::FcmMessage {
            data: [("k".to_owned(), "v".to_owned())].into(),
            ..volley_fcm::FcmMessage::default()
        };
        let prepared = volley_fcm::PreparedMessage::new(&message).unwrap();
        let (prefix, suffix) = prepared.parts();
        let render = FcmRender {
            prefix: bytes::Bytes::from_static(prefix),
            suffix: suffix.clone(),
        };
        let body = prepare_fcm(&render).unwrap().body_for("tok");
        assert_eq!(body, prepared.body_for("tok"));
    }

    #[test]
    fn apns_topics_follow_the_push_type_unless_the_caller_names_one() {
        let mut apns = ApnsRender {
            payload: bytes::Bytes::from_static(b"{\"aps\":{}}"),
            push_type: "voip".into(),
            priority: 10,
            expiration: None,
            collapse_id: None,
            topic: None,
            apns_id: Some("123e4567-e89b-12d3-a456-426614174000".into()),
        };
        let (prepared, id) = prepare_apns("com.example", &apns, Some("job-1")).unwrap();
        assert_eq!(prepared.topic(), "com.example.voip");
        assert_eq!(prepared.collapse_id(), Some("job-1"));
        assert!(id.is_some());
        apns.topic = Some("com.other.voip".into());
        apns.push_type = "liveactivity".into();
        let (prepared, _) = prepare_apns("com.example", &apns, None).unwrap();
        assert_eq!(prepared.topic(), "com.other.voip");
        apns.apns_id = Some("not-a-uuid".into());
        assert!(prepare_apns("com.example", &apns, None).is_err());
    }
    use std::sync::atomic::{AtomicU32, Ordering};
    use volley_config::BreakerConfig;

    impl Sent {
        /// The report of a chunk that was not handed back, in whole or part.
        fn whole(self) -> ChunkReport {
            assert!(self.returned.is_empty(), "handed back: {self:?}");
            self.report
        }
    }

    fn lane(max_wait: Duration, rate: Option<u32>, min_requests: u32) -> Lane {
        let now = Instant::now();
        let config = BreakerConfig {
            min_requests,
            credential_failures: 2,
            cool_down: Duration::from_secs(1),
            max_wait,
            ..BreakerConfig::default()
        };
        Lane {
            name: "test/APNs".into(),
            breaker: Mutex::new(Breaker::new(config, Duration::from_secs(10), now)),
            limit: rate.map(|rate| RateLimit::new(rate, now)),
            max_wait,
            metrics: LaneMetrics::detached(),
        }
    }

    fn limits(expiry: Option<Duration>) -> Limits {
        let now = Instant::now();
        Limits {
            deadline: now + Duration::from_secs(100),
            expiry: expiry.map(|expiry| now + expiry),
            waited: Duration::ZERO,
            hand_back: false,
        }
    }

    fn unavailable(retry_after: Option<u64>, maybe_delivered: bool) -> Outcome {
        Outcome::Transient {
            reason: Reason::known("ServiceUnavailable"),
            retry_after: retry_after.map(Duration::from_secs),
            maybe_delivered,
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(1),
    };

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_permanent_ones_are_not() {
        let tokens: TokenList = ["ok", "flaky", "dead", "down"].into_iter().collect();
        let calls = AtomicU32::new(0);
        let flaky_calls = AtomicU32::new(0);
        let lane = lane(Duration::from_secs(60), None, 100);
        let report = deliver_all(&tokens, 8, POLICY, &lane, limits(None), |token| {
            calls.fetch_add(1, Ordering::Relaxed);
            let flaky = if token == "flaky" {
                flaky_calls.fetch_add(1, Ordering::Relaxed)
            } else {
                0
            };
            async move {
                match token {
                    "ok" => Outcome::Delivered,
                    "flaky" if flaky == 0 => unavailable(None, true),
                    "flaky" => Outcome::Delivered,
                    "dead" => Outcome::InvalidToken {
                        reason: Reason::known("Unregistered"),
                        timestamp_ms: Some(7),
                    },
                    _ => unavailable(Some(1), false),
                }
            }
        })
        .await
        .whole();
        assert_eq!(report.delivered, 2);
        assert_eq!(
            report.invalid,
            vec![(2, "Unregistered".to_owned(), Some(7))]
        );
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].index, 3);
        assert_eq!(report.failed[0].class, "transient");
        assert_eq!(report.possible_duplicates, 1);
        // ok 1 + flaky 2 + dead 1 + down 3
        assert_eq!(calls.load(Ordering::Relaxed), 7);
        assert_eq!(lane.metrics.responses_so_far(), 7);
        assert_eq!(lane.metrics.retries_so_far(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_expiration() {
        let tokens: TokenList = ["a", "b"].into_iter().collect();
        let calls = AtomicU32::new(0);
        let lane = lane(Duration::from_secs(60), None, 4);
        // Retry-After 1 s, expiry in 1.5 s: one retry fits, the second would start too late.
        let policy = RetryPolicy {
            max_attempts: 10,
            ..POLICY
        };
        let expiry = Some(Duration::from_millis(1500));
        let report = deliver_all(&tokens, 8, policy, &lane, limits(expiry), |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { unavailable(Some(1), false) }
        })
        .await
        .whole();
        assert_eq!(report.failed.len(), 2);
        assert_eq!(calls.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn credential_errors_pause_the_app_and_sends_resume_after_a_good_probe() {
        let tokens: TokenList = (0..20).map(|i| format!("t{i}")).collect();
        let start = Instant::now();
        let calls = AtomicU32::new(0);
        let lane = lane(Duration::from_secs(60), None, 4);
        // The credentials are refused for the first 1.5 s (as if being rotated).
        let report = deliver_all(&tokens, 20, POLICY, &lane, limits(None), |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            let refused = start.elapsed() < Duration::from_millis(1500);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if refused {
                    Outcome::Credential {
                        reason: Reason::known("InvalidProviderToken"),
                    }
                } else {
                    Outcome::Delivered
                }
            }
        })
        .await
        .whole();
        assert_eq!(report.delivered, 20, "{:?}", report.failed);
        // 20 first sends, then probes at 1 s (refused) and 3 s (good), then the 19 others:
        // the open breaker kept them from burning their attempts.
        assert_eq!(calls.load(Ordering::Relaxed), 20 + 2 + 19);
    }

    #[tokio::test(start_paused = true)]
    async fn notifications_give_up_when_the_breaker_stays_open_too_long() {
        let tokens: TokenList = (0..10).map(|i| format!("t{i}")).collect();
        let calls = AtomicU32::new(0);
        let lane = lane(Duration::from_secs(5), None, 4);
        let policy = RetryPolicy {
            max_attempts: 100,
            ..POLICY
        };
        let report = deliver_all(&tokens, 10, policy, &lane, limits(None), |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { unavailable(None, false) }
        })
        .await
        .whole();
        assert_eq!(report.failed.len(), 10);
        assert!(report
            .failed
            .iter()
            .all(|f| f.class == "transient" && f.reason == "CircuitOpen"));
        // 10 first sends open the breaker; then only probes (1, 2, 4 s of cool-down).
        assert!(calls.load(Ordering::Relaxed) <= 10 + 4, "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_paces_sends() {
        let tokens: TokenList = (0..300).map(|i| format!("t{i}")).collect();
        let start = Instant::now();
        let lane = lane(Duration::from_secs(60), Some(100), 4);
        let report = deliver_all(&tokens, 50, POLICY, &lane, limits(None), |_| async {
            Outcome::Delivered
        })
        .await
        .whole();
        assert_eq!(report.delivered, 300);
        // A burst of 10, then 290 at 100/s.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(2890) && elapsed < Duration::from_millis(2950),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_is_handed_back_when_the_breaker_opens_before_anything_was_delivered() {
        let tokens: TokenList = (0..50).map(|i| format!("t{i}")).collect();
        let calls = AtomicU32::new(0);
        let lane = lane(Duration::from_secs(60), None, 4);
        let limits = Limits {
            hand_back: true,
            ..limits(None)
        };
        let sent = deliver_all(&tokens, 10, POLICY, &lane, limits, |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                unavailable(Some(1), false)
            }
        })
        .await;
        assert!(sent.untouched(), "{sent:?}");
        assert_eq!(sent.returned, (0..50).collect::<Vec<u32>>());
        // Only the first wave went out, and all of it was answered before the hand-back.
        assert_eq!(calls.load(Ordering::Relaxed), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn the_unsent_rest_of_a_partly_delivered_chunk_is_handed_back() {
        let tokens: TokenList = (0..40).map(|i| format!("t{i}")).collect();
        for (first, delivered, duplicates) in [
            (Outcome::Delivered, 1, 0),
            // t0 may have been delivered: it goes back, a possible duplicate when resent.
            (unavailable(None, true), 0, 1),
        ] {
            let calls = AtomicU32::new(0);
            let lane = lane(Duration::from_secs(3), None, 4);
            let limits = Limits {
                hand_back: true,
                ..limits(None)
            };
            let sent = deliver_all(&tokens, 8, POLICY, &lane, limits, |token| {
                calls.fetch_add(1, Ordering::Relaxed);
                let outcome = if token == "t0" {
                    first.clone()
                } else {
                    unavailable(None, false)
                };
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    outcome
                }
            })
            .await;
            assert!(!sent.untouched());
            assert_eq!(sent.report.delivered, delivered);
            assert!(sent.report.failed.is_empty(), "{sent:?}");
            assert_eq!(sent.report.possible_duplicates, duplicates);
            assert_eq!(sent.returned, (delivered..40).collect::<Vec<u32>>());
            // The first wave only: nothing more went out once the circuit opened.
            assert_eq!(calls.load(Ordering::Relaxed), 8);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_taken_after_max_wait_fails_fast_rather_than_going_back() {
        let tokens: TokenList = (0..8).map(|i| format!("t{i}")).collect();
        let lane = lane(Duration::from_secs(3), None, 4);
        // `hand_back` false: the circuit had been open for `max_wait` when the chunk came.
        let sent = deliver_all(&tokens, 8, POLICY, &lane, limits(None), |_| async {
            unavailable(None, false)
        })
        .await;
        assert!(sent.returned.is_empty());
        assert_eq!(sent.report.failed.len(), 8);
    }

    #[test]
    fn expirations_and_ttls_become_retry_deadlines() {
        let now = Instant::now();
        let epoch = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(apns_expiry(None, now, epoch), Ok(None));
        assert_eq!(apns_expiry(Some(0), now, epoch), Ok(Some(now)));
        assert_eq!(
            apns_expiry(Some(1_000_060), now, epoch),
            Ok(Some(now + Duration::from_secs(60)))
        );
        assert_eq!(apns_expiry(Some(1_000_000), now, epoch), Err(Expired));
        assert_eq!(apns_expiry(Some(5), now, epoch), Err(Expired));

        let render = |android: &str| {
            let message = format!(r#"{{"message":{{"token":"","android":{android}}}}}"#);
            let split = message.find(r#""token":""#).unwrap() + 9;
            FcmRender {
                prefix: bytes::Bytes::copy_from_slice(&message.as_bytes()[..split]),
                suffix: bytes::Bytes::copy_from_slice(&message.as_bytes()[split..]),
            }
        };
        assert_eq!(
            fcm_ttl(&render(r#"{"ttl":"3600s"}"#)),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            fcm_ttl(&render(r#"{"ttl":"0.5s"}"#)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(fcm_ttl(&render(r#"{"ttl":"0s"}"#)), Some(Duration::ZERO));
        assert_eq!(fcm_ttl(&render(r#"{"priority":"high"}"#)), None);
        assert_eq!(fcm_ttl(&render(r#"{"ttl":"soon"}"#)), None);
    }
}
