//! The connections callers hold, and how their loss shows up. Callers outside the store never
//! name the Redis client library: a consumer keeps [`Dedicated`] connections from
//! [`RedisStore::dedicated`](super::RedisStore::dedicated) and hands them back to store methods.

use redis::aio::MultiplexedConnection;

/// A connection of its own (no response timeout), for blocking reads and for a consumer's
/// calls that must not wait behind another task's. From [`super::RedisStore::dedicated`].
pub type Dedicated = MultiplexedConnection;

#[cfg(test)]
impl super::StoreError {
    /// A connection lost mid-call, as redis-rs reports a broken pipe: for tests of callers that
    /// retry ([`super::StoreError::is_retryable`]).
    pub(crate) fn broken_pipe() -> super::StoreError {
        redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe)).into()
    }
}

#[cfg(test)]
mod tests {
    use super::super::StoreError;

    #[test]
    fn connection_loss_is_retryable_and_other_errors_are_not() {
        assert!(matches!(StoreError::broken_pipe(), StoreError::Connection(_)));
        assert!(StoreError::broken_pipe().is_retryable());
        let refused: StoreError =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)).into();
        assert!(refused.is_retryable());
        let script: StoreError = redis::RedisError::from((redis::ErrorKind::Client, "bad")).into();
        assert!(matches!(script, StoreError::Redis(_)));
        assert!(!script.is_retryable());
    }
}
