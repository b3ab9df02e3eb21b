//! What the server must offer, probed once per connection by command (not by version string:
//! Valkey reports `redis_version:7.2.4` whatever its own version), and refused in one line
//! naming what is missing and the oldest servers that have it (docs/COMPAT.md).

use redis::aio::ConnectionLike;
use redis::Value;

use super::{Result, StoreError};

/// Commands the scripts need, why, and the oldest servers that have them.
pub const REQUIRED: &[(&str, &str, &str)] = &[
    ("PEXPIRETIME", "the capture step reads each key's deadline with it", "Redis 7.0 and Valkey 7.2"),
    ("XAUTOCLAIM", "reclaim takes over the entries of stalled consumers with it", "Redis 6.2 and Valkey 7.2"),
    ("ZMSCORE", "the writer reads a batch's index scores with it", "Redis 6.2 and Valkey 7.2"),
];

/// The server's name and version from `INFO server` (`Valkey 9.1.2`, `Redis 7.0.15`).
pub async fn identity(conn: &mut (impl ConnectionLike + Send)) -> Result<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':'))).map(|v| v.trim().to_string())
    };
    Ok(match (field("valkey_version"), field("redis_version")) {
        (Some(v), _) => format!("Valkey {v}"),
        (None, Some(v)) => format!("Redis {v}"),
        (None, None) => "this server".to_string(),
    })
}

/// Refuses a server that lacks one of [`REQUIRED`] with [`StoreError::Unsupported`]. A user
/// not allowed `COMMAND INFO` (a restricted ACL) is not refused for that: the first script
/// call then fails with the server's own error.
pub async fn check_server(conn: &mut (impl ConnectionLike + Send)) -> Result<()> {
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("INFO");
    for (name, _, _) in REQUIRED {
        cmd.arg(*name);
    }
    let reply: Value = match cmd.query_async(conn).await {
        Ok(v) => v,
        Err(e) if e.code() == Some("NOPERM") => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let Value::Array(infos) = &reply else { return Err(super::bad("COMMAND INFO", &reply)) };
    let missing: Vec<&(&str, &str, &str)> =
        REQUIRED.iter().zip(infos).filter(|(_, info)| matches!(info, Value::Nil)).map(|(r, _)| r).collect();
    let Some(first) = missing.first() else { return Ok(()) };
    let server = identity(conn).await?;
    let (name, why, since) = first;
    let more = if missing.len() > 1 {
        let rest: Vec<&str> = missing[1..].iter().map(|(n, _, _)| *n).collect();
        format!(" (also missing: {})", rest.join(", "))
    } else {
        String::new()
    };
    Err(StoreError::Unsupported(format!(
        "{server} is not supported: it has no {name} ({why}); {name} exists from {since}{more}"
    )))
}
