//! `stead init`: scaffolds a runnable project in a new folder: a counter object, its config,
//! a `DurableNamespace` manifest, a Dockerfile and one test, in TypeScript (a Workers project
//! on `@stead/workers`) or Rust (a Cargo project on `stead-sdk`). In the folder of an existing
//! Workers project it adds only what Kubernetes needs: the Dockerfile and the manifest, with
//! the classes of its wrangler config. The files are templates under `sidecar/templates/`,
//! compiled into the binary.

use std::path::{Path, PathBuf};

use crate::project::Project;

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
    /// The folder to create (it may exist if it is empty); or the folder of an existing Workers
    /// project, to which it adds a Dockerfile and a DurableNamespace manifest.
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
    #[error(
        "{dir} already holds files; pick a new folder (stead init never overwrites), or the folder of a Workers project (a wrangler config) to add a Dockerfile and a DurableNamespace to it"
    )]
    NotEmpty { dir: String },
    #[error(transparent)]
    Project(#[from] crate::project::ProjectError),
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

/// What a Workers project needs for Kubernetes (a subset of [`TS`]).
const TS_KUBERNETES: [&str; 2] = ["Dockerfile", ".dockerignore"];

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
    /// The classes of the `DurableNamespace`.
    pub classes: Vec<String>,
    /// A Workers project's config file, relative to the project.
    pub config: String,
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
            classes: vec!["Counter".to_owned()],
            config: "wrangler.toml".to_owned(),
        }
    }

    fn fill(&self, template: &str) -> String {
        template
            .replace("{{name}}", &self.name)
            .replace("{{image}}", &format!("{}:0.1.0", self.name))
            .replace("{{stead_sdk}}", &self.stead_sdk)
            .replace("{{workers_dependency}}", &self.workers_dependency)
            .replace("{{classes}}", &self.classes.join(", "))
            .replace("{{config}}", &self.config)
    }

    fn manifest(&self) -> (PathBuf, String) {
        (
            PathBuf::from(format!("k8s/{}.yaml", self.name)),
            self.fill(MANIFEST),
        )
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
    template
        .iter()
        .map(|(path, text)| (PathBuf::from(path), values.fill(text)))
        .chain(std::iter::once(values.manifest()))
        .collect()
}

/// What an existing Workers project gets for Kubernetes: the image and the manifest.
pub fn kubernetes_files(values: &Values) -> Vec<(PathBuf, String)> {
    TS.iter()
        .filter(|(path, _)| TS_KUBERNETES.contains(path))
        .map(|(path, text)| (PathBuf::from(path), values.fill(text)))
        .chain(std::iter::once(values.manifest()))
        .collect()
}

/// Writes `files` into `dir`, leaving any that already exists as it is; returns
/// `(written, kept)`.
fn write_missing(
    dir: &Path,
    files: Vec<(PathBuf, String)>,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), InitError> {
    let (mut written, mut kept) = (vec![], vec![]);
    for (path, text) in files {
        let target = dir.join(&path);
        if target.exists() {
            kept.push(path);
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, text)?;
        written.push(path);
    }
    Ok((written, kept))
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

/// The Workers project in `dir`, if `dir` holds a wrangler config.
async fn existing_workers_project(dir: &Path) -> Result<Option<Project>, InitError> {
    let dir = dir.to_path_buf();
    let found = blocking(move || match std::fs::canonicalize(&dir) {
        Ok(dir) => Ok(Project::find(&dir)?),
        Err(_) => Ok(None),
    })
    .await?;
    Ok(found.filter(|p| matches!(p, Project::Workers { .. })))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, InitError> + Send + 'static,
) -> Result<T, InitError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| InitError::Io(std::io::Error::other(e)))?
}

/// Adds a Dockerfile and a `DurableNamespace` to an existing Workers project, with the classes
/// the runner reads from its config.
async fn add_kubernetes(
    dir: &Path,
    config: &Path,
    mut values: Values,
    checkout: Option<&Path>,
) -> Result<(), InitError> {
    let project = Project::Workers {
        dir: dir.to_path_buf(),
        config: config.to_path_buf(),
    };
    values.classes = project.prepare().await?.classes;
    values.config = config
        .strip_prefix(dir)
        .unwrap_or(config)
        .display()
        .to_string();
    let (written, kept, package) = {
        let dir = dir.to_path_buf();
        let files = kubernetes_files(&values);
        blocking(move || {
            let (written, kept) = write_missing(&dir, files)?;
            let package = std::fs::read_to_string(dir.join("package.json")).unwrap_or_default();
            Ok((written, kept, package))
        })
        .await?
    };
    println!(
        "stead init: the Workers project in {} (classes {}) gets:",
        dir.display(),
        values.classes.join(", ")
    );
    for path in &written {
        println!("  {}", path.display());
    }
    for path in &kept {
        println!("  {} (already there: left as it is)", path.display());
    }
    if !package.contains("\"@stead/workers\"") {
        let checkout = checkout.map_or_else(
            || "<stead checkout>".to_owned(),
            |root| root.display().to_string(),
        );
        println!(
            "note: the image runs @stead/workers from node_modules: add it with `npm install @stead/workers`, or while it is not published from a tarball in the project: `npm pack {checkout}/sdk-ts && npm install ./stead-workers-*.tgz`"
        );
    }
    println!("then docs/getting-started.md, section 4: build the image, kubectl apply");
    Ok(())
}

pub async fn run(args: InitArgs) -> Result<(), InitError> {
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
    if let Some(Project::Workers { dir, config }) = existing_workers_project(&args.dir).await? {
        return add_kubernetes(&dir, &config, values, checkout.as_deref()).await;
    }
    let written = {
        let (dir, lang, values, checkout) = (
            args.dir.clone(),
            args.lang,
            values.clone(),
            checkout.clone(),
        );
        blocking(move || scaffold(&dir, lang, &values, checkout.as_deref())).await?
    };
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
    fn a_workers_project_gets_a_manifest_with_its_classes_and_an_image_of_its_config() {
        let mut values = Values::new("chat".into(), None);
        values.classes = vec!["ChatRoom".into(), "Lobby".into()];
        values.config = "wrangler.jsonc".into();
        let files = kubernetes_files(&values);
        let paths: Vec<&Path> = files.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(
            paths,
            vec![
                Path::new("Dockerfile"),
                Path::new(".dockerignore"),
                Path::new("k8s/chat.yaml")
            ]
        );
        assert_eq!(
            crate::project::manifest_classes(&files[2].1).unwrap(),
            Some(vec!["ChatRoom".to_owned(), "Lobby".to_owned()])
        );
        assert!(
            files[0]
                .1
                .contains(r#""serve", "--config", "wrangler.jsonc"]"#),
            "{}",
            files[0].1
        );

        // What is there already stays as it is.
        let dir = std::env::temp_dir().join(format!("stead-init-k8s-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), "FROM mine").unwrap();
        let (written, kept) = write_missing(&dir, files).unwrap();
        assert_eq!(kept, vec![PathBuf::from("Dockerfile")]);
        assert_eq!(written.len(), 2);
        assert_eq!(
            std::fs::read_to_string(dir.join("Dockerfile")).unwrap(),
            "FROM mine"
        );
        assert!(dir.join("k8s/chat.yaml").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
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
