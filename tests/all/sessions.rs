//! Sessions through the real binary and a real Redis: one visitor across replicas and
//! restarts, sliding and absolute expiry, and the cookie's security properties.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::task::JoinSet;

use crate::harness::{HttpClient, Reply, Server, app_args, client, guests, send};
use crate::redis_server::RedisServer;

const COOKIE: &str = "tabula_session_cart";

/// A browser, as far as cookies go: keeps what `Set-Cookie` says, sends it back.
struct Visitor {
    client: HttpClient,
    cookies: BTreeMap<String, String>,
}

impl Visitor {
    fn new() -> Visitor {
        Visitor {
            client: client(),
            cookies: BTreeMap::new(),
        }
    }

    async fn request(&mut self, method: &str, url: &str, body: &str) -> Reply {
        let mut req = hyper::Request::builder().method(method).uri(url);
        if !self.cookies.is_empty() {
            let header: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header("cookie", header.join("; "));
        }
        if method == "POST" {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        let reply = send(
            &self.client,
            req.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
        )
        .await;
        for set in reply.headers.get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
        reply
    }

    async fn page(&mut self, server: &Server) -> String {
        let reply = self.request("GET", &server.url("/cart"), "").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body
    }

    async fn post(&mut self, server: &Server, action: &str, form: &str) -> Reply {
        self.request("POST", &server.url(&format!("/cart/{action}")), form)
            .await
    }

    fn id(&self) -> Option<String> {
        self.cookies.get(COOKIE).cloned()
    }
}

fn cart_server(store: &str, extra: &[&str]) -> Server {
    Server::start(
        ["serve", "--store", store]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .chain(app_args(&["cart"])),
    )
}

fn logged_in_as(page: &str, name: &str) -> bool {
    page.contains(&format!("<h1>Hello, {name}</h1>"))
}

#[tokio::test]
async fn one_visitor_across_two_replicas_sees_one_session() {
    let redis = RedisServer::start();
    let (one, two) = (
        cart_server(&redis.url(), &[]),
        cart_server(&redis.url(), &[]),
    );
    let mut v = Visitor::new();
    assert!(v.page(&one).await.contains("Log in"));
    assert_eq!(
        v.id(),
        None,
        "reading creates no session and sends no cookie"
    );
    assert_eq!(v.post(&two, "login", "name=Ada").await.status, 303);
    assert!(logged_in_as(&v.page(&one).await, "Ada"));
    v.post(&one, "add", "item=tea").await;
    v.post(&two, "add", "item=scones").await;
    v.post(&one, "add", "item=jam").await;
    let page = v.page(&two).await;
    assert!(
        page.contains("<li>tea</li>\n<li>scones</li>\n<li>jam</li>"),
        "{page}"
    );
    assert_eq!(v.post(&two, "logout", "").await.status, 303);
    assert_eq!(v.id(), None, "logout clears the cookie");
    assert!(v.page(&one).await.contains("Log in"));
}

#[tokio::test]
async fn sessions_survive_restarting_every_process() {
    let redis = RedisServer::start();
    let mut v = Visitor::new();
    {
        let (one, two) = (
            cart_server(&redis.url(), &[]),
            cart_server(&redis.url(), &[]),
        );
        v.post(&one, "login", "name=Grace").await;
        v.post(&two, "add", "item=compiler").await;
    }
    let fresh = cart_server(&redis.url(), &[]);
    let page = v.page(&fresh).await;
    assert!(
        logged_in_as(&page, "Grace") && page.contains("<li>compiler</li>"),
        "{page}"
    );
}

#[tokio::test]
async fn idle_sessions_expire_and_used_ones_slide() {
    let redis = RedisServer::start();
    let server = cart_server(&redis.url(), &["--session-idle-timeout", "1"]);
    let mut v = Visitor::new();
    v.post(&server, "login", "name=Ada").await;
    // 6 x 400 ms = 2.4 s of activity, more than twice the idle timeout: it slides.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            logged_in_as(&v.page(&server).await, "Ada"),
            "an active session stays"
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        v.page(&server).await.contains("Log in"),
        "an idle session expires"
    );
}

#[tokio::test]
async fn the_absolute_lifetime_ends_even_a_busy_session() {
    let redis = RedisServer::start();
    let server = cart_server(
        &redis.url(),
        &["--session-idle-timeout", "60", "--session-lifetime", "2"],
    );
    let mut v = Visitor::new();
    v.post(&server, "login", "name=Ada").await;
    let mut ended = false;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if v.page(&server).await.contains("Log in") {
            ended = true;
            break;
        }
    }
    assert!(
        ended,
        "a session used every 300 ms still ended within 3.6 s of a 2 s lifetime"
    );
}

#[tokio::test]
async fn the_cookie_has_the_right_attributes() {
    let server = cart_server("memory", &[]);
    let mut v = Visitor::new();
    let reply = v.post(&server, "login", "name=Ada").await;
    let cookie = reply.headers["set-cookie"].to_str().unwrap().to_string();
    let id = v.id().expect("a session cookie");
    assert_eq!(
        cookie,
        format!("{COOKIE}={id}; Path=/cart; HttpOnly; SameSite=Lax")
    );
    assert_eq!(reply.headers["cache-control"], "no-store");

    let secure = cart_server("memory", &["--session-secure"]);
    let reply = Visitor::new().post(&secure, "login", "name=Ada").await;
    assert!(
        reply.headers["set-cookie"]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );
}

