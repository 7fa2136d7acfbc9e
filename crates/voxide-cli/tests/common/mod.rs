//! What the CLI tests share: the repository root, the binary run offline, and the checks of
//! a run's outcome.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `voxide ARGS`, offline.
pub fn voxide(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voxide"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("voxide runs")
}

/// The stdout of a run that must succeed.
pub fn stdout(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "voxide failed: {stderr}");
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

/// The single stderr line of a run that must fail with exit 1.
pub fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected:\n{stderr}");
    stderr
}
