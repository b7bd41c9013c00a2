//! The user's own project that `stead dev` runs (instead of a bundled example): a Workers
//! project (a wrangler config, served by the TypeScript SDK's runner, `@stead/workers`) or a
//! Cargo project (a `Cargo.toml` beside a `DurableNamespace` manifest naming its classes).
//!
//! Finding a project and turning it into an app command are separate steps: [`Project::find`]
//! only looks at file names; [`Project::prepare`] asks the runner to `describe` the config, or
//! builds the Cargo project, and answers what each shard runs ([`Prepared`]). `stead dev` calls
//! `prepare` again after a change to a watched file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::Command;

/// The wrangler config files a Workers project may have, in the order they are looked for.
pub const WRANGLER_CONFIGS: [&str; 3] = ["wrangler.toml", "wrangler.json", "wrangler.jsonc"];

/// A Cargo project's manifest at its root; else the first `DurableNamespace` among
/// `k8s/*.yaml` (and `*.yml`) in name order, where `stead init` and the examples keep theirs.
pub const MANIFEST_FILE: &str = "stead.yaml";
pub const MANIFEST_DIR: &str = "k8s";

/// Where the TypeScript SDK is, when set: a folder holding [`RUNNER`].
pub const ENV_WORKERS_SDK: &str = "STEAD_WORKERS_SDK";
/// The runner's entry, relative to the SDK's folder.
pub const RUNNER: &str = "bin/stead-workers.mjs";
/// The SDK installed in a project, relative to the project's folder.
pub const SDK_IN_PROJECT: &str = "node_modules/@stead/workers";
/// The Node.js binary `stead dev` runs (`node` from `PATH` unless set).
pub const ENV_NODE: &str = "STEAD_NODE";

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(
        "{ENV_WORKERS_SDK} is set to {dir}, which holds no {RUNNER}; point it at the folder of the @stead/workers package, or unset it"
    )]
    BadSdkSetting { dir: String },
    #[error(
        "cannot find the TypeScript SDK (@stead/workers): looked in {searched}; run `npm install @stead/workers` in the project, or set {ENV_WORKERS_SDK} to the folder of the package"
    )]
    NoSdk { searched: String },
    #[error(
        "the TypeScript SDK in {dir} has no node_modules yet; run `npm install` there first (cd {dir} && npm install)"
    )]
    NpmInstall { dir: String },
    #[error("cannot run {program}: {source}; install Node.js 20 or later, or set {ENV_NODE}")]
    Node {
        program: String,
        source: std::io::Error,
    },
    #[error("the TypeScript SDK cannot read the project's config: {0}")]
    Describe(String),
    #[error("unexpected answer of `stead-workers describe`: {0}")]
    BadDescription(String),
    #[error(
        "{config} binds no Durable Object class of this project (every durable_objects.bindings entry names another script_name); add a binding with a class_name the entry exports"
    )]
    NoClasses { config: String },
    #[error("the manifest {file} is not a readable DurableNamespace: {detail}")]
    Manifest { file: String, detail: String },
    #[error("cannot run cargo: {0}")]
    Cargo(std::io::Error),
    #[error("`cargo build` failed ({status}); see its messages above")]
    BuildFailed { status: String },
    #[error(
        "the Cargo project in {dir} builds no binary; stead dev runs the project's one binary (a src/main.rs)"
    )]
    NoBinary { dir: String },
    #[error(
        "the Cargo project in {dir} builds several binaries ({names}); stead dev runs a project with one, or pass --app-bin"
    )]
    SeveralBinaries { dir: String, names: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A project found in a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Project {
    /// A Workers project: its wrangler config.
    Workers { dir: PathBuf, config: PathBuf },
    /// A Cargo project: its `DurableNamespace` manifest.
    Cargo { dir: PathBuf, manifest: PathBuf },
}

/// What each shard runs for a prepared project, and what to watch for a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The app's working folder: the project's.
    pub dir: PathBuf,
    /// The classes every sidecar serves (`--classes`).
    pub classes: Vec<String>,
    /// Files and folders whose change reloads the app.
    pub watch: Vec<PathBuf>,
}