#[tokio::test]
async fn ids_are_unique_and_of_full_length() {
    let server = cart_server("memory", &[]);
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let mut v = Visitor::new();
        v.post(&server, "login", "name=x").await;
        let id = v.id().unwrap();
        assert_eq!(id.len(), 64, "256 bits, hex-encoded: {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 50);
}

#[tokio::test]
async fn regenerate_at_login_invalidates_the_old_id() {
    let server = cart_server("memory", &[]);
    let mut v = Visitor::new();
    v.post(&server, "login", "name=Ada").await;
    let before = v.id().unwrap();
    v.post(&server, "login", "name=Ada").await;
    let after = v.id().unwrap();
    assert_ne!(before, after, "login moves the session to a new id");
    assert!(
        logged_in_as(&v.page(&server).await, "Ada"),
        "the data moved along"
    );

    let mut attacker = Visitor::new();
    attacker.cookies.insert(COOKIE.into(), before);
    assert!(
        attacker.page(&server).await.contains("Log in"),
        "the old id is worthless"
    );
}

#[tokio::test]
async fn a_cookie_from_one_app_means_nothing_to_another() {
    let cart = guests()["cart"].wasm.display().to_string();
    let server = Server::start(
        ["serve", "--store", "memory"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("/shop={cart}"), format!("/cart={cart}")]),
    );
    let mut v = Visitor::new();
    v.post(&server, "login", "name=Ada").await;
    let id = v.id().unwrap();
    let mut other = Visitor::new();
    other.cookies.insert("tabula_session_shop".into(), id);
    let reply = other.request("GET", &server.url("/shop"), "").await;
    assert!(reply.body.contains("Log in"), "{}", reply.body);
}

#[tokio::test]
async fn tampered_or_forged_cookies_get_a_fresh_empty_session() {
    let server = cart_server("memory", &[]);
    let mut v = Visitor::new();
    v.post(&server, "login", "name=Ada").await;
    let id = v.id().unwrap();
    let flipped = format!("{}{}", &id[..63], if id.ends_with('0') { '1' } else { '0' });
    for forged in [
        flipped,
        "0".repeat(64),
        "not-an-id".into(),
        format!("{id}; {COOKIE}=x"),
    ] {
        let mut intruder = Visitor::new();
        intruder.cookies.insert(COOKIE.into(), forged.clone());
        let reply = intruder.request("GET", &server.url("/cart"), "").await;
        assert_eq!(reply.status, 200, "{forged}");
        let expect_login = !forged.starts_with(&id);
        assert_eq!(
            reply.body.contains("Log in"),
            expect_login,
            "{forged}: {}",
            reply.body
        );
    }
    // Writing with a forged id starts a new session under a new id, never the forged one.
    let mut intruder = Visitor::new();
    intruder.cookies.insert(COOKIE.into(), "0".repeat(64));
    intruder.post(&server, "login", "name=Eve").await;
    let given = intruder.id().unwrap();
    assert_ne!(given, "0".repeat(64));
    assert!(
        logged_in_as(&v.page(&server).await, "Ada"),
        "Ada's session is untouched"
    );
}

#[tokio::test]
async fn a_session_over_its_size_limit_gets_a_clear_error() {
    let server = cart_server("memory", &["--session-max-bytes", "300"]);
    let mut v = Visitor::new();
    v.post(&server, "login", "name=Ada").await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        statuses.push(
            v.post(&server, "add", &format!("item=thing-number-{i:02}"))
                .await
                .status,
        );
    }
    assert_eq!(statuses[0], 303);
    let full = statuses
        .iter()
        .position(|s| *s == 413)
        .expect("the cart fills up");
    assert!(statuses[full..].iter().all(|s| *s == 413), "{statuses:?}");
    let page = v.page(&server).await;
    assert!(logged_in_as(&page, "Ada"), "the session is intact: {page}");
    assert_eq!(page.matches("<li>").count(), full, "{page}");
}

#[tokio::test]
async fn concurrent_writes_of_different_values_all_land() {
    let redis = RedisServer::start();
    let server = Server::serve_with(&redis.url(), &["kvtool"]);
    let mut v = Visitor::new();
    let reply = v
        .request("PUT", &server.url("/kvtool?session=first"), "0")
        .await;
    assert_eq!(reply.status, 204);
    let cookie = format!(
        "tabula_session_kvtool={}",
        v.cookies["tabula_session_kvtool"]
    );
    let mut writes = JoinSet::new();
    for i in 0..32 {
        let (c, url, cookie) = (
            v.client.clone(),
            server.url(&format!("/kvtool?session=v{i}")),
            cookie.clone(),
        );
        writes.spawn(async move {
            let req = hyper::Request::put(url)
                .header("cookie", cookie)
                .body(Full::new(Bytes::from(i.to_string())))
                .unwrap();
            send(&c, req).await.status
        });
    }
    while let Some(status) = writes.join_next().await {
        assert_eq!(status.unwrap(), 204);
    }
    for i in 0..32 {
        let reply = v
            .request("GET", &server.url(&format!("/kvtool?session=v{i}")), "")
            .await;
        assert_eq!(
            (reply.status, reply.body),
            (200, i.to_string()),
            "value v{i}"
        );
    }
}
