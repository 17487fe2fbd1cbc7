//! A warning that can repeat thousands of times a second (a failed accept, a refused
//! connection) is logged at most once per interval, saying how many were left out since.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one line through per interval:
/// ```ignore
/// static REFUSED: Throttle = Throttle::new(Duration::from_secs(5));
/// if let Some(suppressed) = REFUSED.ready() {
///     tracing::warn!(suppressed, "connection refused");
/// }
/// ```
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Some(how many were suppressed since the last line) when a line is due now; None (and
    /// the occurrence counted) when one went out less than an interval ago.
    pub fn ready(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match s.last {
            Some(last) if now.duration_since(last) < self.interval => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.ready(), Some(0));
        assert_eq!((0..1000).filter_map(|_| t.ready()).count(), 0);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.ready(), Some(1000));
        assert_eq!(t.ready(), None);
    }
}
