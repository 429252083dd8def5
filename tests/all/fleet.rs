//! A fleet as operators run one: three replicas behind haproxy on a three-master Redis Cluster,
//! the counter (kv) and cart (sessions) examples deployed through the admin API and kept under
//! load while one replica is killed (SIGKILL) and another started, then every replica is
//! restarted one by one (SIGTERM: a rolling update) with a deploy of a new version in the
//! middle. What a user of the apps must see: no increment lost or counted twice, no item lost
//! from a cart, and no failed request during the rolling update. Then `tabula check`, as an
//! operator runs it, finds the fleet clean through haproxy and at each replica.
//!
//! haproxy takes a replica out of rotation through its health check on the operator port's
//! `/readyz`, which answers 503 from the moment the replica gets SIGTERM. Its retries are
//! limited to what cannot count twice; [`HAPROXY_CONFIG`] says why.
//! `bench/fleet-containers.sh` runs the same fleet with the replicas in containers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::task::block_in_place;

use crate::deploy::{replica, wasm};
use crate::harness::{HttpClient, Server, admin_cli, client};
use crate::redis_server::RedisCluster;

/// The load balancer's configuration; `{…}` are filled in by [`Haproxy::start`].
///
/// Retries: haproxy retries a request that failed to connect (`conn-failure`: nothing was
/// sent, so nothing ran) on another server (`option redispatch`), which is what lets a
/// replica's port close without a client noticing. Every other retry re-sends a request the
/// replica may already have run: an increment whose replica was killed after Redis counted
/// it and before it answered would count twice. So `empty-response` is allowed for GET and
/// HEAD only (`disable-l7-retry` for the rest), and nothing retries on a status code.
///
/// Health: `/readyz` on the operator port every 100 ms; one failure takes a server out, two
/// successes bring it back.
pub const HAPROXY_CONFIG: &str = "\
global
    stats socket {socket} mode 600 level admin
    maxconn 2000
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response

frontend web
    bind 127.0.0.1:{port}
    default_backend fleet

backend fleet
    balance roundrobin
    http-request disable-l7-retry unless METH_GET
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 100ms fall 1 rise 2
{servers}";

/// A place for a replica behind the load balancer: fixed ports, so a replica started in its
/// place is the same server to haproxy.
struct Slot {
    name: String,
    port: u16,
    operator: u16,
}

impl Slot {
    fn new(name: &str) -> Slot {
        Slot {
            name: name.to_string(),
            port: free_port(),
            operator: free_port(),
        }
    }

