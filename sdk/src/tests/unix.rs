//! Serving over a Unix domain socket (the sidecar's `--app unix:/path`), with a real socket.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::fake_api::FakeApi;
use crate::app::bind_unix;
use crate::{
    App, DurableObject, ObjectInfo, Request, Response, Result, Turn, async_trait, response,
};

struct Hello;

#[async_trait]
impl DurableObject for Hello {
    fn new(_: &ObjectInfo) -> Self {
        Hello
    }

    async fn fetch(&mut self, turn: &Turn, _req: Request) -> Result<Response> {
        Ok(response::text(format!("hello from {}", turn.class())))
    }
}

#[tokio::test]
async fn an_app_serves_events_on_a_unix_socket_and_replaces_a_stale_one() {
    let dir = std::env::temp_dir().join(format!("stead-sdk-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.sock");
    // A socket file left by an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listener = bind_unix(&path).await.unwrap();

    let (_fake, url) = FakeApi::start().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        App::new()
            .class::<Hello>("Hello")
            .api_url(url)
            .serve_unix_with_shutdown(listener, async {
                let _ = stopped.await;
            }),
    );

    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/")
        .header("host", "app")
        .header("stead-event", "request")
        .header("stead-class", "Hello")
        .header("stead-object-id", "e".repeat(64))
        .header("stead-turn", "tok")
        .header("stead-protocol", "2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["stead-protocol"], "2");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello from Hello");

    drop(sender);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    // Another kind of file is never removed.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "not a socket").unwrap();
    assert!(bind_unix(&path).await.is_err());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    std::fs::remove_dir_all(&dir).unwrap();
}
