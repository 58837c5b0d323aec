//! `KeydClient` against an in-process keyd: request ids, answers out of
//! order, pipelining, a keyd that goes away and comes back, and one that
//! never answers.
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{FakeKeyd, PROMPTLY};
use sealtls_custody_proto::{ErrorCode, Request, Response};
use sealtls_keyless::{KeydClient, KeydEndpoint, KeydError};

fn client(dir: &tempfile::TempDir, pool: usize, timeout: Duration) -> Arc<KeydClient> {
    KeydClient::new(KeydEndpoint::Unix(dir.path().join("keyd.sock")), pool, timeout)
}

fn ping(payload: &str) -> Request {
    Request::Ping(payload.as_bytes().to_vec())
}

/// Starts `request` on a task of its own.
fn spawn_call(client: &Arc<KeydClient>, request: Request) -> tokio::task::JoinHandle<Result<Response, KeydError>> {
    let client = client.clone();
    tokio::spawn(async move { client.call(&request).await })
}

async fn finished<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(PROMPTLY, task).await.expect("the call did not finish promptly").unwrap()
}

#[tokio::test]
async fn answers_out_of_order_reach_the_request_with_their_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut keyd = FakeKeyd::start(&dir.path().join("keyd.sock"));
    let client = client(&dir, 1, Duration::from_secs(30));

    let calls: Vec<_> = ["a", "b", "c"].into_iter().map(|p| spawn_call(&client, ping(p))).collect();
    let mut received = Vec::new();
    for _ in 0..3 {
        received.push(keyd.next().await);
    }
    let ids: HashSet<u64> = received.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 3, "request ids are unique");
    // Answered last to first, each with what its request carried.
    for r in received.iter().rev() {
        let Request::Ping(payload) = &r.request else { panic!("{:?}", r.request) };
        r.answer(Response::Pong(payload.clone()));
    }
    for (call, payload) in calls.into_iter().zip(["a", "b", "c"]) {
        assert_eq!(finished(call).await.unwrap(), Response::Pong(payload.as_bytes().to_vec()));
    }

    // An error answer becomes Refused, with keyd's code and message.
    let call = spawn_call(&client, ping("d"));
    let r = keyd.next().await;
    r.answer(Response::error(ErrorCode::KeyNotFound, "no key is installed for domain x"));
    match finished(call).await {
        Err(KeydError::Refused { code: ErrorCode::KeyNotFound, message }) => assert_eq!(message, "no key is installed for domain x"),
        other => panic!("{other:?}"),
    }
    // Later requests get fresh ids.
    assert!(!ids.contains(&r.id));
}

#[tokio::test]
async fn many_requests_travel_pipelined_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut keyd = FakeKeyd::start(&dir.path().join("keyd.sock"));
    let client = client(&dir, 1, Duration::from_secs(30));
    // The connection is up before the burst.
    let first = spawn_call(&client, ping("first"));
    keyd.next().await.answer(Response::Pong(b"first".to_vec()));
    finished(first).await.unwrap();

    const N: usize = 32;
    let calls: Vec<_> = (0..N).map(|i| spawn_call(&client, ping(&i.to_string()))).collect();
    // Every request arrives while none is answered: nothing waits for an answer to send.
    let mut received = Vec::new();
    for _ in 0..N {
        received.push(keyd.next().await);
    }
    assert!(received.iter().all(|r| r.conn == 0), "one connection carries them all");
    assert_eq!(received.iter().map(|r| r.id).collect::<HashSet<_>>().len(), N);
    for r in &received {
        let Request::Ping(payload) = &r.request else { panic!("{:?}", r.request) };
        r.answer(Response::Pong(payload.clone()));
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(finished(call).await.unwrap(), Response::Pong(i.to_string().into_bytes()));
    }
}

