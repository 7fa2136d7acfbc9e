//! What the CLI tests share: the repository root, the binary run offline, and the checks of
//! a run's outcome.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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

/// `voxide ARGS`, offline, with `input` on standard input (written on a thread; a process that
/// fails before reading it all closes the pipe, which is ignored).
pub fn voxide_with_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_voxide"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("voxide runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let bytes = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut stdin, &bytes);
    });
    let out = child.wait_with_output().expect("voxide ends");
    writer.join().expect("writer");
    out
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
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

/// The sorted names in `dir`.
#[cfg(unix)]
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Makes a FIFO at `path` and reads it on a thread; the returned function, called once the
/// writer exited, gives what came through.
#[cfg(target_os = "linux")]
pub fn read_fifo(path: &Path) -> impl FnOnce() -> Vec<u8> {
    use std::io::Read;
    let made = std::process::Command::new("mkfifo").arg(path).status();
    assert!(made.unwrap().success(), "mkfifo {}", path.display());
    // Linux opens a FIFO read-write without waiting. That end lets ours open at once and keeps
    // the FIFO open until the writer is done, so the read ends even if it never opened it.
    let keep = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut reader = std::fs::File::open(path).unwrap();
    let thread = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).unwrap();
        bytes
    });
    move || {
        drop(keep);
        thread.join().unwrap()
    }
}

/// The linked outputs of the non-regular-output tests: `write(path)` through a symlink to a
/// file writes `want` into its target, and through a symlink to /dev/full (never named
/// itself) fails with the OS reason; both links stay links. Then `dir` holds exactly the
/// files these tests make (`fifo`, `full`, `link`, `plain`, `target`, each `.ext`).
#[cfg(target_os = "linux")]
pub fn check_linked_outputs(dir: &Path, ext: &str, write: impl Fn(&Path) -> Output, want: &[u8]) {
    use std::os::unix::fs::symlink;
    let target = dir.join(format!("target.{ext}"));
    std::fs::write(&target, b"older").unwrap();
    let link = dir.join(format!("link.{ext}"));
    symlink(format!("target.{ext}"), &link).unwrap();
    let out = write(&link);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(std::fs::read(&target).unwrap() == want, "the link's target");

    let full = dir.join(format!("full.{ext}"));
    symlink("/dev/full", &full).unwrap();
    let err = error_line(&write(&full));
    let expect = format!("cannot write {}: No space left on device", full.display());
    assert!(err.contains(&expect), "{err}");
    assert!(std::fs::symlink_metadata(&full).unwrap().is_symlink());
    let made: Vec<String> = ["fifo", "full", "link", "plain", "target"]
        .iter()
        .map(|name| format!("{name}.{ext}"))
        .collect();
    assert_eq!(entries(dir), made);
}

/// Panics unless the Chrome trace at `path` holds a span of each of `names`.
pub fn assert_trace_has(path: &Path, names: &[&str]) {
    let events: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let found: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for name in names {
        assert!(found.contains(name), "trace lacks {name}: {found:?}");
    }
}
