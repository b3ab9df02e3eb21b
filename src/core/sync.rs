//! The one place that chooses between std and loom synchronisation: with the `loom` feature
//! (tests/loom only) these are loom's types, so the same model code runs under loom's
//! exhaustive scheduler. A cargo feature and not `--cfg loom`, because that cfg would also
//! change tokio and force a rebuild of every dependency. Nothing in the library's production
//! paths uses this module: it exists for the models that share [`crate::store::model`] between threads.

#[cfg(feature = "loom")]
pub use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(feature = "loom")]
pub use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(feature = "loom")]
pub use loom::thread;

#[cfg(not(feature = "loom"))]
pub use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(not(feature = "loom"))]
pub use std::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(feature = "loom"))]
pub use std::thread;

/// Locks, treating a poisoned lock as usable: in a model a panic already failed the test.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
