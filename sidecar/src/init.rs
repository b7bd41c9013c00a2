//! `stead init`: scaffolds a runnable project in a new folder: a counter object, its config,
//! a `DurableNamespace` manifest, a Dockerfile and one test, in TypeScript (a Workers project
//! on `@stead/workers`) or Rust (a Cargo project on `stead-sdk`). The files are templates under
//! `sidecar/templates/`, compiled into the binary.

use std::path::{Path, PathBuf};

/// Longest name: a Kubernetes object name that is also a DNS label.
const MAX_NAME: usize = 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Workers project: wrangler.toml, src/index.ts, package.json on @stead/workers.
    Ts,
    /// A Cargo project on stead-sdk.
    Rust,
}

#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The folder to create (it may exist if it is empty).
    pub dir: PathBuf,
    /// The project's language.
    #[arg(long, value_enum, default_value = "ts")]
    pub lang: Lang,
    /// The app's name (package, DurableNamespace, image): lowercase letters, digits and `-`,
    /// starting with a letter. Default: made from the folder's name.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{dir} already holds files; pick a new folder (stead init never overwrites)")]
    NotEmpty { dir: String },
    #[error(
        "{name:?} cannot name an app: use 1 to {MAX_NAME} lowercase letters, digits and `-`, starting with a letter (--name)"
    )]
    BadName { name: String },
    #[error("cannot write the project: {0}")]
    Io(#[from] std::io::Error),
}

/// One file of a template: where it goes in the project, and its text.
type TemplateFile = (&'static str, &'static str);

const MANIFEST: &str = include_str!("../templates/durable-namespace.yaml.tmpl");

const RUST: [TemplateFile; 5] = [
    (
        "Cargo.toml",
        include_str!("../templates/rust/Cargo.toml.tmpl"),
    ),
    (
        "src/main.rs",
        include_str!("../templates/rust/main.rs.tmpl"),
    ),
    (
        "Dockerfile",
        include_str!("../templates/rust/Dockerfile.tmpl"),
    ),
    (
        ".dockerignore",
        include_str!("../templates/rust/dockerignore.tmpl"),
    ),
    (
        ".gitignore",
        include_str!("../templates/rust/gitignore.tmpl"),
    ),
];

const TS: [TemplateFile; 8] = [
    (
        "package.json",
        include_str!("../templates/ts/package.json.tmpl"),
    ),
    (
        "wrangler.toml",
        include_str!("../templates/ts/wrangler.toml.tmpl"),
    ),
    (
        "src/index.ts",
        include_str!("../templates/ts/index.ts.tmpl"),
    ),
    (
        "test/counter.test.mjs",
        include_str!("../templates/ts/counter.test.mjs.tmpl"),
    ),
    (
        "tsconfig.json",
        include_str!("../templates/ts/tsconfig.json.tmpl"),
    ),
    (
        "Dockerfile",
        include_str!("../templates/ts/Dockerfile.tmpl"),
    ),
    (
        ".dockerignore",
        include_str!("../templates/ts/dockerignore.tmpl"),
    ),
    (".gitignore", include_str!("../templates/ts/gitignore.tmpl")),
];

/// What fills a template's `{{…}}` holes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values {
    pub name: String,
    /// The `stead-sdk` line of a Rust project's `Cargo.toml`.
    pub stead_sdk: String,
    /// The version (or `file:` path) of `@stead/workers` in a TypeScript project.
    pub workers_dependency: String,
}

impl Values {
    /// A path dependency on the source checkout, when `stead` runs from one; else the
    /// registries' packages.
    pub fn new(name: String, checkout: Option<&Path>) -> Self {
        let stead_sdk = match checkout {
            Some(root) => format!(
                "stead-sdk = {{ path = {:?} }}",
                root.join("sdk").display().to_string()
            ),
            None => "stead-sdk = \"0.1\"".to_owned(),
        };
        let workers_dependency = match checkout {
            Some(root) => format!("file:{}", root.join("sdk-ts").display()),
            None => "^0.1.0".to_owned(),
        };
        Self {
            name,
            stead_sdk,
            workers_dependency,
        }
    }

    fn fill(&self, template: &str) -> String {
        template
            .replace("{{name}}", &self.name)
            .replace("{{image}}", &format!("{}:0.1.0", self.name))
            .replace("{{stead_sdk}}", &self.stead_sdk)
            .replace("{{workers_dependency}}", &self.workers_dependency)
    }
}

/// A valid app name from `raw`, or `None`.
pub fn app_name(raw: &str) -> Option<String> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_NAME
        && raw.starts_with(|c: char| c.is_ascii_lowercase())
        && !raw.ends_with('-')
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ok.then(|| raw.to_owned())
}

/// A name made from a folder's name: lowercased, other characters turned into `-`.
pub fn name_from_dir(dir: &Path) -> Option<String> {
    let base = dir.file_name()?.to_string_lossy().to_lowercase();
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    app_name(name.trim_matches('-'))
}

/// The files of a project in `lang`: `(path in the project, contents)`.
pub fn files(lang: Lang, values: &Values) -> Vec<(PathBuf, String)> {
    let template: &[TemplateFile] = match lang {
        Lang::Rust => &RUST,
        Lang::Ts => &TS,
    };
    let manifest = (format!("k8s/{}.yaml", values.name), values.fill(MANIFEST));
    template
        .iter()
        .map(|(path, text)| (PathBuf::from(path), values.fill(text)))
        .chain(std::iter::once((PathBuf::from(manifest.0), manifest.1)))
        .collect()
}

