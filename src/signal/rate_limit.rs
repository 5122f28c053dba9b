//! Token bucket for one connection's incoming messages. Pure logic, driven by the caller's clock.

use std::time::Instant;

/// What to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse this message with `rate_limited`.
    Refuse,
    /// The client keeps flooding after being refused: disconnect it.
    Disconnect,
}

#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Messages refused since the last allowed one.
    refused_in_a_row: u32,
    /// Refusals in a row after which the connection is dropped: a client that ignores
    /// `rate_limited` for this long is not a well-behaved client having a burst.
    disconnect_after: u32,
}

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32, now: Instant) -> RateLimiter {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            per_sec: f64::from(per_sec.max(1)),
            burst,
            tokens: burst,
            last: now,
            refused_in_a_row: 0,
            disconnect_after: per_sec.max(1).saturating_mul(2),
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            Verdict::Allow
        } else {
            self.refused_in_a_row += 1;
            if self.refused_in_a_row > self.disconnect_after {
                Verdict::Disconnect
            } else {
                Verdict::Refuse
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_burst_then_sustained_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(50, 100, t0);
        for _ in 0..100 {
            assert_eq!(rl.check(t0), Verdict::Allow);
        }
        assert_eq!(rl.check(t0), Verdict::Refuse);
        // 20 ms later one more token has accrued.
        assert_eq!(rl.check(t0 + Duration::from_millis(20)), Verdict::Allow);
        assert_eq!(rl.check(t0 + Duration::from_millis(20)), Verdict::Refuse);
        // A client sending at exactly the sustained rate is never refused.
        let mut rl = RateLimiter::new(50, 1, t0);
        for i in 0..500u64 {
            assert_eq!(
                rl.check(t0 + Duration::from_millis(20 * i)),
                Verdict::Allow,
                "msg {i}"
            );
        }
    }

    #[test]
    fn persistent_flood_disconnects() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(10, 10, t0);
        let verdicts: Vec<Verdict> = (0..100).map(|_| rl.check(t0)).collect();
        assert_eq!(verdicts[..10], [Verdict::Allow; 10]);
        assert_eq!(verdicts[10], Verdict::Refuse);
        assert_eq!(*verdicts.last().unwrap(), Verdict::Disconnect);
    }
}
