//! Picks the app for a request by path prefix: the longest route that matches wins.
//!
//! A route matches its own path and everything below it (`/hello` serves `/hello` and
//! `/hello/x`, not `/helloworld`); the route `/` matches every path.
//!
//! A route may be [`Split`] between its app's active version and a canary (a gradual
//! rollout): a request with a key (the `tabula-version-key` header, else its session
//! cookie) goes where the hash of its key falls, so the same client keeps its version while
//! the split holds, and stays on the canary as its share grows, on every replica alike. A
//! request without either goes to one at random. That is a hash and a compare on the routes
//! that have a canary, and one branch on the others.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;

use crate::app::App;

/// The route table the server reads for every request, replaced whole when the apps change
/// (a deploy, a rollback, a rebuild). A request keeps the table, and so the app version, it
/// started with until it ends; the next request gets the new one. Reading it takes no lock.
#[derive(Clone)]
pub struct Routes(Arc<ArcSwap<Router>>);

impl Routes {
    /// A table serving `router`.
    pub fn new(router: Router) -> Routes {
        Routes(Arc::new(ArcSwap::from_pointee(router)))
    }

    /// The table now.
    pub fn current(&self) -> Arc<Router> {
        self.0.load_full()
    }

    /// Serves `router` from now on.
    pub fn replace(&self, router: Router) {
        self.0.store(Arc::new(router));
    }
}

/// The header by which a client keeps one version through a gradual rollout, whatever its
/// session (like Cloudflare's `Cloudflare-Workers-Version-Key`).
static VERSION_KEY: http::HeaderName = http::HeaderName::from_static("tabula-version-key");

/// Requests of one version of an app, and those that failed, counted as they are answered;
/// the replica takes the counts every second and adds them to the registry, where the
/// canary's judge reads them.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    total: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    /// Counts a request answered with `status`: a 5xx is a failure (a trap, a timeout, a
    /// guest's 500, a 503 for want of an instance).
    pub(crate) fn count(&self, status: u16) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts since the last take: (total, errors).
    pub(crate) fn take(&self) -> (u64, u64) {
        // Errors first: a request counted between the two swaps then shows as a success
        // now and its error next time, never as more errors than requests.
        let errors = self.errors.swap(0, Ordering::Relaxed);
        let total = self.total.swap(0, Ordering::Relaxed);
        (total, errors)
    }
}

/// The tallies of both sides of a split.
#[derive(Debug, Default)]
pub(crate) struct Tallies {
    /// The active version's.
    pub(crate) active: Tally,
    /// The canary's.
    pub(crate) canary: Tally,
}

/// A canary beside a route's active version.
#[derive(Clone)]
pub(crate) struct Split {
    /// The canary version, loaded.
    pub(crate) canary: App,
    /// Its version number: part of the hash, so each canary draws its own share of clients
    /// rather than the same ones every time.
    pub(crate) version: u64,
    /// Its share of requests, in percent.
    pub(crate) percent: u8,
    pub(crate) tallies: Arc<Tallies>,
}

impl Split {
    /// Whether a request with `headers` goes to the canary (else to `active`).
    fn takes(&self, active: &App, headers: &http::HeaderMap) -> bool {
        let key = headers.get(&VERSION_KEY).map(|v| v.as_bytes());
        let point = match key {
            Some(key) => bucket(self.version, key),
            None => {
                let cookies = headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .map(|v| v.as_bytes());
                match active
                    .capabilities()
                    .session_config()
                    .id_from_cookies(cookies)
                {
                    Some(id) => bucket(self.version, id.as_bytes()),
                    None => random_percent(),
                }
            }
        };
        point < u64::from(self.percent)
    }
}

/// Where `key` falls among 100 buckets for the canary of version `version`: the same on
/// every replica and every build (FNV-1a, then the 64-bit finaliser of MurmurHash3 to spread
/// keys that differ in a few bytes), so a client keeps its version whichever replica it
/// reaches, and one in a bucket under the share stays on the canary as the share grows.
pub(crate) fn bucket(version: u64, key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in version.to_le_bytes().iter().chain(key) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h % 100
}

/// A number from 0 to 99 for a request with no key: a per-thread xorshift, seeded once from
/// the system, since a request without a key has no version to keep.
fn random_percent() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            let _ = getrandom::fill(&mut seed);
            u64::from_le_bytes(seed) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x % 100
    })
}

