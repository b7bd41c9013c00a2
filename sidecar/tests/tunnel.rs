//! Two shards with static peers: WebSockets and object calls reach the owning shard through the
//! other one.

mod support;

use futures_util::{SinkExt, StreamExt};
use stead_core::{ClassName, ObjectId, ObjectName, Ring};
use support::proxy_app::ProxyApp;
use support::{Shard, free_port};
use tokio_tungstenite::tungstenite::Message;

/// A Counter name whose slot shard `owner` owns in a two-shard ring.
fn name_owned_by(owner: u32) -> String {
    let ring = Ring::new(1, 4096, 2);
    let class = ClassName::new("Counter").unwrap();
    (0..)
        .map(|i| format!("room{i}"))
        .find(|n| {
            let id = ObjectId::named(&class, &ObjectName::new(n).unwrap());
            ring.owner(id.slot(4096)) == owner
        })
        .unwrap()
}

async fn two_shards() -> (Vec<Shard>, Vec<ProxyApp>) {
    let peers = [free_port(), free_port()];
    let peer_list = format!("127.0.0.1:{},127.0.0.1:{}", peers[0], peers[1]);
    let mut shards = vec![];
    let mut apps = vec![];
    for (i, peer) in peers.iter().enumerate() {
        let api = free_port();
        let app = ProxyApp::start(api).await;
        let ordinal = i.to_string();
        let peer_addr = format!("127.0.0.1:{peer}");
        let args = [
            "--shard-ordinal",
            &ordinal,
            "--peers",
            &peer_list,
            "--peer-addr",
            &peer_addr,
            "--peer-token",
            "test-token",
        ];
        shards.push(Shard::start_for(app.port, api, &args).await);
        apps.push(app);
    }
    for p in peers {
        support::wait_port(p).await;
    }
    (shards, apps)
}

#[tokio::test]
async fn a_websocket_opened_on_a_non_owner_is_tunnelled_to_the_owner() {
    let (shards, apps) = two_shards().await;
    let room = name_owned_by(1);
    let url = format!(
        "ws://127.0.0.1:{}/objects/Counter/name/{room}/ws",
        shards[0].ingress
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    ws.send(Message::Text("hi".into())).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "1:hi"),
        other => panic!("{other:?}"),
    }
    // The owner's app handled the socket; the entry shard's app saw nothing of it.
    assert_eq!(apps[1].events_of("websocket-connect").len(), 1);
    assert!(apps[0].events_of("websocket-connect").is_empty());
    assert!(shards[0].database_files().is_empty());
    assert_eq!(shards[1].database_files().len(), 1);
}

#[tokio::test]
async fn requests_through_either_entry_reach_one_object() {
    let (shards, apps) = two_shards().await;
    let name = name_owned_by(0);
    for s in &shards {
        let (status, _) = s
            .send("POST", &format!("/objects/Counter/name/{name}/hello"), "")
            .await;
        assert_eq!(status, 200);
    }
    let seen: Vec<usize> = apps
        .iter()
        .map(|a| {
            a.events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.get(":path").map(String::as_str) == Some("/hello"))
                .count()
        })
        .collect();
    assert_eq!(seen, vec![2, 0], "both requests ran on the owner, shard 0");
    assert!(
        shards[0]
            .metric("stead_forwards_total{reason=\"not_owner\"}")
            .await
            == 0.0
    );
    assert!(
        shards[1]
            .metric("stead_forwards_total{reason=\"not_owner\"}")
            .await
            == 1.0
    );
}
