//! `KubeMembership` against a real API server (the operator's envtest control plane: etcd and
//! kube-apiserver built by `scripts/envtest.sh`): the ring comes from the DurableNamespace
//! status, and a newer ring published there is offered to the sidecar.
//!
//! Without the binaries these tests fail and say to run `scripts/envtest.sh`; with
//! `STEAD_SKIP_ENVTEST=1` they print that they were skipped and pass.
#![cfg(feature = "kube")]

#[path = "../../operator/tests/support_envtest/mod.rs"]
#[allow(dead_code)]
mod support_envtest;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use stead_core::crd::DurableNamespace;
use stead_sidecar::membership::Membership;
use stead_sidecar::membership::kube::{KubeMembership, KubeMembershipError, KubeSettings};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Installs the generated CRD (as kubectl would send it) and creates the namespace `ns`.
async fn setup(client: &Client, ns: &str) {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/durablenamespaces.stead.dev.yaml"
    ))
    .expect("read the generated CRD");
    let req = http::Request::post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        .header("content-type", "application/yaml")
        .body(yaml.into_bytes())
        .expect("request");
    match client.request::<serde_json::Value>(req).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("install the CRD: {e}"),
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let obj = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace {ns}: {e}"),
    }
}

/// Creates the DurableNamespace `name` (retrying while the new CRD is not served yet).
async fn create(api: &Api<DurableNamespace>, name: &str) {
    let dn: DurableNamespace = serde_json::from_value(json!({
        "apiVersion": "stead.dev/v1alpha1", "kind": "DurableNamespace",
        "metadata": {"name": name},
        "spec": {"shards": 3, "slots": 64, "classes": ["Counter"], "app": {"image": "counter:dev"}}
    }))
    .expect("DurableNamespace");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match api.create(&PostParams::default(), &dn).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => return,
            Err(kube::Error::Api(s)) if s.code == 404 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("create DurableNamespace {name}: {e}"),
        }
    }
}

/// Publishes `status.ring` as the operator would (the status subresource).
async fn publish_ring(api: &Api<DurableNamespace>, name: &str, epoch: i64, shards: i32) {
    let body = json!({
        "apiVersion": "stead.dev/v1alpha1", "kind": "DurableNamespace",
        "status": {"ring": {"epoch": epoch, "shards": shards, "moving": 0}}
    });
    api.patch_status(
        name,
        &PatchParams::apply("envtest-operator").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("publish the ring");
}

fn settings(ns: &str, name: &str, wait: Duration) -> KubeSettings {
    KubeSettings {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        me: 1,
        peer_template: format!("{name}-{{i}}.{name}-peers.{ns}.svc:7878"),
        slots: 64,
        ring_wait: wait,
    }
}

#[tokio::test]
async fn a_ring_published_in_the_status_is_offered_to_the_sidecar() {
    let Some(plane) =
        support_envtest::control_plane("a_ring_published_in_the_status_is_offered_to_the_sidecar")
    else {
        return;
    };
    let client = plane.client().await;
    let ns = "kube-membership-watch";
    setup(&client, ns).await;
    let api: Api<DurableNamespace> = Api::namespaced(client.clone(), ns);
    create(&api, "counter").await;
    publish_ring(&api, "counter", 1, 3).await;

    let offered = Arc::new(Mutex::new(Vec::new()));
    let seen = offered.clone();
    let (membership, watch) = tokio::time::timeout(
        TIMEOUT,
        KubeMembership::start(
            client.clone(),
            settings(ns, "counter", TIMEOUT),
            move |ring| {
                seen.lock().unwrap().push((ring.epoch, ring.shards));
                true
            },
        ),
    )
    .await
    .expect("start within the bound")
    .expect("membership");
    assert_eq!((membership.ring().epoch, membership.ring().shards), (1, 3));
    assert_eq!(membership.me(), 1);
    assert_eq!(
        membership.peer_addr(4).as_deref(),
        Some("counter-4.counter-peers.kube-membership-watch.svc:7878")
    );

    publish_ring(&api, "counter", 2, 5).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while membership.ring().epoch != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ring of epoch 2 was not taken within {TIMEOUT:?}; offered: {:?}",
            offered.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(membership.ring().shards, 5);
    assert!(
        offered.lock().unwrap().contains(&(2, 5)),
        "the router was offered the new ring: {:?}",
        offered.lock().unwrap()
    );

    // An older epoch published later (a stale writer) is not taken.
    publish_ring(&api, "counter", 1, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((membership.ring().epoch, membership.ring().shards), (2, 5));
    watch.abort();
}

#[tokio::test]
async fn a_namespace_without_a_ring_fails_the_start_with_what_to_check() {
    let Some(plane) = support_envtest::control_plane(
        "a_namespace_without_a_ring_fails_the_start_with_what_to_check",
    ) else {
        return;
    };
    let client = plane.client().await;
    let ns = "kube-membership-no-ring";
    setup(&client, ns).await;
    let api: Api<DurableNamespace> = Api::namespaced(client.clone(), ns);
    create(&api, "counter").await;

    let result = tokio::time::timeout(
        TIMEOUT,
        KubeMembership::start(
            client,
            settings(ns, "counter", Duration::from_secs(2)),
            |_| true,
        ),
    )
    .await
    .expect("gives up within the bound");
    match result {
        Err(e @ KubeMembershipError::NoRing { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("no status.ring"), "{msg}");
            assert!(msg.contains("kubectl get dn counter"), "{msg}");
        }
        Err(e) => panic!("expected NoRing, got {e}"),
        Ok(_) => panic!("started without a ring"),
    }
}
