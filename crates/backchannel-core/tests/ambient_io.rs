//! Simulation-readiness, as an absence: outside the CLI crate, the storage
//! backend and the key-file crate, no source file reads the wall clock or
//! a monotonic clock directly, draws OS randomness, opens sockets through
//! `tokio::net` or touches the file system. Clock, randomness, listener and
//! storage are parameters, so the simulator can supply its own.

use std::path::{Path, PathBuf};

/// Crates allowed to do ambient IO, and why.
const EXEMPT: &[&str] = &[
    // The binary: it wires real clocks, sockets, files and randomness in.
    "backchannel",
    // A storage backend: files are its job.
    "backchannel-store-sqlite",
    "backchannel-store-postgres",
    // The client's storage backend: files, and OS randomness for salts
    // and nonces.
    "backchannel-client-store-sqlite",
    // Key files on disk: used by the CLI only.
    "backchannel-keyfile",
    // Test support (a dev-dependency): loopback sockets for tests.
    "backchannel-test-support",
];

const FORBIDDEN: &[&str] = &[
    "SystemTime::now",
    "Instant::now",
    "OsRng",
    "thread_rng",
    "rand::rng(",
    "tokio::net",
    "std::net::TcpListener",
    "std::net::TcpStream",
    "std::fs",
    "tokio::fs",
    "File::open",
    "File::create",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_ambient_io_outside_the_exempt_crates() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(&crates) else {
        panic!("cannot list {}", crates.display());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if EXEMPT.contains(&name.as_str()) {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&e.path().join("src"), &mut files);
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                panic!("cannot read {}", f.display());
            };
            checked += 1;
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for pat in FORBIDDEN {
                    if code.contains(pat) {
                        found.push(format!("{}:{}: {pat}", f.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} files were checked");
    assert!(
        found.is_empty(),
        "ambient IO outside the exempt crates:\n{}",
        found.join("\n")
    );
}
