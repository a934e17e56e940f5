//! Restart back-off, the kubelet's CrashLoopBackOff: the first restart is immediate, then
//! each one waits twice as long as the one before, up to a cap; a container that stayed up
//! long enough starts over from no delay.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The wait before the second restart in a row (Kubernetes: 10 s).
    pub base: Duration,
    /// The longest wait (Kubernetes: 5 min).
    pub cap: Duration,
    /// A container that ran this long before it ended starts its back-off over
    /// (Kubernetes: 10 min, twice the cap).
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl BackoffConfig {
    /// How long to wait before a restart, when `step` restarts in a row came before it.
    pub fn delay(&self, step: u32) -> Duration {
        if step == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(step - 1).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_base_to_cap() {
        let backoff = BackoffConfig::default();
        let delays: Vec<u64> = (0..8).map(|step| backoff.delay(step).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff.delay(1000), Duration::from_secs(300));
        let small = BackoffConfig {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(1),
            reset_after: Duration::from_secs(5),
        };
        assert_eq!(small.delay(2), Duration::from_millis(400));
        assert_eq!(small.delay(4), Duration::from_secs(1));
    }
}