impl Project {
    /// The project in `dir`, if any: a wrangler config first, else a `Cargo.toml` with a
    /// `DurableNamespace` manifest. Blocking (reads a few files).
    pub fn find(dir: &Path) -> Result<Option<Project>, ProjectError> {
        for name in WRANGLER_CONFIGS {
            let config = dir.join(name);
            if config.is_file() {
                return Ok(Some(Project::Workers {
                    dir: dir.to_path_buf(),
                    config,
                }));
            }
        }
        if !dir.join("Cargo.toml").is_file() {
            return Ok(None);
        }
        Ok(find_manifest(dir)?.map(|manifest| Project::Cargo {
            dir: dir.to_path_buf(),
            manifest,
        }))
    }

    pub fn dir(&self) -> &Path {
        match self {
            Project::Workers { dir, .. } | Project::Cargo { dir, .. } => dir,
        }
    }

    /// "Workers project" or "Cargo project".
    pub fn kind(&self) -> &'static str {
        match self {
            Project::Workers { .. } => "Workers project",
            Project::Cargo { .. } => "Cargo project",
        }
    }

    /// Asks the runner to describe a Workers project, or reads the manifest of a Cargo project
    /// and builds it; answers what each shard runs.
    pub async fn prepare(&self) -> Result<Prepared, ProjectError> {
        match self {
            Project::Workers { dir, config } => {
                let sdk = {
                    let dir = dir.clone();
                    blocking(move || {
                        let sdk = find_workers_sdk(
                            std::env::var_os(ENV_WORKERS_SDK).map(PathBuf::from),
                            &dir,
                            source_checkout().as_deref(),
                        )?;
                        check_installed(&sdk)?;
                        Ok(sdk)
                    })
                    .await?
                };
                let node = node_program();
                let description = describe(&node, &sdk, dir, config).await?;
                workers_app(node, &sdk, dir, description)
            }
            Project::Cargo { dir, manifest } => {
                let classes = {
                    let manifest = manifest.clone();
                    blocking(move || read_manifest_classes(&manifest)).await?
                };
                let program = cargo_build(dir).await?;
                Ok(Prepared {
                    program,
                    args: vec![],
                    dir: dir.clone(),
                    classes,
                    watch: vec![
                        dir.join("src"),
                        dir.join("Cargo.toml"),
                        dir.join("build.rs"),
                        manifest.clone(),
                    ],
                })
            }
        }
    }
}

/// The root of the source checkout this `stead` was built from, if it still exists.
pub fn source_checkout() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("Cargo.toml")
        .is_file()
        .then(|| root.canonicalize().unwrap_or(root))
}

fn node_program() -> PathBuf {
    std::env::var_os(ENV_NODE)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"))
}

