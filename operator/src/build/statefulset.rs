//! The shards: one StatefulSet whose pods each run the user's app and the injected Stead sidecar,
//! with a PersistentVolumeClaim per shard.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretKeySelector, SecurityContext, SleepAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    ADMIN_PORT, API_PORT, APP_CONTAINER, DATA_DIR, DATA_VOLUME, INGRESS_PORT, PEER_PORT,
    SIDECAR_CONTAINER, TOKEN_KEY, child_meta, names, selector_labels,
};
use crate::validate::ValidatedSpec;

/// User and group the pods run as when the image does not say otherwise (the "nonroot" user of
/// distroless images). The volume is group-owned by it so the sidecar can write.
pub const RUN_AS: i64 = 65532;
const TMP_VOLUME: &str = "tmp";

/// How long a stopping shard keeps serving, with `/readyz` at 503, before its ports close
/// (`STEAD_SHUTDOWN_DELAY`). A terminating pod leaves its Services asynchronously: the
/// EndpointSlice controller updates the slice, then kube-proxy on every node rewrites its rules
/// (batched, at most once a second by default); until then connections still arrive, and a
/// closed port refuses them. That takes a second or two on a quiet cluster; 5 s, the usual
/// value of a pre-stop pause, leaves room for a busy API server or node.
pub const SHUTDOWN_DELAY_SECONDS: i64 = 5;
/// Time the pod gets beyond the shutdown delay and the longest turn: commits, WebSocket
/// closes and the app's own exit.
const STOP_MARGIN_SECONDS: i64 = 10;

