//! The route table: host, then path, then headers → weighted upstreams.
//!
//! Built once per configuration change and swapped in whole; a lookup is a
//! hash probe per host form and per path element, so its cost depends on the
//! depth of the request path, not on the number of routes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::config::PathType;
use super::upstream::Upstream;

/// Where matching requests go.
#[derive(Debug)]
pub struct Route {
    /// Position of the rule in its source (config index or Ingress rule),
    /// for metrics labels and `/routes`.
    pub name: Arc<str>,
    /// Headers that must all match (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Upstreams with their cumulative weights, for weighted choice.
    targets: Vec<(u32, Arc<Upstream>)>,
    /// Answer plain-HTTP requests with a redirect to HTTPS.
    pub redirect_https: bool,
}

impl Route {
    /// A route to `targets` (upstream, weight).
    pub fn new(
        name: impl Into<Arc<str>>,
        headers: Vec<(String, String)>,
        targets: Vec<(Arc<Upstream>, u32)>,
        redirect_https: bool,
    ) -> Self {
        let mut total = 0;
        let targets = targets
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(u, w)| {
                total += w;
                (total, u)
            })
            .collect();
        Self {
            name: name.into(),
            headers: headers
                .into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v))
                .collect(),
            targets,
            redirect_https,
        }
    }

    /// Picks an upstream by weight; `roll` is any random number.
    pub fn pick(&self, roll: u32) -> Option<&Arc<Upstream>> {
        let total = self.targets.last()?.0;
        let point = roll % total;
        self.targets
            .iter()
            .find(|(cumulative, _)| point < *cumulative)
            .map(|(_, u)| u)
    }

    /// The upstreams this route sends to.
    pub fn upstreams(&self) -> impl Iterator<Item = (&Arc<Upstream>, u32)> {
        let mut previous = 0;
        self.targets.iter().map(move |(cumulative, u)| {
            let weight = cumulative - previous;
            previous = *cumulative;
            (u, weight)
        })
    }

    fn matches<'b>(&self, header: &dyn Fn(&str) -> Option<&'b [u8]>) -> bool {
        self.headers
            .iter()
            .all(|(name, value)| header(name) == Some(value.as_bytes()))
    }
}

/// Routes of one host, by path.
#[derive(Debug, Default)]
struct PathRoutes {
    exact: HashMap<String, Vec<Arc<Route>>>,
    prefix: HashMap<String, Vec<Arc<Route>>>,
}

impl PathRoutes {
    fn insert(&mut self, path: &str, path_type: PathType, route: Arc<Route>) {
        let map = match path_type {
            PathType::Exact => &mut self.exact,
            PathType::Prefix => &mut self.prefix,
        };
        // A prefix is compared element by element, so a trailing slash does
        // not change what it matches (`/api/` ≡ `/api`).
        let key = match path_type {
            PathType::Prefix if path.len() > 1 => path.trim_end_matches('/'),
            _ => path,
        };
        let key = if key.is_empty() { "/" } else { key };
        let routes = map.entry(key.to_string()).or_default();
        routes.push(route);
        // Rules with more header conditions are more specific: try them first.
        routes.sort_by_key(|r| std::cmp::Reverse(r.headers.len()));
    }

    fn find<'b>(
        &self,
        path: &str,
        header: &dyn Fn(&str) -> Option<&'b [u8]>,
    ) -> Option<&Arc<Route>> {
        fn first<'r, 'b>(
            routes: Option<&'r Vec<Arc<Route>>>,
            header: &dyn Fn(&str) -> Option<&'b [u8]>,
        ) -> Option<&'r Arc<Route>> {
            routes.and_then(|rs| rs.iter().find(|r| r.matches(header)))
        }
        if let Some(r) = first(self.exact.get(path), header) {
            return Some(r);
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Longest prefix first: the whole path, then each parent element.
        let mut candidate = path.trim_end_matches('/');
        loop {
            let key = if candidate.is_empty() { "/" } else { candidate };
            if let Some(r) = first(self.prefix.get(key), header) {
                return Some(r);
            }
            match candidate.rfind('/') {
                Some(0) if candidate.len() > 1 => candidate = "",
                Some(i) if i > 0 => candidate = &candidate[..i],
                _ => return None,
            }
        }
    }
}

/// A route with what it matches, as inserted.
#[derive(Debug)]
pub struct Listed {
    /// Host matched (`None`: any).
    pub host: Option<String>,
    /// Path matched.
    pub path: String,
    /// How the path matches.
    pub path_type: PathType,
    /// The route.
    pub route: Arc<Route>,
}

