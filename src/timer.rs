//! Precise sleeps for simulated work. tokio's timer wheel has 1 ms ticks and fires late when
//! its workers are busy, which turns "5 ms of work" into 6 to 7 ms under load and silently
//! lowers what 64 consumers can do; one dedicated thread waiting on a condvar is accurate to
//! tens of microseconds and wakes the async task through a oneshot channel.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

struct Due {
    at: Instant,
    seq: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Timer {
    // A std Mutex, not a tokio one: it is never held across an await.
    heap: Mutex<(BinaryHeap<Reverse<Due>>, u64)>,
    cv: Condvar,
}

static TIMER: OnceLock<&'static Timer> = OnceLock::new();

fn timer() -> &'static Timer {
    TIMER.get_or_init(|| {
        let t: &'static Timer =
            Box::leak(Box::new(Timer { heap: Mutex::new((BinaryHeap::new(), 0)), cv: Condvar::new() }));
        std::thread::Builder::new().name("precise-timer".into()).spawn(move || run(t)).expect("spawn timer thread");
        t
    })
}

fn run(t: &'static Timer) {
    let mut g = t.heap.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        while g.0.peek().is_some_and(|Reverse(d)| d.at <= now) {
            let Reverse(d) = g.0.pop().expect("peeked");
            let _ = d.tx.send(());
        }
        g = match g.0.peek().map(|Reverse(d)| d.at) {
            Some(at) => t.cv.wait_timeout(g, at.saturating_duration_since(now)).unwrap_or_else(|e| e.into_inner()).0,
            None => t.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// Sleeps for `d`, precisely (see the module doc).
pub async fn sleep(d: Duration) {
    if d.is_zero() {
        return;
    }
    let at = Instant::now() + d;
    let (tx, rx) = oneshot::channel();
    let t = timer();
    {
        let mut g = t.heap.lock().unwrap_or_else(|e| e.into_inner());
        g.1 += 1;
        let seq = g.1;
        let earliest = g.0.peek().is_none_or(|Reverse(e)| at < e.at);
        g.0.push(Reverse(Due { at, seq, tx }));
        if earliest {
            t.cv.notify_one();
        }
    }
    let _ = rx.await;
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sleeps_at_least_the_duration_and_wakes_in_order() {
        let start = std::time::Instant::now();
        let (a, b) = tokio::join!(
            async {
                super::sleep(std::time::Duration::from_millis(3)).await;
                std::time::Instant::now()
            },
            async {
                super::sleep(std::time::Duration::from_millis(1)).await;
                std::time::Instant::now()
            }
        );
        assert!(b < a);
        assert!(a.duration_since(start) >= std::time::Duration::from_millis(3));
    }
}