    /// A replica with the admin API, on this slot's ports. After SIGTERM it stays unready for
    /// 1 s before draining: ten of haproxy's health checks.
    fn start(&self, store: &str) -> Server {
        let listen = format!("127.0.0.1:{}", self.port);
        let operator = format!("127.0.0.1:{}", self.operator);
        replica(
            store,
            true,
            &[
                "--listen",
                &listen,
                "--operator-listen",
                &operator,
                "--shutdown-delay",
                "1",
            ],
        )
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running haproxy, killed when dropped.
struct Haproxy {
    child: Child,
    dir: PathBuf,
    base: String,
    socket: PathBuf,
}

impl Haproxy {
    fn start(slots: &[Slot]) -> Haproxy {
        let found = Command::new("haproxy")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`haproxy` is not installed, and the fleet test puts the replicas behind it: install \
             it with `apt-get install haproxy` (Debian/Ubuntu; .ci/run does) or `brew install \
             haproxy`, then rerun"
        );
        let dir = std::env::temp_dir().join(format!("tabula-haproxy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("admin.sock");
        let port = free_port();
        let servers: String = slots
            .iter()
            .map(|s| {
                format!(
                    "    server {} 127.0.0.1:{} check port {}\n",
                    s.name, s.port, s.operator
                )
            })
            .collect();
        let config = HAPROXY_CONFIG
            .replace("{socket}", &socket.display().to_string())
            .replace("{port}", &port.to_string())
            .replace("{servers}", &servers);
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting haproxy");
        let haproxy = Haproxy {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while haproxy.stats().is_none() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not start; its log:\n{}",
                haproxy.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        haproxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The status haproxy gives each server of the backend (`UP`, `DOWN`, …), from the
    /// runtime API's `show stat`.
    fn stats(&self) -> Option<HashMap<String, String>> {
        let mut stream = UnixStream::connect(&self.socket).ok()?;
        stream.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        stream.read_to_string(&mut csv).ok()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (proxy, server, status) = (column("pxname")?, column("svname")?, column("status")?);
        Some(
            lines
                .map(|line| line.split(',').collect::<Vec<_>>())
                .filter(|fields| fields.len() > status && fields[proxy] == "fleet")
                .map(|fields| (fields[server].to_string(), fields[status].to_string()))
                .collect(),
        )
    }

    /// Waits until haproxy says `server` is `status` (health checks run every 100 ms).
    async fn wait_for(&self, server: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.stats().and_then(|s| s.get(server).cloned());
            if now.as_deref().is_some_and(|s| s.starts_with(status)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not see {server} {status} within 20 s (it says {now:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- haproxy log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the load is going through, so that each failure is charged to its phase.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    Steady = 0,
    Kill = 1,
    Rolling = 2,
}

impl Phase {
    fn from(n: u8) -> Phase {
        [Phase::Steady, Phase::Kill, Phase::Rolling][n as usize]
    }
}

/// What every client shares: the phase now, and when to stop.
#[derive(Clone)]
struct Load {
    base: String,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    /// Failed requests, with their phase, what they were and when they ended.
    failures: Arc<Mutex<Vec<(Phase, String, Instant)>>>,
}

impl Load {
    fn phase(&self) -> Phase {
        Phase::from(self.phase.load(Ordering::SeqCst))
    }

    fn enter(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Records a failed request, charged to the later of the phase it started in and the
    /// phase now: a request in flight on a replica when it is killed belongs to the kill.
    fn fail(&self, started: Phase, what: String) {
        let phase = started.max(self.phase());
        self.failures
            .lock()
            .unwrap()
            .push((phase, what, Instant::now()));
    }

    fn failed_in(&self, phase: Phase) -> Vec<(String, Instant)> {
        self.failures
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, ..)| *p == phase)
            .map(|(_, what, at)| (what.clone(), *at))
            .collect()
    }
}

/// A status, the `Set-Cookie` values and the body; a transport failure (or no answer within
/// 10 s) is an error that names itself, for the failure list.
async fn try_send(
    client: &HttpClient,
    method: &str,
    url: &str,
    cookie: Option<&str>,
    body: &str,
) -> Result<(u16, Vec<String>, String), String> {
    let mut req = hyper::Request::builder().method(method).uri(url);
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    if method == "POST" {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let exchange = async {
        let response = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let cookies = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok((
            status,
            cookies,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()))
}

/// Increments the counter until told to stop; returns the counts its 200s answered.
async fn count(load: Load) -> Vec<u64> {
    let client = client();
    let url = format!("{}/counter", load.base);
    let mut seen = Vec::new();
    while !load.stop.load(Ordering::SeqCst) {
        let phase = load.phase();
        match try_send(&client, "POST", &url, None, "").await {
            Ok((200, _, body)) => seen.push(body.trim().parse().expect("a count")),
            Ok((status, _, body)) => load.fail(phase, format!("POST /counter: {status} {body}")),
            Err(e) => load.fail(phase, format!("POST /counter: {e}")),
        }
        tokio::time::sleep(PAUSE).await;
    }
    seen
}

/// A shopper's session cookie (`name=value`), from a login through the load balancer.
async fn log_in(base: &str, name: &str) -> String {
    let (status, cookies, body) = try_send(
        &client(),
        "POST",
        &format!("{base}/cart/login"),
        None,
        &format!("name={name}"),
    )
    .await
    .expect("logging in");
    assert_eq!(status, 303, "logging in: {body}");
    let set = cookies.first().expect("a session cookie");
    set.split(';').next().unwrap().to_string()
}

/// What a shopper put in the cart: items the cart confirmed (303), and items whose request
/// failed, which may or may not have been added.
#[derive(Default)]
struct Basket {
    confirmed: Vec<String>,
    unsure: Vec<String>,
}

/// Adds items to one session, one at a time (the cart reads, changes and writes its session,
/// so a shopper with two tabs could lose an item; one shopper at a time cannot).
async fn shop(load: Load, shopper: usize, cookie: String) -> Basket {
    let client = client();
    let url = format!("{}/cart/add", load.base);
    let mut basket = Basket::default();
    let mut n = 0;
    while !load.stop.load(Ordering::SeqCst) {
        let phase = load.phase();
        let item = format!("item-{shopper}-{n}");
        n += 1;
        let answer = try_send(
            &client,
            "POST",
            &url,
            Some(&cookie),
            &format!("item={item}"),
        )
        .await;
        match answer {
            Ok((303, ..)) => basket.confirmed.push(item),
            Ok((status, _, body)) => {
                load.fail(phase, format!("POST /cart/add: {status} {body}"));
                basket.unsure.push(item);
            }
            Err(e) => {
                load.fail(phase, format!("POST /cart/add: {e}"));
                basket.unsure.push(item);
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
    basket
}

/// The items a cart page lists.
fn listed(page: &str) -> Vec<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("<li>")?.strip_suffix("</li>"))
        .map(str::to_string)
        .collect()
}

/// Between a client's requests: load enough to have requests in flight at every kill and
/// restart, without taking every core of a shared test machine.
const PAUSE: Duration = Duration::from_millis(1);

const COUNTERS: usize = 3;
const SHOPPERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_haproxy_loses_nothing_when_replicas_are_killed_rolled_and_deployed_to() {
    let started = Instant::now();
    let cluster = RedisCluster::start();
    let store = cluster.url();
    // r3 stays empty until a replica is started in it, after r1 is killed.
    let slots: Vec<Slot> = ["r0", "r1", "r2", "r3"]
        .iter()
        .map(|n| Slot::new(n))
        .collect();
    let mut replicas: BTreeMap<usize, Server> =
        (0..3).map(|i| (i, slots[i].start(&store))).collect();
    let haproxy = Haproxy::start(&slots);
    for (app, route) in [("counter", "/counter"), ("cart", "/cart")] {
        let run = admin_cli(
            &replicas[&0],
            &["deploy", &wasm(app), "--name", app, "--route", route],
        );
        assert!(run.ok, "deploying {app}:\n{}\n{}", run.stdout, run.stderr);
    }
    for slot in &slots[..3] {
        haproxy.wait_for(&slot.name, "UP").await;
    }

    let load = Load {
        base: haproxy.base.clone(),
        phase: Arc::new(AtomicU8::new(Phase::Steady as u8)),
        stop: Arc::new(AtomicBool::new(false)),
        failures: Arc::default(),
    };
    let counters: Vec<_> = (0..COUNTERS)
        .map(|_| tokio::spawn(count(load.clone())))
        .collect();
    let mut shoppers = Vec::new();
    for shopper in 0..SHOPPERS {
        let cookie = log_in(&haproxy.base, &format!("shopper{shopper}")).await;
        let basket = tokio::spawn(shop(load.clone(), shopper, cookie.clone()));
        shoppers.push((cookie, basket));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A replica dies mid-request, and another one joins.
    load.enter(Phase::Kill);
    let killed_at = Instant::now();
    drop(replicas.remove(&1)); // Dropping a `Server` kills it with SIGKILL.
    let joined = block_in_place(|| slots[3].start(&store));
    replicas.insert(3, joined);
    haproxy.wait_for("r1", "DOWN").await;
    haproxy.wait_for("r3", "UP").await;
    let rejoined = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The rolling update: each replica in turn gets SIGTERM (haproxy sees /readyz turn 503),
    // drains and exits, and a new one takes its place; a new version of the counter is
    // deployed halfway through.
    load.enter(Phase::Rolling);
    for (step, slot) in [0, 2, 3].into_iter().enumerate() {
        let mut old = replicas.remove(&slot).unwrap();
        let status = block_in_place(|| old.terminate());
        assert!(
            status.success(),
            "{} exited with {status}",
            slots[slot].name
        );
        let new = block_in_place(|| slots[slot].start(&store));
        replicas.insert(slot, new);
        haproxy.wait_for(&slots[slot].name, "UP").await;
        if step == 0 {
            let admin = replicas.values().next().unwrap();
            let run = block_in_place(|| {
                admin_cli(
                    admin,
                    &[
                        "deploy",
                        &wasm("counter"),
                        "--name",
                        "counter",
                        "--route",
                        "/counter",
                        "--var",
                        "release=2",
                        "-m",
                        "mid-roll",
                    ],
                )
            });
            assert!(
                run.ok,
                "the mid-roll deploy:\n{}\n{}",
                run.stdout, run.stderr
            );
            assert!(run.stdout.contains("v2 is active"), "{}", run.stdout);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    load.stop.store(true, Ordering::SeqCst);

    let mut answered = Vec::new();
    for counter in counters {
        answered.extend(counter.await.unwrap());
    }
    let rolling = load.failed_in(Phase::Rolling);
    assert!(
        rolling.is_empty(),
        "the rolling update failed {} requests: {:#?}",
        rolling.len(),
        rolling.iter().map(|(what, _)| what).collect::<Vec<_>>()
    );
    let steady = load.failed_in(Phase::Steady);
    assert!(
        steady.is_empty(),
        "failures with every replica up: {steady:#?}"
    );
    let killed = load.failed_in(Phase::Kill);

    // Counts: every 200 answered a distinct count, and every count the counter reached was
    // answered by a 200, except for increments whose request failed when the replica was
    // killed after Redis counted and before it answered.
    let client = client();
    let (status, _, body) = try_send(&client, "GET", &haproxy.url("/counter/value"), None, "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let total: u64 = body.trim().parse().unwrap();
    let distinct: BTreeSet<u64> = answered.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        answered.len(),
        "two increments answered the same count"
    );
    assert!(
        distinct.last().is_none_or(|&max| max <= total),
        "a 200 answered a count above the final {total}"
    );
    let unanswered = total - answered.len() as u64;
    let failed_increments = killed
        .iter()
        .filter(|(what, _)| what.starts_with("POST /counter"))
        .count() as u64;
    assert!(
        unanswered <= failed_increments,
        "the counter reached {total} but only {} increments got a 200 and {failed_increments} \
         failed: something counted an increment twice (a retry of a request that had run?)",
        answered.len()
    );

    // Carts: every confirmed item is there, in order, and nothing else but items whose
    // request failed.
    let mut items = 0;
    for (cookie, basket) in shoppers {
        let basket = basket.await.unwrap();
        let (status, _, page) = try_send(&client, "GET", &haproxy.url("/cart"), Some(&cookie), "")
            .await
            .unwrap();
        assert_eq!(status, 200, "{page}");
        let listed = listed(&page);
        let kept: Vec<&String> = listed
            .iter()
            .filter(|item| basket.confirmed.contains(item))
            .collect();
        assert_eq!(
            kept,
            basket.confirmed.iter().collect::<Vec<_>>(),
            "a confirmed item is missing from the cart (or out of order)"
        );
        let strays: Vec<&String> = listed
            .iter()
            .filter(|item| !basket.confirmed.contains(item) && !basket.unsure.contains(item))
            .collect();
        assert!(strays.is_empty(), "items nobody added: {strays:?}");
        items += basket.confirmed.len();
    }

    // The operator's check of this fleet, through haproxy and at each replica: clean.
    let admin = replicas.values().next().unwrap();
    let urls: Vec<&str> = std::iter::once(haproxy.base.as_str())
        .chain(replicas.values().map(|r| r.base.as_str()))
        .collect();
    let (code, run) = block_in_place(|| crate::check::check(admin, &urls));
    assert_eq!(code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("clean: nothing survived between requests, and the replicas agree"),
        "{}",
        run.stdout
    );
    block_in_place(|| crate::check::no_probe_left(admin));

    let recovered = killed
        .iter()
        .map(|(_, at)| at.duration_since(killed_at))
        .max()
        .unwrap_or_default();
    eprintln!(
        "fleet: {} increments answered (counter at {total}, {unanswered} ran without a 200), \
         {items} cart items kept; SIGKILL of a replica: {} failed requests, the last {:.0?} \
         after the kill, haproxy had it down and the new replica up after {rejoined:.0?}; \
         rolling update: 0 failed; {:.1?} in all",
        answered.len(),
        killed.len(),
        recovered,
        started.elapsed()
    );
    for (what, _) in &killed {
        eprintln!("  during the kill: {what}");
    }
}
