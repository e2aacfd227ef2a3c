//! Bounded polling: a test waits for a condition for at most a given time, never with a bare
//! sleep, and a timeout names what it waited for.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`wait_until`] checks.
const POLL: Duration = Duration::from_millis(20);

/// How often [`wait_until_blocking`] checks: its conditions are cheap (a look at captured
/// lines, `try_wait` on a child), and the process tests act on them as soon as they hold.
const POLL_BLOCKING: Duration = Duration::from_millis(5);

/// Polls `check` every 20 ms until it holds, for at most `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Like [`wait_until`] outside a runtime: checks every 5 ms, blocking the thread in between.
pub fn wait_until_blocking(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(POLL_BLOCKING);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_timeout_names_what_was_awaited() {
        let error = wait_until(Duration::from_millis(50), "the sky to fall", || async {
            false
        })
        .await
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "timed out after 50ms waiting for the sky to fall"
        );
        let error = wait_until_blocking(Duration::from_millis(50), "the sky to fall", || false)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "timed out after 50ms waiting for the sky to fall"
        );
    }

    #[tokio::test]
    async fn a_condition_that_comes_true_ends_the_wait() {
        let mut checks = 0;
        wait_until_blocking(Duration::from_secs(5), "the third check", || {
            checks += 1;
            checks == 3
        })
        .unwrap();
        assert_eq!(checks, 3);
        let flag = std::sync::atomic::AtomicUsize::new(0);
        wait_until(Duration::from_secs(5), "the third check", || async {
            flag.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 2
        })
        .await
        .unwrap();
    }
}
