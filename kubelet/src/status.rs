//! A pod's status as the kubelet reports it: per container its state
//! (waiting with a reason, running since, terminated with exit code and
//! reason), `lastState`, `restartCount`, `imageID`, `containerID`; the
//! pod's phase by Kubernetes' rules, its conditions, addresses and start
//! time. Timestamps carry whole seconds, as the API stores them, so a
//! status computed twice compares equal and is written once.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use orca_core::api::{Pod, Time};

use crate::runtime::Running;
use crate::runtime::monitor::ExitRecord;

/// A failed pull, kept until the next try.
#[derive(Debug, Clone)]
pub struct PullFailure {
    /// `ErrImagePull`, `ErrImageNeverPull`, `InvalidImageName`.
    pub reason: String,
    /// The registry's or the node's words.
    pub message: String,
    /// The image asked for.
    pub image: String,
    /// Failures in a row.
    pub failures: u32,
    /// When the next pull may start.
    pub retry_at: Instant,
}

impl PullFailure {
    /// The failure as shown while the kubelet waits to pull again.
    pub fn backing_off(&self) -> Self {
        let mut shown = self.clone();
        if shown.reason == "ErrImagePull" {
            shown.reason = "ImagePullBackOff".into();
            shown.message = format!(
                "Back-off pulling image \"{}\": {}",
                self.image, self.message
            );
        }
        shown
    }
}

/// A timestamp as the API keeps it: RFC 3339, whole seconds.
pub fn time(rfc3339: &str) -> Option<Time> {
    let ts: jiff::Timestamp = rfc3339.parse().ok()?;
    jiff::Timestamp::from_second(ts.as_second()).ok().map(Time)
}

fn now() -> Time {
    time(&jiff::Timestamp::now().to_string()).expect("now is a valid time")
}

/// One container as observed.
#[derive(Debug, Clone)]
pub struct ContainerView {
    status: ContainerStatus,
    /// Whether it runs now.
    pub running: bool,
    /// Its exit code when it ended for good (no restart coming).
    pub finished: Option<i32>,
}

fn terminated(exit: &ExitRecord, running: Option<&Running>) -> ContainerState {
    let reason = if exit.oom_killed {
        "OOMKilled"
    } else if exit.error.is_some() {
        "StartError"
    } else if exit.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: exit.exit_code,
            signal: exit.signal,
            reason: Some(reason.into()),
            message: exit.error.clone(),
            started_at: running.and_then(|r| time(&r.started_at)),
            finished_at: time(&exit.finished_at),
            container_id: running.map(|r| container_id(&r.id)),
        }),
        ..ContainerState::default()
    }
}

fn container_id(id: &str) -> String {
    format!("runc://{id}")
}

fn waiting_state(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..ContainerState::default()
    }
}

impl ContainerView {
    fn base(container: &Container, attempt: u32) -> ContainerStatus {
        ContainerStatus {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            restart_count: attempt as i32,
            ..ContainerStatus::default()
        }
    }

    /// A container waiting for the pod's init containers.
    pub fn initializing(container: &Container) -> Self {
        let mut status = Self::base(container, 0);
        status.state = Some(waiting_state("PodInitializing", None));
        status.started = Some(false);
        Self {
            status,
            running: false,
            finished: None,
        }
    }

    /// A container waiting for `reason`.
    pub fn waiting(container: &Container, attempt: u32, reason: &str, message: &str) -> Self {
        let mut status = Self::base(container, attempt);
        status.state = Some(waiting_state(reason, Some(message.into())));
        status.started = Some(false);
        Self {
            status,
            running: false,
            finished: None,
        }
    }

    /// A container whose image could not be pulled.
    pub fn pull_failed(container: &Container, attempt: u32, failure: PullFailure) -> Self {
        Self::waiting(container, attempt, &failure.reason, &failure.message)
    }

    /// A running container; `previous` is how its last attempt ended.
    pub fn running(
        container: &Container,
        attempt: u32,
        path: &Path,
        running: &Running,
        previous: Option<(ExitRecord, Option<Running>)>,
    ) -> Self {
        let mut status = Self::base(container, attempt);
        status.state = Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: time(&running.started_at),
            }),
            ..ContainerState::default()
        });
        status.last_state = previous.map(|(exit, r)| terminated(&exit, r.as_ref()));
        status.container_id = Some(container_id(&running.id));
        status.image_id = std::fs::read_to_string(path.join("image_id")).unwrap_or_default();
        status.started = Some(true);
        status.ready = true;
        Self {
            status,
            running: true,
            finished: None,
        }
    }

    /// An ended container: waiting out its back-off before a restart when
    /// `backoff` is given, else ended for good.
    pub fn exited(
        container: &Container,
        attempt: u32,
        path: &Path,
        running: Option<&Running>,
        exit: &ExitRecord,
        previous: Option<(ExitRecord, Option<Running>)>,
        backoff: Option<Duration>,
    ) -> Self {
        let mut status = Self::base(container, attempt);
        status.container_id = running.map(|r| container_id(&r.id));
        status.image_id = std::fs::read_to_string(path.join("image_id")).unwrap_or_default();
        status.started = Some(false);
        match backoff {
            Some(delay) => {
                let pod = container.name.clone();
                status.state = Some(waiting_state(
                    "CrashLoopBackOff",
                    Some(format!(
                        "back-off {} restarting failed container={pod}",
                        humanize(delay)
                    )),
                ));
                status.last_state = Some(terminated(exit, running));
                Self {
                    status,
                    running: false,
                    finished: None,
                }
            }
            None => {
                status.state = Some(terminated(exit, running));
                status.last_state = previous.map(|(exit, r)| terminated(&exit, r.as_ref()));
                Self {
                    status,
                    running: false,
                    finished: Some(exit.exit_code),
                }
            }
        }
    }

    /// Sets what the container's probes found: `started` (the startup
    /// probe passed) and `ready` (the readiness probe passed).
    pub fn set_health(&mut self, started: bool, ready: bool) {
        self.status.started = Some(self.running && started);
        self.status.ready = self.running && started && ready;
    }

    fn waiting_now(&self) -> bool {
        self.status
            .state
            .as_ref()
            .is_some_and(|s| s.waiting.is_some())
    }

    fn restarted_before(&self) -> bool {
        self.status
            .last_state
            .as_ref()
            .is_some_and(|s| s.terminated.is_some())
    }
}

