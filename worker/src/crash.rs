//! Crash points for tests: with the `crash-points` feature, setting
//! `BATCHGATE_CRASH_POINT` to a point's name aborts the process there, as a
//! SIGKILL would. Builds without the feature ignore the variable.

/// Aborts the process if `BATCHGATE_CRASH_POINT` names `point`.
#[cfg(feature = "crash-points")]
pub fn at(point: &str) {
    if std::env::var("BATCHGATE_CRASH_POINT").is_ok_and(|wanted| wanted == point) {
        eprintln!("batchgate-worker: crash point {point} reached, aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "crash-points"))]
pub fn at(_point: &str) {}
