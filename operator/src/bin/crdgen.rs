//! Prints the DurableNamespace CRD as YAML; with `--write`, writes it to
//! `crds/durablenamespaces.stead.dev.yaml` in the repository.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match stead_operator::crd_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    if std::env::args().any(|a| a == "--write") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(stead_operator::CRD_PATH);
        if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("wrote {}", path.display());
    } else {
        print!("{yaml}");
    }
    ExitCode::SUCCESS
}
