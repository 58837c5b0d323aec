//! Keeps the dependency rules of docs/ARCHITECTURE.md ("Dependency rules")
//! true: each workspace package may depend only on the sealtls crates its
//! rule allows (normal, dev and build dependencies alike).
use std::collections::BTreeSet;
use std::process::Command;

/// Every workspace package and the sealtls crates it may use. `None`: all.
const RULES: &[(&str, Option<&[&str]>)] = &[
    ("sealtls-failure", Some(&[])),
    ("sealtls-listen", Some(&["sealtls-failure"])),
    ("sealtls-pki", Some(&["sealtls-failure"])),
    ("sealtls-custody-proto", Some(&["sealtls-failure"])),
    ("sealtls-offload-proto", Some(&["sealtls-failure"])),
    ("sealtls-endpoint", Some(&["sealtls-failure", "sealtls-listen", "sealtls-pki"])),
    ("sealtls-console", Some(&["sealtls-failure", "sealtls-listen", "sealtls-pki", "sealtls-endpoint"])),
    ("sealtls-keyd", Some(&["sealtls-failure", "sealtls-listen", "sealtls-pki", "sealtls-custody-proto"])),
    ("sealtls-keyless", Some(&["sealtls-failure", "sealtls-listen", "sealtls-pki", "sealtls-endpoint", "sealtls-custody-proto"])),
    ("sealtls-offload-daemon", Some(&["sealtls-failure", "sealtls-listen", "sealtls-pki", "sealtls-endpoint", "sealtls-offload-proto"])),
    ("sealtls-offload", Some(&["sealtls-failure", "sealtls-offload-proto"])),
    ("sealtls-status", Some(&["sealtls-failure", "sealtls-listen", "sealtls-pki"])),
    ("sealtls-pkcs11", Some(&["sealtls-failure", "sealtls-endpoint", "sealtls-custody-proto"])),
    ("sealtls", None),
];

/// Pairs that must never appear, whatever the table above says.
const NEVER: &[(&str, &str)] = &[
    ("sealtls-keyd", "sealtls-endpoint"),
    ("sealtls-keyd", "sealtls-keyless"),
    ("sealtls-keyd", "sealtls-console"),
    ("sealtls-keyd", "sealtls-offload-daemon"),
    ("sealtls-keyd", "sealtls-offload"),
    ("sealtls-keyd", "sealtls-offload-proto"),
    ("sealtls-keyd", "sealtls-status"),
    ("sealtls-status", "sealtls-endpoint"),
    ("sealtls-pkcs11", "sealtls-keyd"),
    ("sealtls-custody-proto", "sealtls-endpoint"),
    ("sealtls-custody-proto", "sealtls-listen"),
    ("sealtls-offload-proto", "sealtls-endpoint"),
    ("sealtls-offload-proto", "sealtls-listen"),
];

/// Each workspace package with the names of the sealtls crates it depends on.
fn workspace() -> Vec<(String, BTreeSet<String>)> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"].as_array().expect("a package list");
    packages
        .iter()
        .map(|p| {
            let name = p["name"].as_str().expect("a package name").to_owned();
            let deps = p["dependencies"]
                .as_array()
                .expect("a dependency list")
                .iter()
                .filter_map(|d| d["name"].as_str())
                .filter(|d| *d == "sealtls" || d.starts_with("sealtls-"))
                .map(str::to_owned)
                .collect();
            (name, deps)
        })
        .collect()
}

#[test]
fn workspace_dependencies_follow_the_rules() {
    let packages = workspace();
    let mut broken = Vec::new();
    for (name, deps) in &packages {
        let Some((_, allowed)) = RULES.iter().find(|(n, _)| n == name) else {
            broken.push(format!("{name} has no rule: add it to docs/ARCHITECTURE.md and to RULES"));
            continue;
        };
        for dep in deps {
            if allowed.is_some_and(|a| !a.contains(&dep.as_str())) {
                broken.push(format!("{name} must not depend on {dep}"));
            }
            if NEVER.contains(&(name.as_str(), dep.as_str())) {
                broken.push(format!("{name} must never depend on {dep}"));
            }
        }
    }
    for (name, _) in RULES {
        if !packages.iter().any(|(n, _)| n == name) {
            broken.push(format!("the rule for {name} names no workspace package"));
        }
    }
    assert!(broken.is_empty(), "dependency rules broken:\n{}", broken.join("\n"));
}
