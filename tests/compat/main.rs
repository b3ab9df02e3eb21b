//! The servers users run (docs/COMPAT.md): the refusal of a server without what the pipeline
//! needs, and, for the server under test (`EXPIRY_STREAM_SERVER`, default the `redis-server`
//! on PATH), that the model's setting for it (`Behaviour::of`) answers as the server does
//! where servers differ. `just compat` runs this and the other suites on every server.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use expiry_stream::core::Via;
use expiry_stream::provision::{self, Choice, RedisServer};
use expiry_stream::store::model::{Behaviour, Model};
use expiry_stream::store::notify::Push;
use expiry_stream::store::{ModelStore, RedisStore};
use support::Ctx;

/// Redis 6.2 has `XAUTOCLAIM` but not `PEXPIRETIME`: refused at connect, in one line, before
/// any script runs.
#[tokio::test]
async fn an_unsupported_server_is_refused_in_one_line() {
    let server = RedisServer::start_server(Choice::Process, Some("redis-6.2"), &[])
        .await
        .unwrap_or_else(|e| panic!("{e} (fetch it with scripts/get-servers.sh redis-6.2)"));
    let err = RedisStore::connect(&server.url, "compat", "g").await.err().expect("Redis 6.2 must be refused");
    insta::assert_snapshot!(err.to_string());
}

/// A tracked key given a past expiry by another program: what the server publishes, and what
/// capture makes of it, are the same on the server and on the model set for that server.
#[tokio::test]
async fn a_past_expire_is_heard_and_captured_as_the_model_says_for_this_server() {
    let name = provision::server_choice().expect("EXPIRY_STREAM_SERVER").unwrap_or_else(|| "redis-7.0".into());
    let ctx = Ctx::new("pastexpire").await;
    let key = b"{pastexpire}:k:1".to_vec();
    let channel = format!("__keyevent@{}__:expired", ctx.store.db());
    let (_sub, mut pushes) = ctx.store.subscribe(&channel).await.expect("subscribe");
    tokio::time::sleep(Duration::from_millis(100)).await;
    ctx.store.write_batch(&[(key.clone(), b"v".to_vec(), Duration::from_secs(60))]).await.expect("write");
    let mut c = ctx.conn().await;
    let _: i64 = redis::cmd("PEXPIRE").arg(&key).arg(-1).query_async(&mut c).await.expect("PEXPIRE");
    let mut heard = vec![];
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(p)) = tokio::time::timeout_at(until, pushes.recv()).await {
        if let Push::Message { payload, .. } = p {
            heard.push(payload);
        }
    }
    let real_capture = ctx.store.capture(&heard, Via::Notification).await.expect("capture");
    let real_stream = ctx.stream().await.len();

    let mut model = Model::new(1_700_000_000_000);
    model.behaviour = Behaviour::of(&name);
    let mut m = ModelStore::new(model, "pastexpire", "g");
    m.write_batch(&[(key.clone(), b"v".to_vec(), Duration::from_secs(60))]);
    m.call(&[b"PEXPIRE".to_vec(), key.clone(), b"-1".to_vec()]).expect("PEXPIRE");
    let model_heard = m.model.take_notifications();
    let model_capture = m.capture(&model_heard, Via::Notification);
    let stream = m.keys.stream.clone();
    let model_stream = m.range(&stream).len();

    let setting = m.model.behaviour;
    assert_eq!(heard, model_heard, "{name}: `expired` heard for a past PEXPIRE (model setting {setting:?})");
    assert_eq!(real_capture, model_capture, "{name}: capture of what was heard (model setting {setting:?})");
    assert_eq!(real_stream, model_stream, "{name}: stream entries (model setting {setting:?})");
    eprintln!("{name}: past PEXPIRE heard as expired: {}; stream entries: {real_stream}", !heard.is_empty());
}