/// The TypeScript SDK's folder: `$STEAD_WORKERS_SDK`, else the project's
/// `node_modules/@stead/workers`, else the source checkout's `sdk-ts/`.
pub fn find_workers_sdk(
    setting: Option<PathBuf>,
    project: &Path,
    checkout: Option<&Path>,
) -> Result<PathBuf, ProjectError> {
    if let Some(dir) = setting {
        if dir.join(RUNNER).is_file() {
            return Ok(dir);
        }
        return Err(ProjectError::BadSdkSetting {
            dir: dir.display().to_string(),
        });
    }
    let candidates: Vec<PathBuf> = [
        Some(project.join(SDK_IN_PROJECT)),
        checkout.map(|c| c.join("sdk-ts")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(found) = candidates.iter().find(|dir| dir.join(RUNNER).is_file()) {
        return Ok(found.clone());
    }
    Err(ProjectError::NoSdk {
        searched: candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(" and "),
    })
}

/// The SDK's own dependencies (esbuild, a TOML parser) must be installed: in its own
/// `node_modules/`, or around it when it is itself installed in a `node_modules/`. `stead dev`
/// never installs anything on its own.
pub fn check_installed(sdk: &Path) -> Result<(), ProjectError> {
    let inside_node_modules = sdk.components().any(|c| c.as_os_str() == "node_modules");
    if inside_node_modules || sdk.join("node_modules").is_dir() {
        Ok(())
    } else {
        Err(ProjectError::NpmInstall {
            dir: sdk.display().to_string(),
        })
    }
}

/// The one line `stead-workers describe` prints (the contract of issue 12).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Description {
    pub config: PathBuf,
    pub main: PathBuf,
    pub classes: Vec<String>,
    #[serde(default)]
    pub bindings: BTreeMap<String, String>,
    #[serde(default)]
    pub vars: serde_json::Value,
    #[serde(default)]
    pub watch: Vec<PathBuf>,
}

impl Description {
    /// Reads the runner's stdout: one line of JSON (the last non-empty line, so that a note
    /// printed before it does no harm).
    pub fn parse(stdout: &str) -> Result<Description, ProjectError> {
        let line = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .ok_or_else(|| ProjectError::BadDescription("it printed nothing".into()))?;
        serde_json::from_str(line).map_err(|e| ProjectError::BadDescription(e.to_string()))
    }
}

async fn describe(
    node: &Path,
    sdk: &Path,
    project: &Path,
    config: &Path,
) -> Result<Description, ProjectError> {
    let out = Command::new(node)
        .arg(sdk.join(RUNNER))
        .arg("describe")
        .arg("--config")
        .arg(config)
        .current_dir(project)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| ProjectError::Node {
            program: node.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr.trim();
        return Err(ProjectError::Describe(if message.is_empty() {
            format!("it exited with {}", out.status)
        } else {
            message.to_owned()
        }));
    }
    Description::parse(&String::from_utf8_lossy(&out.stdout))
}

/// What each shard runs for a described Workers project: `node <sdk>/bin/stead-workers.mjs
/// serve --config <config>` in the project's folder.
pub fn workers_app(
    node: PathBuf,
    sdk: &Path,
    project: &Path,
    description: Description,
) -> Result<Prepared, ProjectError> {
    let mut classes: Vec<String> = vec![];
    for class in description.classes {
        if !classes.contains(&class) {
            classes.push(class);
        }
    }
    if classes.is_empty() {
        return Err(ProjectError::NoClasses {
            config: description.config.display().to_string(),
        });
    }
    let mut watch = description.watch;
    if !watch.contains(&description.config) {
        watch.push(description.config.clone());
    }
    Ok(Prepared {
        program: node,
        args: vec![
            sdk.join(RUNNER).into_os_string(),
            "serve".into(),
            "--config".into(),
            description.config.into_os_string(),
        ],
        dir: project.to_path_buf(),
        classes,
        watch,
    })
}

/// The manifest of a Cargo project in `dir`: `stead.yaml`, else the first file of `k8s/`
/// (`.yaml` or `.yml`, in name order) holding a `DurableNamespace`.
pub fn find_manifest(dir: &Path) -> Result<Option<PathBuf>, ProjectError> {
    let root = dir.join(MANIFEST_FILE);
    if root.is_file() {
        return Ok(Some(root));
    }
    let Ok(entries) = std::fs::read_dir(dir.join(MANIFEST_DIR)) else {
        return Ok(None);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        if text.contains("DurableNamespace") && manifest_classes(&text).is_ok_and(|c| c.is_some()) {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

#[derive(Deserialize)]
struct ManifestDoc {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    spec: Option<ManifestSpec>,
}

#[derive(Deserialize)]
struct ManifestSpec {
    #[serde(default)]
    classes: Vec<String>,
}

/// `spec.classes` of the first `DurableNamespace` document of a (multi-document) YAML file;
/// `None` when it holds none.
pub fn manifest_classes(yaml: &str) -> Result<Option<Vec<String>>, String> {
    let docs: Vec<ManifestDoc> = serde_saphyr::from_multiple(yaml).map_err(|e| e.to_string())?;
    let Some(doc) = docs
        .into_iter()
        .find(|d| d.kind.as_deref() == Some("DurableNamespace"))
    else {
        return Ok(None);
    };
    let classes = doc.spec.map(|s| s.classes).unwrap_or_default();
    if classes.is_empty() {
        return Err("its spec.classes is empty: name the classes the app serves".into());
    }
    Ok(Some(classes))
}

fn read_manifest_classes(file: &Path) -> Result<Vec<String>, ProjectError> {
    let bad = |detail: String| ProjectError::Manifest {
        file: file.display().to_string(),
        detail,
    };
    let text = std::fs::read_to_string(file).map_err(|e| bad(e.to_string()))?;
    manifest_classes(&text)
        .map_err(bad)?
        .ok_or_else(|| bad("it holds no document of kind DurableNamespace".into()))
}

/// One binary built by `cargo build --message-format=json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub name: String,
    pub executable: PathBuf,
}

/// The binaries of the package at `manifest_path` among cargo's JSON messages (one per line).
pub fn built_binaries(messages: &str, manifest_path: &Path) -> Vec<Built> {
    let mut bins: Vec<Built> = vec![];
    for line in messages.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let ours = msg["manifest_path"]
            .as_str()
            .is_some_and(|p| same_file(Path::new(p), manifest_path));
        let is_bin = msg["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        if ours && is_bin && !bins.iter().any(|b| b.name == name) {
            bins.push(Built {
                name: name.to_owned(),
                executable: PathBuf::from(exe),
            });
        }
    }
    bins
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// `cargo build --bins` in `dir` (its messages go to the terminal); answers the binary.
async fn cargo_build(dir: &Path) -> Result<PathBuf, ProjectError> {
    println!(
        "stead dev: building the project (cargo build in {})",
        dir.display()
    );
    let mut child = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--bins",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(ProjectError::Cargo)?;
    let mut messages = String::new();
    if let Some(out) = child.stdout.take() {
        let mut lines = tokio::io::BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            messages.push_str(&line);
            messages.push('\n');
        }
    }
    let status = child.wait().await.map_err(ProjectError::Cargo)?;
    if !status.success() {
        return Err(ProjectError::BuildFailed {
            status: status.to_string(),
        });
    }
    let mut bins = built_binaries(&messages, &dir.join("Cargo.toml"));
    match bins.len() {
        0 => Err(ProjectError::NoBinary {
            dir: dir.display().to_string(),
        }),
        1 => Ok(bins.remove(0).executable),
        _ => Err(ProjectError::SeveralBinaries {
            dir: dir.display().to_string(),
            names: bins
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProjectError> + Send + 'static,
) -> Result<T, ProjectError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProjectError::Io(std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stead-project-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn fake_sdk(dir: &Path) {
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join(RUNNER), "// runner").unwrap();
    }

    #[test]
    fn the_sdk_is_looked_for_in_the_setting_the_project_then_the_checkout() {
        let root = scratch("sdk");
        let project = root.join("app");
        let checkout = root.join("checkout");
        let setting = root.join("elsewhere");
        std::fs::create_dir_all(&project).unwrap();
        fake_sdk(&checkout.join("sdk-ts"));

        // Only the checkout has it.
        assert_eq!(
            find_workers_sdk(None, &project, Some(&checkout)).unwrap(),
            checkout.join("sdk-ts")
        );
        // The project's own install comes before the checkout.
        fake_sdk(&project.join(SDK_IN_PROJECT));
        assert_eq!(
            find_workers_sdk(None, &project, Some(&checkout)).unwrap(),
            project.join(SDK_IN_PROJECT)
        );
        // The setting comes first, and a wrong setting is an error, not a silent fallback.
        let err = find_workers_sdk(Some(setting.clone()), &project, Some(&checkout)).unwrap_err();
        assert!(matches!(err, ProjectError::BadSdkSetting { .. }), "{err}");
        fake_sdk(&setting);
        assert_eq!(
            find_workers_sdk(Some(setting.clone()), &project, Some(&checkout)).unwrap(),
            setting
        );
        // Nowhere: the message says how to install it.
        let bare = root.join("bare");
        std::fs::create_dir_all(&bare).unwrap();
        let err = find_workers_sdk(None, &bare, Some(&root.join("gone"))).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("npm install @stead/workers"), "{message}");
        assert!(
            message.contains(&format!(
                "looked in {}/{SDK_IN_PROJECT} and {}/gone/sdk-ts",
                bare.display(),
                root.display()
            )),
            "{message}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_sdk_without_its_dependencies_asks_for_npm_install() {
        let root = scratch("npm");
        let checkout_sdk = root.join("sdk-ts");
        fake_sdk(&checkout_sdk);
        let err = check_installed(&checkout_sdk).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&format!("cd {} && npm install", checkout_sdk.display())),
            "{message}"
        );
        std::fs::create_dir_all(checkout_sdk.join("node_modules")).unwrap();
        check_installed(&checkout_sdk).unwrap();
        // Installed in a project: its dependencies sit beside it, hoisted.
        let in_project = root.join("app").join(SDK_IN_PROJECT);
        fake_sdk(&in_project);
        check_installed(&in_project).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_description_becomes_the_classes_and_the_serve_command() {
        let line = r#"{"config":"/p/wrangler.toml","main":"/p/src/index.ts","classes":["Counter","Room","Counter"],"bindings":{"COUNTER":"Counter","ROOM":"Room"},"vars":{"GREETING":"hi"},"watch":["/p/src"]}"#;
        let description = Description::parse(&format!("bundling…\n{line}\n")).unwrap();
        assert_eq!(description.main, PathBuf::from("/p/src/index.ts"));
        assert_eq!(description.bindings["ROOM"], "Room");
        let prepared = workers_app(
            PathBuf::from("node"),
            Path::new("/sdk"),
            Path::new("/p"),
            description,
        )
        .unwrap();
        assert_eq!(prepared.classes, vec!["Counter", "Room"]);
        let args: Vec<String> = prepared
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            vec![
                "/sdk/bin/stead-workers.mjs",
                "serve",
                "--config",
                "/p/wrangler.toml"
            ]
        );
        assert_eq!(prepared.dir, PathBuf::from("/p"));
        // The config reloads too, even when the runner did not list it.
        assert_eq!(
            prepared.watch,
            vec![PathBuf::from("/p/src"), PathBuf::from("/p/wrangler.toml")]
        );

        let none = r#"{"config":"/p/wrangler.toml","main":"/p/i.js","classes":[]}"#;
        let err = workers_app(
            PathBuf::from("node"),
            Path::new("/sdk"),
            Path::new("/p"),
            Description::parse(none).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, ProjectError::NoClasses { .. }), "{err}");
        assert!(matches!(
            Description::parse(""),
            Err(ProjectError::BadDescription(_))
        ));
        assert!(matches!(
            Description::parse("{\"main\": 1}"),
            Err(ProjectError::BadDescription(_))
        ));
    }

    #[test]
    fn a_wrangler_config_comes_before_a_cargo_manifest() {
        let dir = scratch("find");
        assert_eq!(Project::find(&dir).unwrap(), None);
        std::fs::write(dir.join("Cargo.toml"), "[package]\nname = \"x\"").unwrap();
        // A Cargo project without a manifest is not a Stead project.
        assert_eq!(Project::find(&dir).unwrap(), None);
        std::fs::create_dir_all(dir.join("k8s")).unwrap();
        std::fs::write(
            dir.join("k8s/a-service.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("k8s/b.yml"),
            "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: stead.dev/v1alpha1\nkind: DurableNamespace\nmetadata:\n  name: x\nspec:\n  classes:\n    - Counter\n    - Room\n",
        )
        .unwrap();
        let found = Project::find(&dir).unwrap();
        assert_eq!(
            found,
            Some(Project::Cargo {
                dir: dir.clone(),
                manifest: dir.join("k8s/b.yml")
            })
        );
        assert_eq!(
            read_manifest_classes(&dir.join("k8s/b.yml")).unwrap(),
            vec!["Counter", "Room"]
        );
        std::fs::write(dir.join("wrangler.jsonc"), "{}").unwrap();
        std::fs::write(dir.join("wrangler.toml"), "").unwrap();
        assert_eq!(
            Project::find(&dir).unwrap(),
            Some(Project::Workers {
                dir: dir.clone(),
                config: dir.join("wrangler.toml")
            })
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_manifest_without_classes_is_refused_with_what_to_do() {
        let err = manifest_classes("kind: DurableNamespace\nspec:\n  shards: 1\n").unwrap_err();
        assert!(err.contains("spec.classes"), "{err}");
        assert_eq!(
            manifest_classes("kind: DurableNamespace\nspec: {classes: [A]}\n").unwrap(),
            Some(vec!["A".to_owned()])
        );
        assert_eq!(manifest_classes("kind: Service\n").unwrap(), None);
    }

    #[test]
    fn the_project_binary_is_picked_from_cargo_messages() {
        let dir = scratch("bins");
        std::fs::write(dir.join("Cargo.toml"), "").unwrap();
        let ours = dir.join("Cargo.toml").display().to_string();
        let messages = [
            serde_json::json!({"reason": "compiler-artifact", "manifest_path": "/elsewhere/Cargo.toml", "target": {"kind": ["lib"], "name": "stead_sdk"}, "executable": null}),
            serde_json::json!({"reason": "compiler-artifact", "manifest_path": ours, "target": {"kind": ["bin"], "name": "hello"}, "executable": "/t/debug/hello"}),
            serde_json::json!({"reason": "build-finished", "success": true}),
        ]
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join("\n");
        assert_eq!(
            built_binaries(&format!("not json\n{messages}"), &dir.join("Cargo.toml")),
            vec![Built {
                name: "hello".into(),
                executable: PathBuf::from("/t/debug/hello")
            }]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
