//! The token bucket behind every rate limit: `rate` per second sustained,
//! up to `burst` at once. Used for subscriber commands (per connection)
//! and for publishes (per API key).

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            tokens: burst as f64,
            rate,
            burst: burst as f64,
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens if there are that many; otherwise takes none.
    pub fn take(&mut self, n: u32, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3);
        assert!(b.take(1, t0) && b.take(2, t0));
        assert!(!b.take(1, t0));
        assert!(b.take(1, t0 + Duration::from_millis(100)));
        assert!(
            !b.take(5, t0 + Duration::from_secs(10)),
            "never more than the burst"
        );
        assert!(b.take(3, t0 + Duration::from_secs(10)));
    }
}
