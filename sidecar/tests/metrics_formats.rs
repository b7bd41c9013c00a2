//! `/metrics` speaks both Prometheus text formats: OpenMetrics to a scraper that asks for it,
//! the classic 0.0.4 format to any other (`promtool check metrics`, old scrapers, curl), so that
//! none reads our counters as untyped families without help (issue 11).

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::Shard;

/// Content type and body of `/metrics` on the admin port, asked with `accept`.
async fn scrape(shard: &Shard, accept: Option<&str>) -> (String, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = http::Request::get(format!("http://127.0.0.1:{}/metrics", shard.admin));
    if let Some(a) = accept {
        req = req.header(http::header::ACCEPT, a);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()[http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (ct, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn metrics_answer_openmetrics_only_to_scrapers_that_ask_and_classic_text_to_the_rest() {
    let shard = Shard::start(&[]).await;
    let (status, _) = shard
        .send("POST", "/objects/Counter/name/m/increment", "")
        .await;
    assert_eq!(status, 200);
    let sample = r#"stead_requests_total{class="Counter",code="200"} 1"#;

    let (ct, classic) = scrape(&shard, None).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        classic.contains("# TYPE stead_requests_total counter\n"),
        "{classic}"
    );
    assert!(
        classic.contains("# HELP stead_requests_total "),
        "{classic}"
    );
    assert!(classic.contains(sample), "{classic}");
    assert!(
        classic.contains("# TYPE stead_objects_open gauge\n"),
        "{classic}"
    );
    assert!(!classic.contains("# EOF"), "{classic}");
    assert!(!classic.contains("# UNIT"), "{classic}");
    let (ct, _) = scrape(&shard, Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");

    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (ct, open) = scrape(&shard, Some(prometheus)).await;
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(open.contains("# TYPE stead_requests counter\n"), "{open}");
    assert!(open.contains(sample), "{open}");
    assert!(open.ends_with("# EOF\n"), "{open}");
}
