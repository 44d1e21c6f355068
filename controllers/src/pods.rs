//! What the control loops read off a pod: whether it counts, is ready, is
//! available; and the timestamps they compare.

use std::time::Duration;

use orca_core::api::CompactPod;

/// A pod that counts towards its owner's replicas: not being deleted and
/// not finished.
pub fn is_active(pod: &CompactPod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// The time the pod's Ready condition turned true, if it is true.
pub fn ready_since(pod: &CompactPod) -> Option<jiff::Timestamp> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if condition.status != "True" {
        return None;
    }
    Some(
        condition
            .last_transition_time
            .as_ref()
            .map_or(jiff::Timestamp::UNIX_EPOCH, |t| t.0),
    )
}

/// Whether the pod's Ready condition is true.
pub fn is_ready(pod: &CompactPod) -> bool {
    ready_since(pod).is_some()
}

/// Whether the pod has been ready for `min_ready` by `now`; otherwise, when
/// it is ready but not yet for long enough, how long until it will be.
pub fn availability(
    pod: &CompactPod,
    min_ready: Duration,
    now: jiff::Timestamp,
) -> Result<(), Option<Duration>> {
    let Some(since) = ready_since(pod) else {
        return Err(None);
    };
    let ready_for = now.duration_since(since);
    let min = jiff::SignedDuration::try_from(min_ready).unwrap_or(jiff::SignedDuration::MAX);
    if ready_for >= min {
        Ok(())
    } else {
        Err(Some(
            Duration::try_from(min - ready_for).unwrap_or(Duration::ZERO),
        ))
    }
}
