//! In-memory model of the Redis behaviour the protocol relies on (to be built: issue 3).
