//! Skipping a test (or part of one) whose tool or setting is missing: a message where a
//! developer runs the tests, a failure under CI (the `CI` environment variable is set), where
//! `.ci/run` installs every tool and sets core_pattern, so a skip there means a broken setup.

/// Reports a skip; panics when the `CI` environment variable is set.
#[track_caller]
pub fn skip(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set, so this cannot be skipped: {why}");
    }
    eprintln!("SKIPPED (not under CI): {why}");
}
