//! The node proxy's loop, after kube-proxy: watch events only record which
//! Services changed; a bounded-frequency runner turns the changes into one
//! transaction; a failed transaction makes the next sync full.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use orca_core::api::{EndpointSlice, Object, Service};
use orca_core::store::{Error as StoreError, Store};
use orca_core::telemetry::Metrics;
use orca_core::watch::{self, Event};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Unit;

use super::proxier::{Options, Plan, Proxier, ServiceKey, UdpFlow};
use super::ruleset::{Family as TableFamily, Model, Op, Sink};
use super::source::{ServiceInfo, SliceInfo, service_ports};

/// Label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Back-off before retrying after a failed transaction.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where the operations go: the kernel, or the in-memory model in tests.
pub trait Backend {
    /// A transaction being built.
    type Transaction: Sink;

    /// Starts a transaction.
    fn begin(&mut self) -> Self::Transaction;

    /// Applies `tx` atomically.
    fn commit(&mut self, tx: Self::Transaction) -> Result<(), String>;

    /// Deletes the connection-tracking entries of `flows`; how many.
    fn forget_udp(&mut self, flows: &[UdpFlow]) -> Result<usize, String>;
}

impl Backend for Model {
    type Transaction = Vec<Op>;

    fn begin(&mut self) -> Vec<Op> {
        Vec::new()
    }

    fn commit(&mut self, ops: Vec<Op>) -> Result<(), String> {
        self.apply(&ops).map_err(|e| e.to_string())
    }

    /// The model tracks no connections.
    fn forget_udp(&mut self, _flows: &[UdpFlow]) -> Result<usize, String> {
        Ok(0)
    }
}

/// What the proxier reads: Services and their EndpointSlices, as the watch
/// events left them (reduced to what the rules need), and which Services
/// changed since the last sync.
pub struct Tracker {
    node: String,
    services: HashMap<ServiceKey, ServiceInfo>,
    /// A Service's slices by name: a short list (a BTreeMap's node costs
    /// a kilobyte even for one slice).
    slices: HashMap<ServiceKey, Vec<(String, SliceInfo)>>,
    slice_owner: HashMap<(String, String), ServiceKey>,
    dirty: HashSet<ServiceKey>,
    relist_services: Option<Vec<(ServiceKey, ServiceInfo)>>,
    relist_slices: Option<Vec<Slice>>,
    services_synced: bool,
    slices_synced: bool,
    /// When the oldest change not yet in the kernel arrived.
    oldest_change: Option<Instant>,
}

/// An EndpointSlice as the tracker keeps it.
struct Slice {
    id: (String, String),
    owner: Option<ServiceKey>,
    trigger: Option<Instant>,
    info: SliceInfo,
}