/// All routes of a configuration.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact_hosts: HashMap<String, PathRoutes>,
    /// Keyed by the part after `*.`; a wildcard matches one DNS label.
    wildcard_hosts: HashMap<String, PathRoutes>,
    any_host: PathRoutes,
    /// Every route in insertion order, for the admin view of what is served.
    listed: Vec<Listed>,
}

impl RouteTable {
    /// Adds a route for `host` (None = any) and `path`.
    pub fn insert(
        &mut self,
        host: Option<&str>,
        path: &str,
        path_type: PathType,
        route: Arc<Route>,
    ) {
        let routes = match host {
            None => &mut self.any_host,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => self.wildcard_hosts.entry(suffix.to_string()).or_default(),
                None => self.exact_hosts.entry(h.to_string()).or_default(),
            },
        };
        routes.insert(path, path_type, route.clone());
        self.listed.push(Listed {
            host: host.map(str::to_string),
            path: path.to_string(),
            path_type,
            route,
        });
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.listed.len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// Every route, in the order inserted.
    pub fn routes(&self) -> &[Listed] {
        &self.listed
    }

    /// The route for a request: `host` is the Host header without port
    /// (lower-case), `path` the path without query; `header` looks up a
    /// request header by lower-case name.
    pub fn find<'b>(
        &self,
        host: &str,
        path: &str,
        header: &dyn Fn(&str) -> Option<&'b [u8]>,
    ) -> Option<&Arc<Route>> {
        if let Some(r) = self
            .exact_hosts
            .get(host)
            .and_then(|p| p.find(path, header))
        {
            return Some(r);
        }
        if !self.wildcard_hosts.is_empty()
            && let Some((_, parent)) = host.split_once('.')
            && let Some(r) = self
                .wildcard_hosts
                .get(parent)
                .and_then(|p| p.find(path, header))
        {
            return Some(r);
        }
        self.any_host.find(path, header)
    }
}

