//! Pub/sub for keyspace notifications: a subscriber connection of its own whose pushes arrive
//! on a channel, translated into [`Push`] so listeners never see the client library's types.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::{RedisStore, Result};

/// What arrived on a subscriber connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Push {
    /// A published message: its channel and payload.
    Message { channel: Vec<u8>, payload: Vec<u8> },
    /// The connection was lost; the manager reconnects and resubscribes by itself, but what
    /// was published meanwhile is gone.
    Disconnected,
    /// A (re)subscription took effect.
    Subscribed,
    /// Anything else (other push kinds, a message of an unexpected shape).
    Other,
}

impl Push {
    fn of(p: PushInfo) -> Push {
        match p.kind {
            PushKind::Message => match (p.data.first(), p.data.get(1)) {
                (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) => {
                    Push::Message { channel: ch.clone(), payload: payload.clone() }
                }
                _ => Push::Other,
            },
            PushKind::Disconnection => Push::Disconnected,
            PushKind::Subscribe => Push::Subscribed,
            _ => Push::Other,
        }
    }
}

/// The command side of a subscriber connection: keeps it checked.
pub struct Subscriber {
    conn: ConnectionManager,
}

impl Subscriber {
    /// One `PING`, reply ignored: a dead socket is noticed (and re-established, and
    /// resubscribed) on the next call even when no messages flow.
    pub async fn ping(&mut self) {
        let _ = redis::cmd("PING").query_async::<Value>(&mut self.conn).await;
    }
}

/// The receiving side of a subscriber connection.
pub struct Pushes {
    rx: mpsc::UnboundedReceiver<PushInfo>,
}

impl Pushes {
    /// The next push; `None` once the connection is gone for good.
    pub async fn recv(&mut self) -> Option<Push> {
        self.rx.recv().await.map(Push::of)
    }

    /// A push already received, if any (to drain a burst without waiting).
    pub fn try_recv(&mut self) -> Option<Push> {
        self.rx.try_recv().ok().map(Push::of)
    }
}

/// Subscribes to `channel` on a RESP3 connection of its own (pushes need RESP3), managed:
/// it reconnects and resubscribes by itself, and reports both as pushes.
pub(super) async fn subscribe_on(client: &Client, channel: &str) -> Result<(Subscriber, Pushes)> {
    subscribe_all_on(client, &[channel.to_string()]).await
}

/// [`subscribe_on`] for several channels on one connection.
pub(super) async fn subscribe_all_on(client: &Client, channels: &[String]) -> Result<(Subscriber, Pushes)> {
    let info = client.get_connection_info().clone();
    let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
    let client = Client::open(info.set_redis_settings(settings))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let cfg = ConnectionManagerConfig::new()
        .set_push_sender(tx)
        .set_automatic_resubscription()
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    let mut conn = ConnectionManager::new_with_config(client, cfg).await?;
    conn.subscribe(channels).await?;
    Ok((Subscriber { conn }, Pushes { rx }))
}

impl RedisStore {
    /// Subscribes to `channel` on this store's server (see [`Pushes`] for what arrives).
    pub async fn subscribe(&self, channel: &str) -> Result<(Subscriber, Pushes)> {
        subscribe_on(&self.client, channel).await
    }

    /// Subscribes to several channels on one subscriber connection.
    pub async fn subscribe_all(&self, channels: &[String]) -> Result<(Subscriber, Pushes)> {
        subscribe_all_on(&self.client, channels).await
    }

    /// The `notify-keyspace-events` setting (`CONFIG GET`; empty when not reported).
    pub async fn notify_config(&self) -> Result<String> {
        let v: Vec<String> =
            redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query_async(&mut self.conn.clone()).await?;
        Ok(v.get(1).cloned().unwrap_or_default())
    }

    /// Sets `notify-keyspace-events` (`CONFIG SET`; refused on managed servers).
    pub async fn set_notify_config(&self, classes: &str) -> Result<()> {
        Ok(redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(classes)
            .query_async(&mut self.conn.clone())
            .await?)
    }
}
