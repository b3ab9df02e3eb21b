//! The protocol over the in-memory model, driven by arbitrary operation sequences: writes,
//! time, sweeps, notifications, reads, reclaims, commits (fresh or stale), replays. The
//! oracle's invariant is checked after every commit: no event is ever committed twice, and
//! nothing is committed that was not created.
#![no_main]
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use expiry_stream::core::{decode_entry, CommitOutcome, Effect, Via};
use expiry_stream::store::model::Model;
use expiry_stream::store::ModelStore;
use expiry_stream::store::{CommitItem, LedgerConfig, RawEntry, Safety};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut s = ModelStore::new(Model::new(1_700_000_000_000), "fz", "g");
    s.ensure_group();
    let ledger = LedgerConfig { safety: Safety::ON, ..LedgerConfig::default() };
    let consumers = ["a", "b", "c"];
    let mut held: HashMap<&str, Vec<(RawEntry, u64)>> = HashMap::new();
    let mut created: HashSet<String> = HashSet::new();
    let mut committed: HashSet<String> = HashSet::new();
    let mut seen: Vec<RawEntry> = vec![];
    for op in data.chunks(2) {
        let (code, arg) = (op[0] % 10, *op.get(1).unwrap_or(&0));
        let c = consumers[(arg % 3) as usize];
        match code {
            0 => {
                let key = format!("{{fz}}:k:{}", arg % 8).into_bytes();
                let ttl = Duration::from_millis(1 + u64::from(arg) * 4);
                let dl = s.write_batch(&[(key.clone(), b"v".to_vec(), ttl)])[0];
                created.insert(expiry_stream::core::event_id(&key, dl));
            }
            1 => s.model.advance(i64::from(arg)),
            2 => {
                s.sweep(16);
            }
            3 => {
                let keys = s.model.take_notifications();
                s.capture(&keys, Via::Notification);
            }
            4 => {
                if let Ok(got) = s.read_new(c, 1 + (arg as usize % 3)) {
                    seen.extend(got.iter().cloned());
                    held.entry(c).or_default().extend(got.into_iter().map(|e| (e, 1)));
                }
            }
            5 => {
                if let Ok((_, got)) = s.autoclaim(c, Duration::from_millis(50), "0-0", 4) {
                    held.entry(c).or_default().extend(got);
                }
            }
            6 | 7 => {
                // Commit the consumer's oldest (possibly stale) held entry.
                let Some(list) = held.get_mut(c) else { continue };
                if list.is_empty() {
                    continue;
                }
                let (entry, token) = list.remove(0);
                let Ok(ev) = decode_entry(&entry.fields, 1 << 20) else { continue };
                let eff = vec![Effect::new("RPUSH", [b"{fz}:effects".as_slice(), ev.event_id.as_bytes()])];
                let item = CommitItem { entry_id: &entry.id, token, event: &ev, effects: &eff };
                let out = s.commit(c, ledger, &[item]).expect("valid effects");
                if out == [CommitOutcome::Committed] {
                    assert!(created.contains(&ev.event_id), "committed an event never created");
                    assert!(committed.insert(ev.event_id.clone()), "event {} committed twice", ev.event_id);
                }
            }
            8 => {
                // Replay an entry seen before, as a new stream entry.
                if !seen.is_empty() {
                    let e = seen[arg as usize % seen.len()].clone();
                    s.xadd_raw(e.fields);
                }
            }
            _ => {
                s.model.active_expire(1 + arg as usize % 20);
            }
        }
    }
});
