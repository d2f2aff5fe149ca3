//! Storage scaling without data loss (pure decisions; the reconciler does the I/O).
//!
//! Scale-up raises the StatefulSet at once: new members join the ring and streams move to
//! them. Scale-down first marks the leaving members (the highest ordinals, which a
//! StatefulSet removes first) in the ring configuration; they hand their data to the new
//! owners; only when every leaving member reports `drained` does the StatefulSet shrink.

use crate::build::StoragePlan;

/// Where a scale-down stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing to do: the StatefulSet has the desired size.
    Steady,
    /// Growing: the StatefulSet is raised now.
    ScalingUp,
    /// Members are marked leaving and still handing over.
    Draining { waiting_for: Vec<String> },
    /// Every leaving member drained: the StatefulSet shrinks now.
    Shrinking,
}

/// Decides the StatefulSet size and the leaving members.
///
/// `current` is the StatefulSet's replicas as observed (None before it exists); `drained`
/// answers, for a leaving pod, whether its drain status says it handed everything over
/// (None when it could not be asked).
pub fn plan(
    pod_name: impl Fn(i32) -> String,
    desired: i32,
    current: Option<i32>,
    drained: impl Fn(&str) -> Option<bool>,
) -> (StoragePlan, Phase) {
    let current = current.unwrap_or(desired);
    if desired >= current {
        let phase = if desired > current {
            Phase::ScalingUp
        } else {
            Phase::Steady
        };
        return (
            StoragePlan {
                statefulset_replicas: desired,
                leaving: Vec::new(),
            },
            phase,
        );
    }
    let leaving: Vec<String> = (desired..current).map(&pod_name).collect();
    let waiting_for: Vec<String> = leaving
        .iter()
        .filter(|pod| drained(pod) != Some(true))
        .cloned()
        .collect();
    if waiting_for.is_empty() {
        (
            StoragePlan {
                statefulset_replicas: desired,
                leaving,
            },
            Phase::Shrinking,
        )
    } else {
        (
            StoragePlan {
                statefulset_replicas: current,
                leaving,
            },
            Phase::Draining { waiting_for },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(i: i32) -> String {
        format!("lc-storage-{i}")
    }

    #[test]
    fn scale_up_is_immediate() {
        let (p, phase) = plan(pod, 5, Some(3), |_| None);
        assert_eq!(
            (p.statefulset_replicas, p.leaving.len(), phase),
            (5, 0, Phase::ScalingUp)
        );
        let (p, phase) = plan(pod, 3, None, |_| None);
        assert_eq!((p.statefulset_replicas, phase), (3, Phase::Steady));
    }

    #[test]
    fn scale_down_marks_then_waits_then_shrinks() {
        // Mark: nothing drained yet; the StatefulSet keeps its size.
        let (p, phase) = plan(pod, 3, Some(5), |_| Some(false));
        assert_eq!(p.statefulset_replicas, 5);
        assert_eq!(p.leaving, ["lc-storage-3", "lc-storage-4"]);
        assert_eq!(
            phase,
            Phase::Draining {
                waiting_for: vec![pod(3), pod(4)]
            }
        );
        // One drained, one unreachable: still waiting for the unreachable one.
        let (p, phase) = plan(pod, 3, Some(5), |name| {
            (name == "lc-storage-3").then_some(true)
        });
        assert_eq!(p.statefulset_replicas, 5);
        assert_eq!(
            phase,
            Phase::Draining {
                waiting_for: vec![pod(4)]
            }
        );
        // Both drained: shrink, still marked leaving until they are gone.
        let (p, phase) = plan(pod, 3, Some(5), |_| Some(true));
        assert_eq!((p.statefulset_replicas, phase), (3, Phase::Shrinking));
        assert_eq!(p.leaving.len(), 2);
    }
}
