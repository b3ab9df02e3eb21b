//! A connection to a Redis server as a whole, not to a namespace: what the harnesses do around
//! the pipeline (flush, load plain keys, measure memory) and the chaos faults (kill clients,
//! pause or stall the server). One named method per command, so every use of Redis outside the
//! pipeline still goes through the store and says what it does.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client};

use super::notify::{subscribe_on, Pushes, Subscriber};
use super::{RedisStore, Result};

/// A server connection. Cheap to clone (the connection is multiplexed).
#[derive(Clone)]
pub struct Server {
    client: Client,
    conn: MultiplexedConnection,
}

/// Answers one `PING` on a fresh connection to `url` (a server coming up is ready).
pub async fn ping(url: &str) -> Result<()> {
    let mut c = Client::open(url)?.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async::<String>(&mut c).await?;
    Ok(())
}

impl Server {
    /// Connects to `url`. No response timeout: FLUSHALL of a million keys, big pipelines and
    /// `DEBUG SLEEP` take longer than redis-rs's 500 ms default.
    pub async fn connect(url: &str) -> Result<Server> {
        Server::open(Client::open(url)?).await
    }

    async fn open(client: Client) -> Result<Server> {
        let cfg = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let conn = client.get_multiplexed_async_connection_with_config(&cfg).await?;
        Ok(Server { client, conn })
    }

    /// The database number of the URL connected to.
    pub fn db(&self) -> i64 {
        self.client.get_connection_info().redis_settings().db()
    }

    /// `FLUSHALL`: every key of every database.
    pub async fn flushall(&self) -> Result<()> {
        Ok(redis::cmd("FLUSHALL").query_async(&mut self.conn.clone()).await?)
    }

    /// A number from `INFO memory` (`used_memory`, `used_memory_peak`, ...); 0 when absent.
    pub async fn memory_info(&self, field: &str) -> Result<i64> {
        memory_info_on(&mut self.conn.clone(), field).await
    }

    /// The server's CPU time so far (`INFO cpu`: `used_cpu_user` + `used_cpu_sys`, in µs)
    /// and its per-command totals (`INFO commandstats`: command -> (calls, µs)).
    pub async fn cpu(&self) -> Result<ServerCpu> {
        let c = &mut self.conn.clone();
        let cpu: String = redis::cmd("INFO").arg("cpu").query_async(c).await?;
        let stats: String = redis::cmd("INFO").arg("commandstats").query_async(c).await?;
        Ok(ServerCpu::parse(&cpu, &stats))
    }

    /// `MEMORY USAGE key SAMPLES 0` (every element counted); 0 when the key does not exist.
    pub async fn memory_usage(&self, key: &str) -> Result<i64> {
        let v: Option<i64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// `SET key value PX ttl` for each key, pipelined in one round trip.
    pub async fn set_expiring(&self, keys: &[String], value: &str, ttl: Duration) -> Result<()> {
        set_expiring_on(&mut self.conn.clone(), keys, value, ttl).await
    }

    /// `SADD key members...`, one call.
    pub async fn add_to_set(&self, key: &str, members: &[String]) -> Result<()> {
        Ok(redis::cmd("SADD").arg(key).arg(members).query_async(&mut self.conn.clone()).await?)
    }

    /// `CONFIG SET name value`.
    pub async fn config_set(&self, name: &str, value: &str) -> Result<()> {
        Ok(redis::cmd("CONFIG").arg("SET").arg(name).arg(value).query_async(&mut self.conn.clone()).await?)
    }

    /// This connection's `CLIENT ID`.
    pub async fn client_id(&self) -> Result<i64> {
        Ok(redis::cmd("CLIENT").arg("ID").query_async(&mut self.conn.clone()).await?)
    }

    /// `CLIENT LIST`: one line per connection (`id=.. addr=.. cmd=..`).
    pub async fn client_list(&self) -> Result<String> {
        client_list_on(&mut self.conn.clone()).await
    }

    /// `CLIENT KILL ID id`: the number of connections closed (0 or 1).
    pub async fn client_kill(&self, id: i64) -> Result<i64> {
        Ok(redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut self.conn.clone()).await?)
    }

