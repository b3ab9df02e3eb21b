//! The store seam: the operations the consumer performs, as a trait with two implementations
//! that are siblings under `store/`: [`RedisStore`] (redis-rs, a real server) and
//! [`SharedModel`](super::SharedModel) (the in-memory model running the same Lua scripts).
//! `consume` is written against the trait, so the production tokio driver runs unchanged on
//! either (`tests/model` runs it on the model, every other suite on Redis).

use std::future::Future;
use std::time::Duration;

use super::{Claimed, CommitItem, LedgerConfig, RawEntry, RedisStore, Result};
use crate::core::CommitOutcome;

/// One namespace and consumer group, as the consumer sees it. Every multi-step change is one
/// script in both implementations; a `Conn` is a connection of the caller's own (blocking reads
/// must not stall anyone else's calls).
pub trait Store: Clone + Send + Sync + 'static {
    /// A connection of its own; `Clone` shares it.
    type Conn: Clone + Send + Sync + 'static;

    /// A new connection of the caller's own.
    fn dedicated(&self) -> impl Future<Output = Result<Self::Conn>> + Send;

    /// Creates the consumer group at the start of the stream; idempotent.
    fn ensure_group(&self) -> impl Future<Output = Result<()>> + Send;

    /// `XREADGROUP ... >`: up to `count` new entries, waiting up to `block` for one.
    fn read_new(
        &self,
        conn: &mut Self::Conn,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> impl Future<Output = Result<Vec<RawEntry>>> + Send;

    /// `claim.lua`: entries idle longer than `min_idle`, with their tokens, and the ids of
    /// pending entries the stream no longer held (dead-lettered by the script).
    fn reclaim(
        &self,
        conn: &mut Self::Conn,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> impl Future<Output = Result<Claimed>> + Send;

    /// `commit.lua`: the fenced, ledgered, all-or-nothing commit of entries of one or several
    /// consumers (each fenced against its own), on the store's shared connection (the group
    /// committer's; Redis's reconnects by itself).
    fn commit_group(
        &self,
        ledger: LedgerConfig,
        items: &[(&str, &CommitItem<'_>)],
    ) -> impl Future<Output = Result<Vec<CommitOutcome>>> + Send;

    /// `dead_letter.lua`; false when the fence refused.
    fn dead_letter(
        &self,
        conn: &mut Self::Conn,
        consumer: &str,
        entry_id: &str,
        token: u64,
        reason: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// `retry.lua`: the new token, or None when the entry is no longer this consumer's.
    fn retry(
        &self,
        conn: &mut Self::Conn,
        consumer: &str,
        entry_id: &str,
        token: u64,
    ) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// `release.lua`: marks held entries idle for `idle`, so any consumer reclaims them at once.
    fn release(
        &self,
        conn: &mut Self::Conn,
        consumer: &str,
        ids: &[String],
        idle: Duration,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// `prune.lua`: removes group consumers holding nothing and idle longer than `idle`.
    fn prune_consumers(&self, idle: Duration) -> impl Future<Output = Result<u64>> + Send;
}

impl Store for RedisStore {
    type Conn = super::conn::Dedicated;

    async fn dedicated(&self) -> Result<Self::Conn> {
        RedisStore::dedicated(self).await
    }

    async fn ensure_group(&self) -> Result<()> {
        RedisStore::ensure_group(self).await
    }

    async fn read_new(
        &self,
        conn: &mut Self::Conn,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<RawEntry>> {
        RedisStore::read_new(self, conn, consumer, count, block).await
    }

    async fn reclaim(
        &self,
        conn: &mut Self::Conn,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<Claimed> {
        RedisStore::reclaim(self, conn, consumer, min_idle, cursor, count).await
    }

    async fn commit_group(
        &self,
        ledger: LedgerConfig,
        items: &[(&str, &CommitItem<'_>)],
    ) -> Result<Vec<CommitOutcome>> {
        RedisStore::commit_many(self, &mut self.conn.clone(), ledger, items).await
    }

    async fn dead_letter(
        &self,
        conn: &mut Self::Conn,
        consumer: &str,
        entry_id: &str,
        token: u64,
        reason: &str,
    ) -> Result<bool> {
        RedisStore::dead_letter(self, conn, consumer, entry_id, token, reason).await
    }

    async fn retry(&self, conn: &mut Self::Conn, consumer: &str, entry_id: &str, token: u64) -> Result<Option<u64>> {
        RedisStore::retry(self, conn, consumer, entry_id, token).await
    }

    async fn release(&self, conn: &mut Self::Conn, consumer: &str, ids: &[String], idle: Duration) -> Result<u64> {
        RedisStore::release(self, conn, consumer, ids, idle).await
    }

    async fn prune_consumers(&self, idle: Duration) -> Result<u64> {
        RedisStore::prune_consumers(self, idle).await
    }
}
