//! What a seed means: every knob of a run, drawn from the seed alone (swarm testing: each seed
//! turns its own subset of faults on, at its own rates, rather than one fixed blend).

use serde::Serialize;

use super::rng::Rng;

/// Probabilities are per mille, so that printed options and snapshots stay exact.
pub type PerMille = u32;

/// What a Redis restart may lose, as the modelled persistence decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Persistence {
    /// `appendfsync always` (or a clean process restart: the page cache survives): a restart
    /// loses nothing acknowledged.
    FsyncAlways,
    /// `appendfsync everysec` and a host crash: a restart loses every write acknowledged since
    /// the last whole second. Events created in that window are counted as `lost_by_restart`,
    /// apart from `lost`: the persistence lost them, not the protocol.
    FsyncEverysec,
}

/// The rate of each fault the simulator can express, by the fault's one name
/// ([`crate::fault::Fault`]; scenario files use the same names). A test checks that every
/// field here is a simulator fault's name and that every simulator fault has a field.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Faults {
    /// Per consumer operation: the consumer dies, losing what it held in memory, and restarts.
    pub kill_consumer: PerMille,
    /// Per consumer operation: the consumer freezes for `stop_ms` (often past the claim timeout).
    pub stop_consumer: PerMille,
    pub stop_ms: (u64, u64),
    /// Per commit: the commit waits `delay_ms` first.
    pub delay_acks: PerMille,
    pub delay_ms: (u64, u64),
    /// Per fault tick: an effected event's entry is added to the stream again.
    pub replay: PerMille,
    /// Per fault tick: a live stream entry is added a second time.
    pub duplicate_entry: PerMille,
    /// Per fault tick: an entry the capture script would never write.
    pub garbage_entry: PerMille,
    /// Per fault tick: a consumer is asked to stop gracefully (release) and restarts.
    pub term_consumer: PerMille,
    /// Per fault tick: a listener or a sweeper goes down for a while (or comes back).
    pub kill_listener: PerMille,
    pub kill_sweeper: PerMille,
    /// Each notification to each listener is dropped with this probability.
    pub drop_notification: PerMille,
    /// Per fault tick: Redis restarts, with this persistence.
    pub restart_redis: PerMille,
    pub persistence: Persistence,
    /// Per handler run.
    pub handler_transient: PerMille,
    pub handler_permanent: PerMille,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Options {
    pub events: u64,
    pub producer_batch: u64,
    pub producer_gap_ms: u64,
    pub ttl_ms: (u64, u64),
    /// Share of writes that reuse a key whose previous generation is past its deadline.
    pub rewrite: PerMille,
    /// Share of keys set by "another program" and registered with `track`.
    pub track: PerMille,
    pub listeners: u64,
    pub listener_latency_ms: u64,
    pub sweepers: u64,
    pub sweep_interval_ms: u64,
    pub sweep_batch: u64,
    /// None: Redis expires only lazily (on access).
    pub active_expiry_lag_ms: Option<u64>,
    pub consumers: u64,
    pub batch: u64,
    /// Handlers running at once within one consumer.
    pub concurrency: u64,
    pub poll_ms: u64,
    pub work_ms: (u64, u64),
    pub claim_idle_ms: u64,
    pub claim_interval_ms: u64,
    pub max_deliveries: u64,
    pub ledger_bucket_ms: u64,
    pub ledger_retention_ms: u64,
    pub faults: Faults,
}

impl Options {
    /// The options of `seed`. Every field is drawn here and nowhere else.
    pub fn from_seed(seed: u64) -> Options {
        let mut r = Rng::new(seed).fork(0x0F7);
        let on = |r: &mut Rng, max: u64| -> PerMille {
            if r.chance(0.5) {
                r.range(1, max) as PerMille
            } else {
                0
            }
        };
        let claim_idle_ms = r.range(50, 400);
        // A short ledger retention (a legitimate config) makes the fence the only thing that
        // stops a late stale commit; replays and duplicates then fall outside the contract
        // ("the ledger remembers an event for its retention"), so they are off with it.
        let short_ledger = r.chance(0.35);
        let ledger_bucket_ms = if short_ledger { r.range(5, 100) } else { r.range(100, 60_000) };
        let ledger_retention_ms = if short_ledger { r.range(0, 200) } else { 3_600_000 };
        let ttl_lo = r.range(1, 200);
        let work_lo = r.range(0, 20);
        let mut f = Faults {
            kill_consumer: on(&mut r, 30),
            stop_consumer: on(&mut r, 40),
            stop_ms: (claim_idle_ms / 2, claim_idle_ms * r.range(2, 6)),
            delay_acks: on(&mut r, 200),
            delay_ms: (0, claim_idle_ms * 2),
            replay: on(&mut r, 300),
            duplicate_entry: on(&mut r, 300),
            garbage_entry: on(&mut r, 100),
            term_consumer: on(&mut r, 100),
            kill_listener: on(&mut r, 200),
            kill_sweeper: on(&mut r, 200),
            drop_notification: on(&mut r, 900),
            restart_redis: if r.chance(0.3) { r.range(5, 60) as PerMille } else { 0 },
            persistence: if r.chance(0.5) { Persistence::FsyncAlways } else { Persistence::FsyncEverysec },
            handler_transient: on(&mut r, 200),
            handler_permanent: on(&mut r, 20),
        };
        if short_ledger {
            f.replay = 0;
            f.duplicate_entry = 0;
        }
        Options {
            events: r.range(10, 80),
            producer_batch: r.range(1, 4),
            producer_gap_ms: r.range(0, 60),
            ttl_ms: (ttl_lo, ttl_lo + r.range(0, 400)),
            rewrite: on(&mut r, 300),
            track: on(&mut r, 200),
            listeners: r.range(0, 2),
            listener_latency_ms: r.range(0, 20),
            sweepers: r.range(0, 2),
            sweep_interval_ms: r.range(5, 300),
            sweep_batch: r.range(1, 16),
            active_expiry_lag_ms: if r.chance(0.5) { Some(r.range(0, 2000)) } else { None },
            consumers: r.range(1, 4),
            batch: r.range(1, 8),
            poll_ms: r.range(1, 30),
            work_ms: (work_lo, work_lo + r.range(0, 60)),
            claim_idle_ms,
            claim_interval_ms: (claim_idle_ms / 4).max(10),
            max_deliveries: r.range(2, 8),
            ledger_bucket_ms,
            ledger_retention_ms,
            faults: f,
            // Drawn last, so every earlier option of a seed is what it was before it existed.
            concurrency: r.range(1, 3),
        }
    }

    pub fn short_ledger(&self) -> bool {
        self.ledger_retention_ms < 3_600_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::Fault;

    /// The seed's fault fields are exactly the simulator's faults, by their one name.
    #[test]
    fn fault_fields_are_the_simulator_faults_by_name() {
        let v = serde_json::to_value(Options::from_seed(1).faults).unwrap();
        let not_rates = ["stop_ms", "delay_ms", "persistence"];
        let mut fields: Vec<&str> =
            v.as_object().unwrap().keys().map(String::as_str).filter(|k| !not_rates.contains(k)).collect();
        fields.sort();
        let mut sim: Vec<&str> = Fault::ALL.iter().filter(|f| f.in_sim()).map(|f| f.name()).collect();
        sim.sort();
        assert_eq!(fields, sim);
    }
}