fn key_of<K: Object>(obj: &K) -> ServiceKey {
    let m = obj.metadata();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// The annotation in which the endpoints controller records when the change
/// that produced a slice happened (kube-proxy measures from it too).
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// A slice's trigger time on the monotonic clock, if it has one.
fn trigger_time(slice: &EndpointSlice) -> Option<Instant> {
    let text = slice.metadata.annotations.as_ref()?.get(TRIGGER_TIME)?;
    let at: jiff::Timestamp = text.parse().ok()?;
    let ago = jiff::Timestamp::now().duration_since(at);
    let ago = Duration::try_from(ago).ok()?;
    Instant::now().checked_sub(ago)
}

fn owner_of(slice: &EndpointSlice) -> Option<ServiceKey> {
    let ns = slice.metadata.namespace.clone()?;
    let svc = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    Some((ns, svc))
}

impl Tracker {
    /// A tracker for the rules of `node` (for `Local` traffic policies).
    pub fn new(node: &str) -> Self {
        Tracker {
            node: node.to_string(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            dirty: HashSet::new(),
            relist_services: None,
            relist_slices: None,
            services_synced: false,
            slices_synced: false,
            oldest_change: None,
        }
    }

    /// Whether both lists completed once: nothing is programmed before.
    pub fn ready(&self) -> bool {
        self.services_synced && self.slices_synced
    }

    /// Records a Service event.
    pub fn service_event(&mut self, event: Event<Service>) {
        match event {
            Event::Init => self.relist_services = Some(Vec::new()),
            Event::InitApply(s) => self
                .relist_services
                .get_or_insert_with(Vec::new)
                .push((key_of(&s), ServiceInfo::new(&s))),
            Event::InitDone => {
                let list = self.relist_services.take().unwrap_or_default();
                let old: Vec<ServiceKey> = self.services.keys().cloned().collect();
                self.mark(old);
                self.services.clear();
                for (key, info) in list {
                    self.apply_service(key, info);
                }
                self.services_synced = true;
            }
            Event::Apply(s) => self.apply_service(key_of(&s), ServiceInfo::new(&s)),
            Event::Delete(s) => {
                let key = key_of(&s);
                self.services.remove(&key);
                self.mark([key]);
            }
        }
    }

    fn apply_service(&mut self, key: ServiceKey, info: ServiceInfo) {
        self.services.insert(key.clone(), info);
        self.mark([key]);
    }

    /// Records an EndpointSlice event.
    pub fn slice_event(&mut self, event: Event<EndpointSlice>) {
        match event {
            Event::Init => self.relist_slices = Some(Vec::new()),
            Event::InitApply(s) => {
                let slice = self.reduce(&s);
                self.relist_slices.get_or_insert_with(Vec::new).push(slice);
            }
            Event::InitDone => {
                let list = self.relist_slices.take().unwrap_or_default();
                let old: Vec<ServiceKey> = self.slices.keys().cloned().collect();
                self.mark(old);
                self.slices.clear();
                self.slice_owner.clear();
                for s in list {
                    self.apply_slice(s);
                }
                self.slices_synced = true;
            }
            Event::Apply(s) => {
                let slice = self.reduce(&s);
                self.apply_slice(slice);
            }
            Event::Delete(s) => {
                let id = key_of(&s);
                self.remove_slice(&id);
            }
        }
    }

    fn remove_slice(&mut self, id: &(String, String)) {
        if let Some(owner) = self.slice_owner.remove(id) {
            if let Some(list) = self.slices.get_mut(&owner) {
                list.retain(|(name, _)| *name != id.1);
                if list.is_empty() {
                    self.slices.remove(&owner);
                }
            }
            self.mark([owner]);
        }
    }

    fn reduce(&self, s: &EndpointSlice) -> Slice {
        Slice {
            id: key_of(s),
            owner: owner_of(s),
            trigger: trigger_time(s),
            info: SliceInfo::new(s, &self.node),
        }
    }

    fn apply_slice(&mut self, s: Slice) {
        let Slice {
            id,
            owner,
            trigger,
            info,
        } = s;
        // A slice whose service label changed leaves its old Service.
        if self.slice_owner.get(&id) != owner.as_ref() {
            self.remove_slice(&id);
        }
        let Some(owner) = owner else {
            return;
        };
        if let Some(at) = trigger {
            // The change started before the slice reached us: when the
            // endpoints controller saw the pod change.
            self.oldest_change = Some(self.oldest_change.map_or(at, |o| o.min(at)));
        }
        self.slice_owner.insert(id.clone(), owner.clone());
        let list = self.slices.entry(owner.clone()).or_default();
        match list.iter_mut().find(|(name, _)| *name == id.1) {
            Some((_, existing)) => *existing = info,
            None => list.push((id.1, info)),
        }
        self.mark([owner]);
    }

    fn mark(&mut self, keys: impl IntoIterator<Item = ServiceKey>) {
        self.dirty.extend(keys);
        self.oldest_change.get_or_insert_with(Instant::now);
    }

    /// Whether a sync has work.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Takes the Services changed since the last call.
    pub fn take_changes(&mut self) -> Vec<ServiceKey> {
        self.dirty.drain().collect()
    }

    /// Plans the transaction that brings `changed` (or everything, when the
    /// proxier must sync in full) to their current state in `proxier`'s table.
    pub fn plan(&self, proxier: &mut Proxier, changed: &[ServiceKey], sink: &mut dyn Sink) -> Plan {
        let family = proxier.family();
        let services = &self.services;
        let slices = &self.slices;
        proxier.plan(
            changed,
            |key| {
                let svc = services.get(key)?;
                let owned: Vec<&SliceInfo> = slices
                    .get(key)
                    .into_iter()
                    .flat_map(|list| list.iter().map(|(_, info)| info))
                    .collect();
                Some(service_ports(svc, &owned, family))
            },
            || services.keys().cloned().collect(),
            sink,
        )
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    family: &'static str,
    mode: &'static str,
}

/// The node proxy's metrics.
#[derive(Clone)]
pub struct SyncMetrics {
    duration: Family<ModeLabels, Histogram, fn() -> Histogram>,
    latency: Histogram,
    rules: Counter,
    elements: Counter,
    failures: Counter,
    forgotten: Counter,
    services: Family<FamilyLabels, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl SyncMetrics {
    /// Registers the metrics under `metrics` (prefix it with the component).
    pub fn new(metrics: &Metrics) -> Self {
        let m = SyncMetrics {
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            latency: duration_histogram(),
            rules: Counter::default(),
            elements: Counter::default(),
            failures: Counter::default(),
            forgotten: Counter::default(),
            services: Family::default(),
        };
        metrics.register_with_unit(
            "sync_duration",
            "Time to plan and commit one transaction, by mode (full or partial)",
            Unit::Seconds,
            m.duration.clone(),
        );
        metrics.register_with_unit(
            "network_programming_latency",
            "Time from a change (an EndpointSlice's last-change-trigger-time, else the watch event's arrival) to its rules being in the kernel",
            Unit::Seconds,
            m.latency.clone(),
        );
        metrics.register(
            "rules_programmed",
            "Rules added to the kernel",
            m.rules.clone(),
        );
        metrics.register(
            "elements_programmed",
            "Set and map elements added to or deleted from the kernel",
            m.elements.clone(),
        );
        metrics.register(
            "sync_failures",
            "Transactions the kernel refused",
            m.failures.clone(),
        );
        metrics.register("services", "Services programmed", m.services.clone());
        m
    }
}

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name (for `Local` traffic policies).
    pub node: String,
    /// At most one sync per this period; changes in between are batched.
    pub min_sync_period: Duration,
    /// The states of the Services and EndpointSlices watches, kept
    /// current (metrics, rate-limited logs, `/healthz`); without them the
    /// watches' errors are logged one by one.
    pub watch_status: Option<(watch::WatchStatus, watch::WatchStatus)>,
}

/// One table the loop keeps in step: its family, its options and where
/// its transactions go.
pub struct Table<'a, B> {
    /// The address family.
    pub family: TableFamily,
    /// Options of its rules.
    pub options: Options,
    /// The kernel (or the model, in tests).
    pub backend: &'a mut B,
}

/// Follows Services and EndpointSlices in `store` and keeps every table in
/// step until `shutdown` completes. `on_sync` is told after every
/// successful commit (the CLI uses it for readiness).
pub async fn run<B: Backend>(
    store: Store,
    settings: Settings,
    tables: Vec<Table<'_, B>>,
    metrics: SyncMetrics,
    mut on_sync: impl FnMut(&Plan),
    shutdown: impl Future<Output = ()>,
) {
    let (services, slices) = match settings.watch_status.clone() {
        Some((services, slices)) => (
            watch::watcher_with_status(store.all::<Service>(), services).boxed(),
            watch::watcher_with_status(store.all::<EndpointSlice>(), slices).boxed(),
        ),
        None => (
            watch::watcher(store.all::<Service>()).boxed(),
            watch::watcher(store.all::<EndpointSlice>()).boxed(),
        ),
    };
    let logged = settings.watch_status.is_none();
    let services = services.map(|e| Change::Service(Box::new(e)));
    let slices = slices.map(|e| Change::Slice(Box::new(e)));
    let mut events = std::pin::pin!(futures::stream::select(services, slices));
    let mut tracker = Tracker::new(&settings.node);
    let mut tables: Vec<(Proxier, &mut B)> = tables
        .into_iter()
        .map(|t| (Proxier::new(t.options, t.family), t.backend))
        .collect();
    let mut next_allowed = tokio::time::Instant::now();
    tokio::pin!(shutdown);
    loop {
        let due = tracker.ready()
            && (tracker.has_changes() || tables.iter().any(|(p, _)| p.needs_full()));
        tokio::select! {
            () = &mut shutdown => return,
            event = events.next() => match event {
                Some(Change::Service(e)) => match *e {
                    Ok(e) => tracker.service_event(e),
                    Err(e) if logged => tracing::warn!(error = %e, "watch failed; retrying"),
                    Err(_) => {}
                },
                Some(Change::Slice(e)) => match *e {
                    Ok(e) => tracker.slice_event(e),
                    Err(e) if logged => tracing::warn!(error = %e, "watch failed; retrying"),
                    Err(_) => {}
                },
                None => return,
            },
            () = tokio::time::sleep_until(next_allowed), if due => {
                let oldest = tracker.oldest_change.take();
                let changed = tracker.take_changes();
                next_allowed = tokio::time::Instant::now() + settings.min_sync_period;
                for (proxier, backend) in &mut tables {
                    let started = Instant::now();
                    let mut tx = backend.begin();
                    let plan = tracker.plan(proxier, &changed, &mut tx);
                    if plan.ops == 0 {
                        continue;
                    }
                    let family = proxier.family().name();
                    match backend.commit(tx) {
                        Ok(()) => {
                            let took = started.elapsed();
                            let mode = if plan.full { "full" } else { "partial" };
                            metrics.duration.get_or_create(&ModeLabels { family, mode }).observe(took.as_secs_f64());
                            if let Some(t) = oldest {
                                metrics.latency.observe(t.elapsed().as_secs_f64());
                            }
                            metrics.rules.inc_by(plan.rules as u64);
                            metrics.elements.inc_by(plan.elements as u64);
                            metrics.services.get_or_create(&FamilyLabels { family }).set(proxier.services() as i64);
                            tracing::debug!(family, mode, ops = plan.ops, rules = plan.rules, elements = plan.elements, ?took, "synced");
                            // Only once the endpoint is out of the rules, or
                            // the next datagram could pick it again.
                            if !plan.stale_udp.is_empty() {
                                match backend.forget_udp(&plan.stale_udp) {
                                    Ok(n) => {
                                        metrics.forgotten.inc_by(n as u64);
                                    }
                                    Err(e) => tracing::warn!(family, error = %e, "cannot delete stale UDP flows"),
                                }
                            }
                            on_sync(&plan);
                            // A full sync builds and frees its whole
                            // batch (14 MiB at 10k Services).
                            if plan.full {
                                crate::memory::release_free_memory();
                            }
                        }
                        Err(e) => {
                            metrics.failures.inc();
                            tracing::warn!(family, error = %e, full = plan.full, "sync failed; the next sync replaces the whole table");
                            proxier.invalidate();
                            next_allowed = tokio::time::Instant::now() + RETRY_AFTER;
                        }
                    }
                }
            }
        }
    }
}

enum Change {
    Service(Box<Result<Event<Service>, StoreError>>),
    Slice(Box<Result<Event<EndpointSlice>, StoreError>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str, ip: &str) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [{"addresses": [ip]}]
        }))
        .unwrap()
    }

    fn next_plan(t: &mut Tracker, p: &mut Proxier) -> (Plan, Vec<Op>) {
        let changed = t.take_changes();
        let mut ops = Vec::new();
        let plan = t.plan(p, &changed, &mut ops);
        (plan, ops)
    }

    fn list<K>(items: Vec<K>) -> Vec<Event<K>> {
        let mut events = vec![Event::Init];
        events.extend(items.into_iter().map(Event::InitApply));
        events.push(Event::InitDone);
        events
    }

    #[test]
    fn nothing_is_programmed_before_both_lists_complete_then_changes_are_partial() {
        let mut t = Tracker::new("n1");
        let (mut p, mut m) = (
            Proxier::new(Options::default(), TableFamily::V4),
            Model::default(),
        );
        for e in list(vec![svc("a", "10.96.0.1"), svc("b", "10.96.0.2")]) {
            t.service_event(e);
        }
        assert!(!t.ready(), "slices are not listed yet");
        for e in list(vec![slice("a-1", "a", "10.244.1.2")]) {
            t.slice_event(e);
        }
        assert!(t.ready());
        let (plan, ops) = next_plan(&mut t, &mut p);
        assert!(plan.full);
        m.commit(ops).unwrap();
        assert!(!t.has_changes());

        // A slice moving from a to b makes both dirty.
        t.slice_event(Event::Apply(slice("a-1", "b", "10.244.1.2")));
        let (plan, ops) = next_plan(&mut t, &mut p);
        assert!(!plan.full);
        m.commit(ops).unwrap();
        let text = m.render();
        assert!(
            text.contains("10.96.0.1 . tcp . 80 : goto reject-chain"),
            "{text}"
        );
        assert!(
            text.contains("10.96.0.2 . tcp . 80 : goto svc-default/b/tcp/80"),
            "{text}"
        );

        // A re-list that no longer has b removes it.
        for e in list(vec![svc("a", "10.96.0.1")]) {
            t.service_event(e);
        }
        m.commit(next_plan(&mut t, &mut p).1).unwrap();
        assert!(!m.render().contains("10.96.0.2"));
    }

    #[test]
    fn latency_starts_at_the_slice_trigger_time() {
        let mut t = Tracker::new("n1");
        let mut s = slice("a-1", "a", "10.244.1.2");
        let at = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3);
        s.metadata.annotations = Some([(TRIGGER_TIME.to_string(), at.to_string())].into());
        t.slice_event(Event::Apply(s));
        let oldest = t.oldest_change.expect("a change is recorded");
        assert!(
            oldest.elapsed() >= Duration::from_secs(2),
            "{:?}",
            oldest.elapsed()
        );

        // Without the annotation, the arrival counts.
        let mut t = Tracker::new("n1");
        t.slice_event(Event::Apply(slice("b-1", "b", "10.244.1.3")));
        assert!(t.oldest_change.expect("recorded").elapsed() < Duration::from_secs(2));
    }
}