    /// `CLIENT PAUSE ms ALL`: the server answers no client (this one included) for `d`.
    pub async fn client_pause(&self, d: Duration) -> Result<()> {
        Ok(redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(d.as_millis() as u64)
            .arg("ALL")
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// `DEBUG SLEEP seconds`: the server's main thread blocks for `d` (ms precision); the reply
    /// comes when it wakes.
    pub async fn debug_sleep(&self, d: Duration) -> Result<()> {
        let secs = format!("{:.3}", d.as_secs_f64());
        Ok(redis::cmd("DEBUG").arg("SLEEP").arg(secs).query_async(&mut self.conn.clone()).await?)
    }

    /// Subscribes to `channel` on a RESP3 connection of its own that reconnects and resubscribes
    /// by itself (see [`Pushes`] for what arrives).
    pub async fn subscribe(&self, channel: &str) -> Result<(Subscriber, Pushes)> {
        subscribe_on(&self.client, channel).await
    }
}

/// What the server had spent at one moment; subtract two to cost a stretch of work.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerCpu {
    /// `used_cpu_user` + `used_cpu_sys`, µs (the main thread and the others).
    pub used_cpu_us: f64,
    /// `cmdstat_<name>`: (calls, usec). Time inside scripts is counted under `evalsha` and
    /// also under each command the script called.
    pub commands: std::collections::BTreeMap<String, (u64, u64)>,
}

impl ServerCpu {
    pub fn parse(cpu: &str, commandstats: &str) -> ServerCpu {
        let field = |name: &str| -> f64 {
            let prefix = format!("{name}:");
            cpu.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
        };
        let mut commands = std::collections::BTreeMap::new();
        for line in commandstats.lines() {
            // cmdstat_set:calls=3,usec=12,usec_per_call=4.00,rejected_calls=0,failed_calls=0
            let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
            let get = |k: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                    .and_then(|v| v.parse().ok())
            };
            if let (Some(calls), Some(usec)) = (get("calls"), get("usec")) {
                commands.insert(name.to_string(), (calls, usec));
            }
        }
        ServerCpu { used_cpu_us: (field("used_cpu_user") + field("used_cpu_sys")) * 1e6, commands }
    }
}

impl RedisStore {
    /// A server connection of its own to this store's server (as [`RedisStore::dedicated`]: no
    /// response timeout), for server-wide commands such as the chaos faults'.
    pub async fn server(&self) -> Result<Server> {
        Server::open(self.client.clone()).await
    }
}

pub(super) async fn memory_info_on(c: &mut impl ConnectionLike, field: &str) -> Result<i64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(c).await?;
    let prefix = format!("{field}:");
    Ok(info.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0))
}

pub(super) async fn client_list_on(c: &mut impl ConnectionLike) -> Result<String> {
    Ok(redis::cmd("CLIENT").arg("LIST").query_async(c).await?)
}

pub(super) async fn set_expiring_on(
    c: &mut impl ConnectionLike,
    keys: &[String],
    value: &str,
    ttl: Duration,
) -> Result<()> {
    let mut p = redis::pipe();
    for k in keys {
        p.cmd("SET").arg(k).arg(value).arg("PX").arg(ttl.as_millis() as u64).ignore();
    }
    Ok(p.query_async::<()>(c).await?)
}

#[cfg(test)]
mod tests {
    use super::ServerCpu;

    #[test]
    fn server_cpu_parses_info_cpu_and_commandstats() {
        let cpu = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:9.0\r\n";
        let stats = "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=250,usec_per_call=25.00,rejected_calls=0,failed_calls=0\r\ncmdstat_set:calls=3,usec=12,usec_per_call=4.00\r\nnot a line\r\n";
        let c = ServerCpu::parse(cpu, stats);
        assert_eq!(c.used_cpu_us, 3_750_000.0);
        assert_eq!(c.commands.get("evalsha"), Some(&(10, 250)));
        assert_eq!(c.commands.get("set"), Some(&(3, 12)));
        assert_eq!(c.commands.len(), 2);
    }
}
