//! `flotilla config`: the resolved model of the Compose files.

use crate::opts::{ConfigArgs, Global};
use anyhow::Result;

pub fn run(g: &Global, a: &ConfigArgs) -> Result<i32> {
    let opts = super::load_options(g, &[])?;
    let project = flotilla_compose::load_for_config(&opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    if a.quiet {
        return Ok(0);
    }
    if a.services {
        for s in &project.spec.services {
            println!("{}", s.name);
        }
        return Ok(0);
    }
    let out = if a.format == "json" {
        flotilla_compose::to_compose_json(&project)
    } else {
        flotilla_compose::to_compose_yaml(&project)
    };
    print!("{out}");
    Ok(0)
}