#[tokio::test]
async fn a_request_outstanding_when_keyd_closes_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut keyd = FakeKeyd::start(&dir.path().join("keyd.sock"));
    // A long limit: the failure must come from the close, not from the clock.
    let client = client(&dir, 1, Duration::from_secs(3600));
    let call = spawn_call(&client, ping("x"));
    keyd.next().await.close();
    match finished(call).await {
        Err(e @ KeydError::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains("keyd") && text.contains("keyd.sock") && text.contains("closed"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_client_reconnects_when_keyd_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyd.sock");
    let mut keyd = FakeKeyd::start(&path);
    let client = client(&dir, 1, Duration::from_secs(3600));
    let call = spawn_call(&client, ping("before"));
    keyd.next().await.answer(Response::Pong(b"before".to_vec()));
    finished(call).await.unwrap();

    // keyd exits with a request outstanding.
    let call = spawn_call(&client, ping("during"));
    let _unanswered = keyd.next().await;
    keyd.stop().await;
    assert!(matches!(finished(call).await, Err(KeydError::Unreachable { .. })));
    // While it is gone, calls fail at once, naming where keyd was expected.
    match finished(spawn_call(&client, ping("gone"))).await {
        Err(e @ KeydError::Unreachable { .. }) => assert!(e.to_string().contains("keyd.sock"), "{e}"),
        other => panic!("{other:?}"),
    }

    // keyd is back: the next call opens a new connection by itself.
    let mut keyd = FakeKeyd::start(&path);
    let call = spawn_call(&client, ping("after"));
    let r = keyd.next().await;
    assert_eq!(r.conn, 0, "a connection to the new keyd");
    r.answer(Response::Pong(b"after".to_vec()));
    assert_eq!(finished(call).await.unwrap(), Response::Pong(b"after".to_vec()));
}

#[tokio::test]
async fn a_keyd_that_never_answers_runs_into_the_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut keyd = FakeKeyd::start(&dir.path().join("keyd.sock"));
    let limit = Duration::from_secs(30);
    let client = client(&dir, 1, limit);
    let call = spawn_call(&client, ping("up"));
    keyd.next().await.answer(Response::Pong(b"up".to_vec()));
    finished(call).await.unwrap();

    // The clock jumps ahead as soon as every task waits, so the 30 s pass at once.
    tokio::time::pause();
    match client.call(&ping("ignored")).await {
        Err(e @ KeydError::Timeout(..)) => {
            assert!(matches!(&e, KeydError::Timeout(_, d) if *d == limit));
            assert!(e.to_string().contains("keyd") && e.to_string().contains("did not answer"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    tokio::time::resume();

    // A late answer to the abandoned request is dropped; the connection still serves.
    let late = keyd.next().await;
    late.answer(Response::Pong(b"too late".to_vec()));
    let call = spawn_call(&client, ping("next"));
    let r = keyd.next().await;
    assert_eq!((r.conn, late.conn), (0, 0));
    r.answer(Response::Pong(b"next".to_vec()));
    assert_eq!(finished(call).await.unwrap(), Response::Pong(b"next".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_calls_from_a_worker_are_answered_and_fail_when_keyd_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut keyd = FakeKeyd::start(&dir.path().join("keyd.sock"));
    let client = client(&dir, 1, Duration::from_secs(3600));
    // rustls's signer calls from synchronous code on a worker thread.
    let blocking = |request: Request| {
        let client = client.clone();
        tokio::spawn(async move { client.call_blocking(&request) })
    };

    let call = blocking(ping("sync"));
    keyd.next().await.answer(Response::Pong(b"sync".to_vec()));
    assert_eq!(finished(call).await.unwrap(), Response::Pong(b"sync".to_vec()));

    let call = blocking(ping("cut"));
    keyd.next().await.close();
    match finished(call).await {
        Err(e @ KeydError::Unreachable { .. }) => assert!(e.to_string().contains("keyd closed the connection"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn blocking_calls_need_a_multi_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir, 1, Duration::from_secs(1));
    assert!(matches!(client.call_blocking(&ping("x")), Err(KeydError::Runtime)));
}
