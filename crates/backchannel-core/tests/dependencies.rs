//! The pure crates stay pure: the core, statement and log crates (and the
//! codec and crypto crates under them) depend, transitively, on no async
//! runtime, no HTTP crate and no database crate. Checked on the resolved
//! graph from `cargo metadata`, following normal dependencies only (dev
//! dependencies never reach a user's binary).

use std::collections::{BTreeSet, HashMap};

use cargo_metadata::{DependencyKind, MetadataCommand, PackageId};

const PURE: &[&str] = &[
    "backchannel-codec",
    "backchannel-crypto",
    "backchannel-statement",
    "backchannel-tlog",
    "backchannel-core",
];

/// Crates that would mean IO in the core: async runtimes, HTTP, databases.
const FORBIDDEN: &[&str] = &[
    // async runtimes and executors
    "tokio",
    "async-std",
    "smol",
    "async-executor",
    "async-io",
    "futures",
    "futures-executor",
    "futures-util",
    "mio",
    "glommio",
    "monoio",
    // HTTP and network clients and servers
    "hyper",
    "http",
    "h2",
    "h3",
    "quinn",
    "reqwest",
    "ureq",
    "curl",
    "isahc",
    "surf",
    "axum",
    "actix-web",
    "warp",
    "tower",
    "tower-http",
    "tungstenite",
    "tokio-tungstenite",
    "rustls",
    "native-tls",
    "openssl",
    // databases and embedded stores
    "sqlx",
    "sqlx-core",
    "rusqlite",
    "libsqlite3-sys",
    "diesel",
    "postgres",
    "tokio-postgres",
    "mysql",
    "mysql_async",
    "sea-orm",
    "redis",
    "sled",
    "redb",
    "rocksdb",
    "lmdb",
    "heed",
];

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = std::process::Command::new(rustc)
        .arg("-vV")
        .output()
        .unwrap_or_else(|e| panic!("rustc -vV: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .unwrap_or_else(|| panic!("rustc -vV names no host"))
}

#[test]
fn pure_crates_depend_on_no_runtime_http_or_database() {
    // The graph for the platform we build on: a dependency that exists only
    // for another target (`getrandom` → `js-sys` → `futures-util` on wasm)
    // never reaches these binaries. A wasm client would need its own check.
    let metadata = MetadataCommand::new()
        .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
        .other_options(vec!["--filter-platform".to_owned(), host_triple()])
        .exec()
        .unwrap_or_else(|e| panic!("cargo metadata: {e}"));
    let resolve = metadata
        .resolve
        .as_ref()
        .unwrap_or_else(|| panic!("no resolve graph"));
    let nodes: HashMap<&PackageId, _> = resolve.nodes.iter().map(|n| (&n.id, n)).collect();
    let name = |id: &PackageId| {
        metadata
            .packages
            .iter()
            .find(|p| &p.id == id)
            .map(|p| p.name.to_string())
            .unwrap_or_default()
    };
    for root in PURE {
        let start = metadata
            .workspace_members
            .iter()
            .find(|id| name(id) == *root)
            .unwrap_or_else(|| panic!("{root} is not a workspace member"));
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.clone()];
        while let Some(id) = stack.pop() {
            if !seen.insert(name(&id)) {
                continue;
            }
            let Some(node) = nodes.get(&id) else { continue };
            for dep in &node.deps {
                let normal = dep
                    .dep_kinds
                    .iter()
                    .any(|k| k.kind == DependencyKind::Normal);
                if normal {
                    stack.push(dep.pkg.clone());
                }
            }
        }
        let bad: Vec<_> = seen
            .iter()
            .filter(|n| FORBIDDEN.contains(&n.as_str()))
            .collect();
        assert!(bad.is_empty(), "{root} depends on {bad:?}");
        assert!(seen.len() > 1, "{root}: dependency walk found nothing");
    }
}