/// The path a request is routed by and forwarded with: percent-encoded
/// unreserved characters decoded (RFC 3986 §6.2.2.2, so `%2e%2e` is a
/// dot-segment as an upstream would read it), dot-segments resolved
/// (§5.2.4) and repeated slashes merged, as Envoy's `normalize_path` and
/// `merge_slashes` do. An encoded slash (`%2F`) stays encoded: it is part
/// of a segment, not a separator. Borrowed when the path is already normal,
/// as nearly every path is.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    if !path.starts_with('/') || is_normal(path.as_bytes()) {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut out = String::with_capacity(decoded.len());
    let mut segments = decoded[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" | "." => {}
            ".." => {
                let parent = out.rfind('/').unwrap_or(0);
                out.truncate(parent);
            }
            _ => {
                out.push('/');
                out.push_str(segment);
                continue;
            }
        }
        // A path that ends on a directory keeps saying so: `/a/b/..` is `/a/`.
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Whether `path` has no empty, `.` or `..` segment (a trailing slash
/// aside) and no percent-encoded unreserved character.
fn is_normal(path: &[u8]) -> bool {
    let mut segment_start = 1;
    for (i, &b) in path.iter().enumerate().skip(1) {
        match b {
            b'/' => {
                if matches!(&path[segment_start..i], b"" | b"." | b"..") {
                    return false;
                }
                segment_start = i + 1;
            }
            b'%' if decoded_unreserved(&path[i..]).is_some() => return false,
            _ => {}
        }
    }
    !matches!(&path[segment_start..], b"." | b"..")
}

/// The unreserved character (RFC 3986 §2.3) that `%XX` at the start of
/// `rest` encodes, if it encodes one.
fn decoded_unreserved(rest: &[u8]) -> Option<char> {
    let hex = rest.get(1..3)?;
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let byte = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    (byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~'))
        .then_some(char::from(byte))
}

fn decode_unreserved(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match decoded_unreserved(rest.as_bytes()) {
            Some(c) => {
                out.push(c);
                rest = &rest[3..];
            }
            None => {
                out.push('%');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::config::LbPolicy;

    fn upstream(name: &str) -> Arc<Upstream> {
        Arc::new(Upstream::new(
            name,
            vec!["127.0.0.1:1".parse().unwrap()],
            LbPolicy::RoundRobin,
        ))
    }

    fn route(name: &str) -> Arc<Route> {
        Arc::new(Route::new(name, vec![], vec![(upstream(name), 1)], false))
    }

    fn no_headers(_: &str) -> Option<&'static [u8]> {
        None
    }

    #[test]
    fn paths_are_normalised_for_routing() {
        let cases = [
            ("/", "/"),
            ("/api/v1", "/api/v1"),
            ("/api/v1/", "/api/v1/"),
            ("/public/../admin", "/admin"),
            ("/public/%2e%2E/admin", "/admin"),
            ("/public/./x", "/public/x"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/../../etc", "/etc"),
            ("/a/..%2Fadmin", "/a/..%2Fadmin"),
            ("/a%2fb", "/a%2fb"),
            ("/%61dmin", "/admin"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a%", "/a%"),
            ("/a%2", "/a%2"),
            ("/.hidden/..x", "/.hidden/..x"),
            ("*", "*"),
        ];
        for (path, normal) in cases {
            let got = normalize_path(path);
            assert_eq!(got, normal, "{path}");
            assert_eq!(
                matches!(got, Cow::Borrowed(_)),
                path == normal,
                "{path}: copied only when changed"
            );
        }
    }

    fn find<'a>(t: &'a RouteTable, host: &str, path: &str) -> Option<&'a str> {
        t.find(host, path, &no_headers).map(|r| &*r.name)
    }

    #[test]
    fn hosts_then_paths() {
        let mut t = RouteTable::default();
        t.insert(Some("example.com"), "/api", PathType::Prefix, route("api"));
        t.insert(
            Some("example.com"),
            "/api/v2",
            PathType::Prefix,
            route("v2"),
        );
        t.insert(
            Some("example.com"),
            "/login",
            PathType::Exact,
            route("login"),
        );
        t.insert(Some("*.example.com"), "/", PathType::Prefix, route("wild"));
        t.insert(None, "/", PathType::Prefix, route("default"));

        assert_eq!(find(&t, "example.com", "/api"), Some("api"));
        assert_eq!(find(&t, "example.com", "/api/"), Some("api"));
        assert_eq!(find(&t, "example.com", "/api/users/1"), Some("api"));
        assert_eq!(find(&t, "example.com", "/api/v2/x"), Some("v2"));
        assert_eq!(
            find(&t, "example.com", "/apix"),
            Some("default"),
            "prefixes match whole elements"
        );
        assert_eq!(find(&t, "example.com", "/login"), Some("login"));
        assert_eq!(
            find(&t, "example.com", "/login/x"),
            Some("default"),
            "exact is exact"
        );
        assert_eq!(find(&t, "a.example.com", "/anything"), Some("wild"));
        assert_eq!(
            find(&t, "a.b.example.com", "/"),
            Some("default"),
            "a wildcard covers one label"
        );
        assert_eq!(find(&t, "other.org", "/x"), Some("default"));
    }

    #[test]
    fn no_route_without_a_catch_all() {
        let mut t = RouteTable::default();
        t.insert(Some("example.com"), "/api", PathType::Prefix, route("api"));
        assert_eq!(find(&t, "example.com", "/"), None);
        assert_eq!(find(&t, "other.org", "/api"), None);
    }

    #[test]
    fn header_matches_are_more_specific() {
        let mut t = RouteTable::default();
        t.insert(None, "/", PathType::Prefix, route("stable"));
        let canary = Route::new(
            "canary",
            vec![("X-Canary".into(), "1".into())],
            vec![(upstream("canary"), 1)],
            false,
        );
        t.insert(None, "/", PathType::Prefix, Arc::new(canary));
        let with = |name: &str| (name == "x-canary").then_some(&b"1"[..]);
        assert_eq!(t.find("h", "/x", &with).map(|r| &*r.name), Some("canary"));
        assert_eq!(find(&t, "h", "/x"), Some("stable"));
    }

    #[test]
    fn weighted_choice_follows_weights() {
        let r = Route::new(
            "split",
            vec![],
            vec![(upstream("a"), 9), (upstream("b"), 1), (upstream("off"), 0)],
            false,
        );
        let mut counts = HashMap::new();
        for roll in 0..1000 {
            *counts
                .entry(r.pick(roll).unwrap().name.clone())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.get("a"), Some(&900));
        assert_eq!(counts.get("b"), Some(&100));
        assert_eq!(counts.get("off"), None);
        assert_eq!(r.upstreams().map(|(_, w)| w).collect::<Vec<_>>(), [9, 1]);
    }
}
