//! What the tests that run outside tools (a C compiler, `mpirun`) share.

use std::process::{Command, Output};

/// Whether `tool` runs (`tool --version`): when not, a CI run (CI set) fails, saying
/// `why`, and a developer's run skips.
pub fn have(tool: &str, why: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "`{tool}` is missing: {why}"
        );
        eprintln!("skipped: no `{tool}` ({why})");
    }
    found
}

/// Runs `cmd`, which must succeed.
pub fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().expect("the command runs");
    assert!(
        o.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}