/// One route: its app, and the canary it is split with, if any.
struct Route {
    app: App,
    split: Option<Split>,
}

/// The apps a server serves, by route.
pub struct Router {
    /// Longest route first, so the first match is the most specific one.
    routes: Vec<Route>,
    /// Every app's session cookie name: no guest sees or sets any of them.
    session_cookies: Vec<String>,
}

impl Router {
    /// Builds a router, refusing two apps on one route or a route that is not a path.
    pub fn new(apps: impl IntoIterator<Item = App>) -> Result<Router> {
        Router::with_splits(apps.into_iter().map(|app| (app, None)))
    }

    /// Like [`Router::new`], each app with the canary its requests are split with, if any.
    pub(crate) fn with_splits(
        routes: impl IntoIterator<Item = (App, Option<Split>)>,
    ) -> Result<Router> {
        let mut routes: Vec<Route> = routes
            .into_iter()
            .map(|(app, split)| Route { app, split })
            .collect();
        for Route { app, .. } in &routes {
            crate::config::validate_route(app.route())
                .with_context(|| format!("app `{}`", app.name()))?;
        }
        let mut names: Vec<&str> = routes.iter().map(|r| &**r.app.name()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            bail!(
                "two apps are named `{}`: names must be unique, since each names its own \
                 key-value namespace",
                pair[0]
            );
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.app.route().len()));
        for pair in routes.windows(2) {
            let (a, b) = (&pair[0].app, &pair[1].app);
            if a.route() == b.route() {
                bail!(
                    "apps `{}` and `{}` both want route `{}`",
                    a.name(),
                    b.name(),
                    a.route()
                );
            }
        }
        let session_cookies = routes
            .iter()
            .flat_map(|r| std::iter::once(&r.app).chain(r.split.as_ref().map(|s| &s.canary)))
            .map(|app| app.capabilities().session_config().cookie_name.clone())
            .collect();
        Ok(Router {
            routes,
            session_cookies,
        })
    }

    /// Every app's session cookie name.
    pub(crate) fn session_cookies(&self) -> &[String] {
        &self.session_cookies
    }

    /// The app serving `path`, if any, in the version a request with `headers` goes to,
    /// and where to count its outcome when its route is split with a canary.
    pub(crate) fn route(
        &self,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<(&App, Option<&Tally>)> {
        let route = self
            .routes
            .iter()
            .find(|r| crate::config::serves(r.app.route(), path))?;
        let Some(split) = &route.split else {
            return Some((&route.app, None));
        };
        Some(if split.takes(&route.app, headers) {
            (&split.canary, Some(&split.tallies.canary))
        } else {
            (&route.app, Some(&split.tallies.active))
        })
    }

    /// The apps, longest route first (their canaries aside).
    pub fn apps(&self) -> impl Iterator<Item = &App> {
        self.routes.iter().map(|r| &r.app)
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;
    use crate::config::serves as matches;

    #[test]
    fn keys_spread_evenly_and_each_canary_draws_its_own() {
        let keys: Vec<String> = (0..10_000).map(|n| format!("client-{n}")).collect();
        let under = |version, percent| {
            keys.iter()
                .filter(|k| bucket(version, k.as_bytes()) < percent)
                .count()
        };
        for percent in [1, 10, 50, 90] {
            let share = under(2, percent) as f64 / keys.len() as f64 * 100.0;
            assert!((share - percent as f64).abs() < 1.5, "{percent}%: {share}");
        }
        let both = keys
            .iter()
            .filter(|k| bucket(2, k.as_bytes()) < 10 && bucket(3, k.as_bytes()) < 10)
            .count();
        assert!(
            both < 200,
            "v2's and v3's 10% overlap by chance only: {both}"
        );
    }

    #[test]
    fn prefix_matching_respects_segments() {
        assert!(matches("/hello", "/hello"));
        assert!(matches("/hello", "/hello/there"));
        assert!(!matches("/hello", "/helloworld"));
        assert!(!matches("/hello", "/"));
        assert!(matches("/", "/anything/at/all"));
        assert!(matches("/a/b", "/a/b/c"));
        assert!(!matches("/a/b", "/a"));
    }
}