/// Writes the project into `dir` (created if missing, refused unless empty); returns the
/// paths written, relative to `dir`.
pub fn scaffold(
    dir: &Path,
    lang: Lang,
    values: &Values,
    checkout: Option<&Path>,
) -> Result<Vec<PathBuf>, InitError> {
    std::fs::create_dir_all(dir)?;
    if std::fs::read_dir(dir)?.next().is_some() {
        return Err(InitError::NotEmpty {
            dir: dir.display().to_string(),
        });
    }
    let mut written = vec![];
    for (path, text) in files(lang, values) {
        let target = dir.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, text)?;
        written.push(path);
    }
    // From a checkout: the versions the SDK is tested with (cargo prunes what it does not use).
    if let (Lang::Rust, Some(root)) = (lang, checkout) {
        let lock = root.join("Cargo.lock");
        if lock.is_file() {
            std::fs::copy(lock, dir.join("Cargo.lock"))?;
            written.push(PathBuf::from("Cargo.lock"));
        }
    }
    Ok(written)
}

pub fn run(args: InitArgs) -> Result<(), InitError> {
    let name = match &args.name {
        Some(raw) => app_name(raw).ok_or_else(|| InitError::BadName { name: raw.clone() })?,
        None => {
            let absolute = std::path::absolute(&args.dir)?;
            name_from_dir(&absolute).ok_or_else(|| InitError::BadName {
                name: absolute
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            })?
        }
    };
    let checkout = crate::project::source_checkout();
    let values = Values::new(name.clone(), checkout.as_deref());
    let written = scaffold(&args.dir, args.lang, &values, checkout.as_deref())?;
    let dir = args.dir.display();
    println!("stead init: created {name} in {dir}:");
    for path in &written {
        println!("  {}", path.display());
    }
    match args.lang {
        Lang::Rust => {
            if checkout.is_none() {
                println!(
                    "note: Cargo.toml depends on stead-sdk \"0.1\" from your registry; if it is not there, point it at a Stead checkout: stead-sdk = {{ path = \"…/stead/sdk\" }}"
                );
            }
            println!(
                "next:\n  cd {dir}\n  stead dev        # builds, runs and reloads it on http://127.0.0.1:8787\n  cargo test       # the test needs `stead` on the PATH, or STEAD_BIN"
            );
        }
        Lang::Ts => println!(
            "next:\n  cd {dir}\n  npm install\n  stead dev        # runs it and reloads it on http://127.0.0.1:8787\n  npm test         # the test needs `stead` on the PATH, or STEAD_BIN"
        ),
    }
    println!("then docs/getting-started.md: from here to kubectl apply");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_made_from_the_folder() {
        assert_eq!(
            name_from_dir(Path::new("/x/My_Project")).as_deref(),
            Some("my-project")
        );
        assert_eq!(
            name_from_dir(Path::new("hello--world-")).as_deref(),
            Some("hello-world")
        );
        assert_eq!(name_from_dir(Path::new("/x/42")), None);
        assert_eq!(app_name("counter-2").as_deref(), Some("counter-2"));
        for bad in ["", "2x", "Upper", "a_b", "a-", &"a".repeat(64)] {
            assert_eq!(app_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_hole_of_every_template_is_filled() {
        let values = Values::new("hello".into(), Some(Path::new("/src/stead")));
        for lang in [Lang::Rust, Lang::Ts] {
            for (path, text) in files(lang, &values) {
                assert!(!text.contains("{{"), "{} keeps a hole", path.display());
            }
        }
        let rust = files(Lang::Rust, &values);
        let cargo = &rust
            .iter()
            .find(|(p, _)| p == Path::new("Cargo.toml"))
            .unwrap()
            .1;
        assert!(
            cargo.contains("stead-sdk = { path = \"/src/stead/sdk\" }"),
            "{cargo}"
        );
        assert!(cargo.contains("name = \"hello\""), "{cargo}");
        let manifest = &rust
            .iter()
            .find(|(p, _)| p == Path::new("k8s/hello.yaml"))
            .unwrap()
            .1;
        // The manifest names the classes stead dev serves, and the image the Dockerfile builds.
        assert_eq!(
            crate::project::manifest_classes(manifest).unwrap(),
            Some(vec!["Counter".to_owned()])
        );
        assert!(manifest.contains("image: hello:0.1.0"), "{manifest}");
        let ts = files(Lang::Ts, &Values::new("hello".into(), None));
        let package = &ts
            .iter()
            .find(|(p, _)| p == Path::new("package.json"))
            .unwrap()
            .1;
        let package: serde_json::Value = serde_json::from_str(package).unwrap();
        assert_eq!(package["dependencies"]["@stead/workers"], "^0.1.0");
        assert_eq!(package["name"], "hello");
    }

    #[test]
    fn init_refuses_a_folder_that_holds_files() {
        let dir = std::env::temp_dir().join(format!("stead-init-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keep.txt"), "mine").unwrap();
        let values = Values::new("x".into(), None);
        let err = scaffold(&dir, Lang::Ts, &values, None).unwrap_err();
        assert!(matches!(err, InitError::NotEmpty { .. }), "{err}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_file(dir.join("keep.txt")).unwrap();
        let written = scaffold(&dir, Lang::Ts, &values, None).unwrap();
        assert!(written.contains(&PathBuf::from("wrangler.toml")));
        assert!(dir.join("k8s/x.yaml").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