/// `10s`, `1m20s`, as Kubernetes prints back-off delays.
fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{secs}s"),
        _ if secs.is_multiple_of(60) => format!("{}m", secs / 60),
        _ => format!("{}m{}s", secs / 60, secs % 60),
    }
}

/// What the kubelet saw of a pod.
#[derive(Debug, Default)]
pub struct Observed {
    /// Its init containers, up to the one not done.
    pub init: Vec<ContainerView>,
    /// Whether every init container succeeded.
    pub initialized: bool,
    /// Its containers.
    pub containers: Vec<ContainerView>,
    /// Its address.
    pub pod_ip: Option<String>,
    /// The node's address.
    pub host_ip: String,
    /// `spec.restartPolicy`.
    pub restart_policy: String,
}

/// The phase by Kubernetes' rules (`getPhase`).
fn phase(observed: &Observed) -> &'static str {
    if !observed.initialized {
        let failed = observed
            .init
            .iter()
            .any(|c| c.finished.is_some_and(|code| code != 0));
        return if failed { "Failed" } else { "Pending" };
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &observed.containers {
        if c.running {
            running += 1;
        } else if c.waiting_now() {
            if c.restarted_before() {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            stopped += 1;
            if c.finished == Some(0) {
                succeeded += 1;
            }
        }
    }
    match () {
        () if waiting > 0 => "Pending",
        () if running > 0 => "Running",
        () if stopped > 0 => match observed.restart_policy.as_str() {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        },
        () => "Pending",
    }
}

/// The pod's status from what was observed, keeping the start time and
/// the conditions' transition times of `pod`'s current status.
pub fn pod_status(pod: &Pod, observed: &Observed) -> PodStatus {
    let current = pod.status.clone().unwrap_or_default();
    let ready = observed.initialized
        && !observed.containers.is_empty()
        && observed.containers.iter().all(|c| c.status.ready);
    let truth = |b: bool| if b { "True" } else { "False" };
    let condition = |type_: &str, status: &str, reason: Option<&str>| {
        let since = current
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(now);
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.map(str::to_string),
            last_transition_time: Some(since),
            ..PodCondition::default()
        }
    };
    let unready = (!ready).then_some("ContainersNotReady");
    let conditions = vec![
        condition("PodScheduled", "True", None),
        condition(
            "Initialized",
            truth(observed.initialized),
            (!observed.initialized).then_some("ContainersNotInitialized"),
        ),
        condition("ContainersReady", truth(ready), unready),
        condition("Ready", truth(ready), unready),
    ];
    let statuses = |views: &[ContainerView]| {
        let list: Vec<ContainerStatus> = views.iter().map(|v| v.status.clone()).collect();
        (!list.is_empty()).then_some(list)
    };
    PodStatus {
        phase: Some(phase(observed).into()),
        conditions: Some(conditions),
        host_ip: Some(observed.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: observed.host_ip.clone(),
        }]),
        pod_ip: observed.pod_ip.clone(),
        pod_ips: observed.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: current.start_time.clone().or_else(|| Some(now())),
        init_container_statuses: statuses(&observed.init),
        container_statuses: statuses(&observed.containers),
        qos_class: current.qos_class.clone(),
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> ExitRecord {
        ExitRecord {
            exit_code: code,
            signal: None,
            finished_at: "2026-01-01T00:00:00.5Z".into(),
            oom_killed: false,
            error: None,
        }
    }

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some("bb".into()),
            ..Container::default()
        }
    }

    #[test]
    fn phase_follows_kubernetes_rules() {
        let dir = Path::new("/nonexistent");
        let done =
            |code| ContainerView::exited(&container("a"), 0, dir, None, &exit(code), None, None);
        let mut observed = Observed {
            initialized: true,
            restart_policy: "Never".into(),
            containers: vec![done(0)],
            ..Observed::default()
        };
        assert_eq!(phase(&observed), "Succeeded");
        observed.containers.push(done(1));
        assert_eq!(phase(&observed), "Failed");
        observed.restart_policy = "Always".into();
        assert_eq!(phase(&observed), "Running");
        let crashing = ContainerView::exited(
            &container("b"),
            2,
            dir,
            None,
            &exit(1),
            None,
            Some(Duration::from_secs(20)),
        );
        observed.containers = vec![crashing];
        assert_eq!(
            phase(&observed),
            "Running",
            "a crash loop is Running with a waiting container"
        );
        observed.containers = vec![ContainerView::waiting(
            &container("c"),
            0,
            "ErrImagePull",
            "x",
        )];
        assert_eq!(phase(&observed), "Pending");
    }

    #[test]
    fn timestamps_are_whole_seconds_so_a_status_compares_equal() {
        let t = time("2026-01-01T00:00:00.999Z").unwrap();
        assert_eq!(t.0.to_string(), "2026-01-01T00:00:00Z");
        assert_eq!(humanize(Duration::from_secs(80)), "1m20s");
    }
}
