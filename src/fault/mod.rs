//! Named fault points for chaos scenarios and tests. A point is a place-like name in the code
//! (`consume::before_commit`); `EXPIRY_STREAM_FAULTS` arms some of them in a process:
//!
//! `consume::before_commit=sleep(3000)@0.05;consume::after_read=abort@0.001`
//!
//! Actions: `sleep(MS)` (delays the task: a delayed ack), `abort` (the process dies at once,
//! as with `kill -9`: no cleanup, no commit). `@P` fires with probability P (default 1).
//! Unarmed points cost one relaxed load. Bad specs are refused at startup with the reason.

use std::sync::OnceLock;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Sleep(Duration),
    Abort,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arm {
    pub point: String,
    pub action: Action,
    pub probability: f64,
}

/// Every fault point in the code, so a typo in a spec is an error, not a silent no-op.
pub const POINTS: &[&str] = &["consume::after_read", "consume::before_commit", "consume::after_commit"];

static ARMED: OnceLock<Vec<Arm>> = OnceLock::new();

/// Parses a fault spec (see the module doc).
pub fn parse(spec: &str) -> Result<Vec<Arm>, String> {
    let mut out = vec![];
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (point, rest) = part.split_once('=').ok_or_else(|| format!("fault {part:?}: expected POINT=ACTION"))?;
        let point = point.trim();
        if !POINTS.contains(&point) {
            return Err(format!("fault {part:?}: unknown point {point:?}; known: {}", POINTS.join(", ")));
        }
        let (action, p) = match rest.split_once('@') {
            Some((a, p)) => (a.trim(), p.trim()),
            None => (rest.trim(), "1"),
        };
        let probability: f64 = p
            .parse()
            .ok()
            .filter(|p: &f64| (0.0..=1.0).contains(p))
            .ok_or_else(|| format!("fault {part:?}: probability {p:?} is not in [0, 1]"))?;
        let action = if action == "abort" {
            Action::Abort
        } else if let Some(ms) = action.strip_prefix("sleep(").and_then(|a| a.strip_suffix(')')) {
            let ms: u64 =
                ms.trim().parse().map_err(|_| format!("fault {part:?}: sleep needs milliseconds, got {ms:?}"))?;
            Action::Sleep(Duration::from_millis(ms))
        } else {
            return Err(format!("fault {part:?}: unknown action {action:?}; known: sleep(MS), abort"));
        };
        out.push(Arm { point: point.to_string(), action, probability });
    }
    Ok(out)
}

/// Arms the points named in `EXPIRY_STREAM_FAULTS` (once per process).
pub fn init_from_env() -> Result<(), String> {
    let spec = std::env::var("EXPIRY_STREAM_FAULTS").unwrap_or_default();
    let arms = parse(&spec)?;
    if !arms.is_empty() {
        eprintln!("fault points armed: {spec}");
    }
    let _ = ARMED.set(arms);
    Ok(())
}

/// A fault point. Does nothing unless armed.
pub async fn point(name: &'static str) {
    let Some(arms) = ARMED.get() else { return };
    for a in arms.iter().filter(|a| a.point == name) {
        if a.probability < 1.0 && fastrand::f64() >= a.probability {
            continue;
        }
        match &a.action {
            Action::Sleep(d) => tokio::time::sleep(*d).await,
            Action::Abort => {
                eprintln!("fault point {name}: abort");
                std::process::abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let a = parse("consume::before_commit=sleep(30)@0.5; consume::after_read=abort").unwrap();
        assert_eq!(a[0].action, Action::Sleep(Duration::from_millis(30)));
        assert_eq!(a[0].probability, 0.5);
        assert_eq!(a[1].action, Action::Abort);
        assert!(parse("nowhere=abort").unwrap_err().contains("unknown point"));
        assert!(parse("consume::after_read=explode").unwrap_err().contains("unknown action"));
        assert!(parse("consume::after_read=abort@2").unwrap_err().contains("probability"));
        assert!(parse("consume::after_read").unwrap_err().contains("POINT=ACTION"));
        assert!(parse("").unwrap().is_empty());
    }
}
