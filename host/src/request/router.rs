//! Picks the app for a request by path prefix: the longest route that matches wins.
//!
//! A route matches its own path and everything below it (`/hello` serves `/hello` and
//! `/hello/x`, not `/helloworld`); the route `/` matches every path.

use std::sync::Arc;

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

/// The apps a server serves, by route.
pub struct Router {
    /// Longest route first, so the first match is the most specific one.
    apps: Vec<App>,
    /// Every app's session cookie name: no guest sees or sets any of them.
    session_cookies: Vec<String>,
}

impl Router {
    /// Builds a router, refusing two apps on one route or a route that is not a path.
    pub fn new(apps: impl IntoIterator<Item = App>) -> Result<Router> {
        let mut apps: Vec<App> = apps.into_iter().collect();
        for app in &apps {
            crate::config::validate_route(app.route())
                .with_context(|| format!("app `{}`", app.name()))?;
        }
        let mut names: Vec<&str> = apps.iter().map(|a| &**a.name()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            bail!(
                "two apps are named `{}`: names must be unique, since each names its own \
                 key-value namespace",
                pair[0]
            );
        }
        apps.sort_by_key(|app| std::cmp::Reverse(app.route().len()));
        for pair in apps.windows(2) {
            if pair[0].route() == pair[1].route() {
                bail!(
                    "apps `{}` and `{}` both want route `{}`",
                    pair[0].name(),
                    pair[1].name(),
                    pair[0].route()
                );
            }
        }
        let session_cookies = apps
            .iter()
            .map(|app| app.capabilities().session_config().cookie_name.clone())
            .collect();
        Ok(Router {
            apps,
            session_cookies,
        })
    }

    /// Every app's session cookie name.
    pub(crate) fn session_cookies(&self) -> &[String] {
        &self.session_cookies
    }

    /// The app serving `path`, if any.
    pub fn route(&self, path: &str) -> Option<&App> {
        self.apps
            .iter()
            .find(|app| crate::config::serves(app.route(), path))
    }

    /// The apps, longest route first.
    pub fn apps(&self) -> &[App] {
        &self.apps
    }
}

#[cfg(test)]
mod tests {
    use crate::config::serves as matches;

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
