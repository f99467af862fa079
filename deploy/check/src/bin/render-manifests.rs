//! `render-manifests DIR [--core-only]`: prints the objects of the
//! kustomization in DIR as a YAML stream (one JSON document each), for
//! `kubernetes-validate` in `scripts/test`. `--core-only` leaves out the
//! custom kinds, which the typed checks of this crate cover instead.

use std::path::PathBuf;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        bail!("usage: render-manifests DIR [--core-only]");
    };
    let core_only = match args.next().as_deref() {
        None => false,
        Some("--core-only") => true,
        Some(other) => bail!("unknown argument {other}"),
    };
    let objects = rtc_deploy_check::kustomize::render(&dir).with_context(|| format!("rendering {}", dir.display()))?;
    for object in objects.iter().filter(|o| !core_only || !rtc_deploy_check::crds::is_custom(o)) {
        println!("---\n{}", serde_json::to_string_pretty(object)?);
    }
    Ok(())
}
