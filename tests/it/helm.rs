//! The Helm chart (`helm/paynotify`): `scripts/check-helm` renders it with helm 3 and helm 4 for
//! every values file in `helm/paynotify/ci/` and validates each manifest against the Kubernetes
//! schemas and the chart's own wiring rules. Where helm cannot be had, the script exits 2 and this
//! test says so and passes, unless PAYNOTIFY_REQUIRE_HELM=1 (then a missing helm fails it).

use std::process::Command;

#[test]
fn the_helm_chart_renders_and_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/check-helm"))
        .current_dir(root)
        .output()
        .expect("run scripts/check-helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => {}
        Some(2) => {
            let why = format!("helm chart test SKIPPED: {}", text.trim());
            assert!(
                std::env::var("PAYNOTIFY_REQUIRE_HELM").as_deref() != Ok("1"),
                "PAYNOTIFY_REQUIRE_HELM=1 and {why}"
            );
            eprintln!("{why}");
        }
        other => panic!("scripts/check-helm failed (exit {other:?}):\n{text}"),
    }
}