/// The pod's `terminationGracePeriodSeconds`: the shutdown delay, then a turn that started just
/// before it ended may still run for a whole turn timeout, then the margin. Kubernetes' default
/// of 30 s would kill a shard in the middle of a long turn.
pub fn termination_grace_seconds(spec: &ValidatedSpec) -> i64 {
    let turn = i64::try_from(spec.turn_timeout.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
    SHUTDOWN_DELAY_SECONDS
        .saturating_add(turn)
        .saturating_add(STOP_MARGIN_SECONDS)
}

/// Where a sidecar finds any shard: `{i}` is the ordinal, so shard `i` is
/// `{name}-{i}.{name}-peers.{ns}.svc:7878`. A template, not a list, so that the pod template does
/// not change with the number of shards (no rolling restart when resharding).
pub fn peer_template(spec: &ValidatedSpec) -> String {
    format!(
        "{}-{{i}}.{}.{}.svc:{PEER_PORT}",
        spec.name,
        names::peers_service(&spec.name),
        spec.namespace
    )
}

/// The shards' StatefulSet with `replicas` pods: the number [`crate::reshard`] decided on, which
/// differs from `spec.shards` while a resharding runs.
/// The peer-port address of shard `ordinal` (its stable DNS name), as [`peer_template`] gives it.
pub fn peer_addr(spec: &ValidatedSpec, ordinal: u32) -> String {
    peer_template(spec).replace("{i}", &ordinal.to_string())
}

/// The shards' StatefulSet with `replicas` pods: the number [`crate::reshard`] decided on, which
/// differs from `spec.shards` while a resharding runs.
pub fn statefulset(spec: &ValidatedSpec, sidecar_image: &str, replicas: i32) -> StatefulSet {
    let selector = selector_labels(spec);
    let mut pod_labels = super::labels(spec, "shard");
    pod_labels.extend(selector.clone());
    StatefulSet {
        metadata: child_meta(spec, names::shards(&spec.name), "shard"),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names::peers_service(&spec.name)),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some(spec.when_scaled_down.as_str().into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(spec, sidecar_image)),
            },
            volume_claim_templates: Some(vec![volume_claim_template(spec)]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(spec: &ValidatedSpec, sidecar_image: &str) -> PodSpec {
    PodSpec {
        service_account_name: Some(names::sidecar_account(&spec.name)),
        // Service links would fill the app's environment with every Service of the namespace.
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![app_container(spec), sidecar_container(spec, sidecar_image)],
        termination_grace_period_seconds: Some(termination_grace_seconds(spec)),
        volumes: Some(vec![Volume {
            // The root filesystems are read-only; both containers get a scratch /tmp.
            name: TMP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    }
}

fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn tmp_mount() -> VolumeMount {
    VolumeMount {
        name: TMP_VOLUME.into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }
}

fn app_addr(spec: &ValidatedSpec) -> String {
    format!("127.0.0.1:{}", spec.app.port)
}

fn app_container(spec: &ValidatedSpec) -> Container {
    let mut env_vars = spec.app.env.clone();
    env_vars.push(env("STEAD_APP_ADDR", app_addr(spec)));
    env_vars.push(env("STEAD_API_URL", format!("http://127.0.0.1:{API_PORT}")));
    Container {
        name: APP_CONTAINER.into(),
        image: Some(spec.app.image.clone()),
        env: Some(env_vars),
        resources: spec.app.resources.clone(),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![tmp_mount()]),
        // Kubernetes signals both containers at once; the app must keep answering the events
        // the sidecar still serves during its shutdown delay (a sleep needs no shell in the
        // image).
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: SHUTDOWN_DELAY_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ..Container::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn sidecar_container(spec: &ValidatedSpec, image: &str) -> Container {
    let classes: Vec<&str> = spec.classes.iter().map(|c| c.as_str()).collect();
    let env_vars = vec![
        env_from_field("POD_NAME", "metadata.name"),
        env_from_field("POD_NAMESPACE", "metadata.namespace"),
        env("STEAD_NAMESPACE", spec.name.clone()),
        env("STEAD_CLASSES", classes.join(",")),
        env("STEAD_SLOTS", spec.slots.to_string()),
        env("STEAD_DURABILITY", spec.durability.as_str()),
        env("STEAD_SYNC", spec.sync.as_str()),
        env(
            "STEAD_IDLE_TIMEOUT",
            ValidatedSpec::duration_flag(spec.idle_timeout),
        ),
        env(
            "STEAD_TURN_TIMEOUT",
            ValidatedSpec::duration_flag(spec.turn_timeout),
        ),
        env("STEAD_DATA_DIR", DATA_DIR),
        env("STEAD_APP_ADDR", app_addr(spec)),
        env("STEAD_INGRESS_ADDR", format!("0.0.0.0:{INGRESS_PORT}")),
        env("STEAD_PEER_ADDR", format!("0.0.0.0:{PEER_PORT}")),
        env("STEAD_ADMIN_ADDR", format!("0.0.0.0:{ADMIN_PORT}")),
        env("STEAD_API_ADDR", format!("127.0.0.1:{API_PORT}")),
        env("STEAD_PEER_TEMPLATE", peer_template(spec)),
        EnvVar {
            name: "STEAD_PEER_TOKEN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: names::token_secret(&spec.name),
                    key: TOKEN_KEY.into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env("STEAD_LOG_FORMAT", "json"),
        env("STEAD_SHUTDOWN_DELAY", format!("{SHUTDOWN_DELAY_SECONDS}s")),
    ];
    Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(image.into()),
        command: Some(vec!["stead".into(), "sidecar".into()]),
        env: Some(env_vars),
        ports: Some(vec![
            port("ingress", INGRESS_PORT),
            port("peer", PEER_PORT),
            port("admin", ADMIN_PORT),
        ]),
        readiness_probe: Some(admin_probe("/readyz", 5, 3)),
        liveness_probe: Some(admin_probe("/healthz", 10, 6)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: DATA_VOLUME.into(),
                mount_path: DATA_DIR.into(),
                ..VolumeMount::default()
            },
            tmp_mount(),
        ]),
        ..Container::default()
    }
}

/// Kubernetes refuses any change to a StatefulSet's volume claim templates. Once the shards
/// exist, keep the size and class they were created with, so that an edited `spec.storage`
/// does not make every later apply fail. Returns whether the spec asked for something else.
pub fn keep_volume_claims(desired: &mut StatefulSet, existing: Option<&StatefulSet>) -> bool {
    let Some(existing) = existing
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.volume_claim_templates.as_ref())
    else {
        return false;
    };
    let Some(wanted) = desired
        .spec
        .as_mut()
        .and_then(|s| s.volume_claim_templates.as_mut())
    else {
        return false;
    };
    let mut differed = false;
    for claim in wanted.iter_mut() {
        let Some(old) = existing
            .iter()
            .find(|c| c.metadata.name == claim.metadata.name)
        else {
            continue;
        };
        let (Some(new_spec), Some(old_spec)) = (claim.spec.as_mut(), old.spec.as_ref()) else {
            continue;
        };
        let old_size = old_spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"));
        let new_size = new_spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"));
        if old_size != new_size
            || (new_spec.storage_class_name.is_some()
                && old_spec.storage_class_name != new_spec.storage_class_name)
        {
            differed = true;
        }
        new_spec.storage_class_name = old_spec.storage_class_name.clone();
        if let Some(size) = old_size.cloned() {
            new_spec
                .resources
                .get_or_insert_with(Default::default)
                .requests = Some(BTreeMap::from([("storage".to_owned(), size)]));
        }
    }
    differed
}

fn volume_claim_template(spec: &ValidatedSpec) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(selector_labels(spec)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: spec.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(spec.storage_size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::chat_spec;

    const IMAGE: &str = "ghcr.io/stead-dev/stead:test";

    fn sts() -> StatefulSet {
        statefulset(&chat_spec(), IMAGE, 3)
    }

    fn pod() -> PodSpec {
        sts().spec.and_then(|s| s.template.spec).expect("pod spec")
    }

    fn container(name: &str) -> Container {
        pod()
            .containers
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    fn env_value(c: &Container, name: &str) -> Option<String> {
        c.env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    }

    fn env_source(c: &Container, name: &str) -> Option<EnvVarSource> {
        c.env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value_from
            .clone()
    }

    #[test]
    fn one_pod_per_shard_started_in_parallel_behind_the_peers_service() {
        let s = sts().spec.expect("spec");
        assert_eq!(s.replicas, Some(3));
        assert_eq!(s.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(s.service_name.as_deref(), Some("chat-peers"));
    }

    #[test]
    fn the_app_container_runs_the_users_image_and_finds_the_sidecar() {
        let app = container("app");
        assert_eq!(app.image.as_deref(), Some("ghcr.io/acme/chat:1.2"));
        assert_eq!(
            env_value(&app, "STEAD_APP_ADDR").as_deref(),
            Some("127.0.0.1:3000")
        );
        assert_eq!(
            env_value(&app, "STEAD_API_URL").as_deref(),
            Some("http://127.0.0.1:9787")
        );
        assert_eq!(
            env_value(&app, "LOG").as_deref(),
            Some("debug"),
            "user env kept"
        );
        let limits = app.resources.and_then(|r| r.limits).expect("limits");
        assert_eq!(limits.get("memory"), Some(&Quantity("256Mi".into())));
    }

    #[test]
    fn the_sidecar_is_injected_with_the_namespace_settings() {
        let sc = container("sidecar");
        assert_eq!(sc.image.as_deref(), Some(IMAGE));
        assert_eq!(
            sc.command,
            Some(vec!["stead".to_owned(), "sidecar".to_owned()])
        );
        let want = [
            ("STEAD_CLASSES", "ChatRoom,Lobby"),
            ("STEAD_SLOTS", "4096"),
            ("STEAD_DURABILITY", "relaxed"),
            ("STEAD_SYNC", "volume"),
            ("STEAD_IDLE_TIMEOUT", "30s"),
            ("STEAD_TURN_TIMEOUT", "1500ms"),
            ("STEAD_DATA_DIR", "/data"),
            ("STEAD_APP_ADDR", "127.0.0.1:3000"),
            ("STEAD_INGRESS_ADDR", "0.0.0.0:8787"),
            ("STEAD_PEER_ADDR", "0.0.0.0:7878"),
            ("STEAD_ADMIN_ADDR", "0.0.0.0:9788"),
            ("STEAD_API_ADDR", "127.0.0.1:9787"),
            ("STEAD_NAMESPACE", "chat"),
        ];
        for (name, value) in want {
            assert_eq!(env_value(&sc, name).as_deref(), Some(value), "{name}");
        }
    }

    #[test]
    fn the_sidecar_finds_every_shard_by_its_stable_dns_name_through_a_template() {
        let sc = container("sidecar");
        assert_eq!(
            env_value(&sc, "STEAD_PEER_TEMPLATE").as_deref(),
            Some("chat-{i}.chat-peers.apps.svc:7878")
        );
        assert_eq!(
            env_value(&sc, "STEAD_PEERS"),
            None,
            "no list that changes with shards"
        );
        assert_eq!(
            peer_addr(&chat_spec(), 4),
            "chat-4.chat-peers.apps.svc:7878"
        );
        let ns = env_source(&sc, "POD_NAMESPACE")
            .and_then(|s| s.field_ref)
            .expect("fieldRef");
        assert_eq!(ns.field_path, "metadata.namespace");
    }

    #[test]
    fn changing_the_number_of_shards_changes_only_the_replicas() {
        let three = statefulset(&chat_spec(), IMAGE, 3).spec.expect("spec");
        let mut spec = chat_spec();
        spec.shards = 5;
        let five = statefulset(&spec, IMAGE, 5).spec.expect("spec");
        assert_eq!(five.replicas, Some(5));
        assert_eq!(
            three.template, five.template,
            "a pod template change would restart every shard"
        );
        assert_eq!(three.volume_claim_templates, five.volume_claim_templates);
    }

    #[test]
    fn volumes_of_removed_shards_follow_the_namespaces_policy() {
        let mut spec = chat_spec();
        spec.when_scaled_down = stead_core::crd::VolumePolicy::Delete;
        let policy = statefulset(&spec, IMAGE, 3)
            .spec
            .and_then(|s| s.persistent_volume_claim_retention_policy)
            .expect("retention");
        assert_eq!(policy.when_scaled.as_deref(), Some("Delete"));
        assert_eq!(
            policy.when_deleted.as_deref(),
            Some("Retain"),
            "deleting the namespace still keeps the data"
        );
    }

    #[test]
    fn the_sidecar_learns_its_ordinal_from_the_pod_name_and_its_token_from_the_secret() {
        let sc = container("sidecar");
        let pod_name = env_source(&sc, "POD_NAME")
            .and_then(|s| s.field_ref)
            .expect("fieldRef");
        assert_eq!(pod_name.field_path, "metadata.name");
        let token = env_source(&sc, "STEAD_PEER_TOKEN")
            .and_then(|s| s.secret_key_ref)
            .expect("secretKeyRef");
        assert_eq!(token.name, "chat-peer-token");
        assert_eq!(token.key, "token");
    }

    #[test]
    fn the_sidecar_exposes_its_ports_and_is_probed_on_the_admin_port() {
        let sc = container("sidecar");
        let ports: Vec<(String, i32)> = sc
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name.unwrap_or_default(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                ("ingress".to_owned(), 8787),
                ("peer".to_owned(), 7878),
                ("admin".to_owned(), 9788)
            ]
        );
        let ready = sc
            .readiness_probe
            .and_then(|p| p.http_get)
            .expect("readiness");
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(ready.port, IntOrString::String("admin".into()));
        let live = sc
            .liveness_probe
            .and_then(|p| p.http_get)
            .expect("liveness");
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        assert_eq!(live.port, IntOrString::String("admin".into()));
    }

    #[test]
    fn a_stopping_shard_keeps_serving_for_the_shutdown_delay_and_the_pod_waits_for_its_drain() {
        let sc = container("sidecar");
        assert_eq!(
            env_value(&sc, "STEAD_SHUTDOWN_DELAY").as_deref(),
            Some("5s")
        );
        // The app gets its SIGTERM only when the sidecar's delay is over.
        let sleep = container("app")
            .lifecycle
            .and_then(|l| l.pre_stop)
            .and_then(|h| h.sleep)
            .expect("app preStop sleep");
        assert_eq!(sleep.seconds, 5);
        assert!(sc.lifecycle.is_none(), "the sidecar turns not ready itself");
        // chat_spec's turn timeout is 1500 ms: delay 5 + 2 (rounded up) + margin 10.
        assert_eq!(pod().termination_grace_period_seconds, Some(17));
        let mut spec = chat_spec();
        spec.turn_timeout = std::time::Duration::from_secs(120);
        let grace = statefulset(&spec, IMAGE, 3)
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.termination_grace_period_seconds);
        assert_eq!(
            grace,
            Some(135),
            "a long turn started just before the delay ended may still finish"
        );
    }

    #[test]
    fn each_shard_gets_a_retained_volume_mounted_at_data() {
        let s = sts().spec.expect("spec");
        let claims = s.volume_claim_templates.expect("claims");
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
        let pvc = claims[0].spec.clone().expect("pvc spec");
        assert_eq!(pvc.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
        assert_eq!(pvc.storage_class_name.as_deref(), Some("standard"));
        let requests = pvc.resources.and_then(|r| r.requests).expect("requests");
        assert_eq!(requests.get("storage"), Some(&Quantity("10Gi".into())));
        let policy = s
            .persistent_volume_claim_retention_policy
            .expect("retention");
        assert_eq!(policy.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(policy.when_scaled.as_deref(), Some("Retain"));
        let mounts = container("sidecar").volume_mounts.expect("mounts");
        assert!(
            mounts
                .iter()
                .any(|m| m.name == "data" && m.mount_path == "/data")
        );
        assert!(
            container("app")
                .volume_mounts
                .unwrap_or_default()
                .iter()
                .all(|m| m.name != "data"),
            "the app never touches the database files"
        );
    }

    #[test]
    fn labels_and_selectors_agree() {
        let spec = chat_spec();
        let s = sts().spec.expect("spec");
        let selector = s.selector.match_labels.expect("matchLabels");
        assert_eq!(selector, selector_labels(&spec));
        let pod_labels = s
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("pod labels");
        for (k, v) in &selector {
            assert_eq!(pod_labels.get(k), Some(v), "pod label {k}");
        }
        assert_eq!(
            pod_labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("stead-operator")
        );
        for svc in [
            crate::build::service::peers_service(&spec),
            crate::build::service::client_service(&spec),
        ] {
            let svc_selector = svc.spec.and_then(|s| s.selector).expect("selector");
            assert!(
                svc_selector
                    .iter()
                    .all(|(k, v)| pod_labels.get(k) == Some(v))
            );
        }
        let pdb = crate::build::pdb::pod_disruption_budget(&spec);
        let pdb_selector = pdb
            .spec
            .and_then(|s| s.selector)
            .and_then(|s| s.match_labels)
            .expect("pdb");
        assert!(
            pdb_selector
                .iter()
                .all(|(k, v)| pod_labels.get(k) == Some(v))
        );
    }

    #[test]
    fn the_statefulset_is_owned_by_its_namespace() {
        let meta = sts().metadata;
        assert_eq!(meta.namespace.as_deref(), Some("apps"));
        let owners = meta.owner_references.expect("owner refs");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "DurableNamespace");
        assert_eq!(owners[0].api_version, "stead.dev/v1alpha1");
        assert_eq!(owners[0].name, "chat");
        assert_eq!(owners[0].uid, "11111111-2222-3333-4444-555555555555");
        assert_eq!(owners[0].controller, Some(true));
    }

    #[test]
    fn pods_run_locked_down() {
        let p = pod();
        let psc = p.security_context.expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.fs_group, Some(RUN_AS));
        assert_eq!(
            psc.seccomp_profile.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault")
        );
        assert_eq!(p.service_account_name.as_deref(), Some("chat-sidecar"));
        for c in p.containers {
            let sc = c.security_context.expect("container security context");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
            assert_eq!(
                sc.capabilities.and_then(|c| c.drop),
                Some(vec!["ALL".to_owned()]),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn existing_volumes_keep_the_size_and_class_they_were_created_with() {
        let created = sts();
        let mut spec = chat_spec();
        spec.storage_size = "50Gi".into();
        spec.storage_class_name = Some("fast".into());
        let mut desired = statefulset(&spec, IMAGE, 3);
        assert!(keep_volume_claims(&mut desired, Some(&created)));
        assert_eq!(
            desired.spec.and_then(|s| s.volume_claim_templates),
            created.spec.and_then(|s| s.volume_claim_templates)
        );
        let mut fresh = sts();
        assert!(!keep_volume_claims(&mut fresh, None));
        assert!(!keep_volume_claims(&mut fresh, Some(&sts())));
    }
}
