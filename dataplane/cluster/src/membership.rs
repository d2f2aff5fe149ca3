//! Membership: which storage members exist, where they listen, whether they are ready and
//! whether they are leaving.
//!
//! Every source publishes a [`MemberList`] through a `tokio::sync::watch` channel; consumers
//! (the replication client, the query fan-out, anti-entropy) only ever read that channel, so
//! they do not know whether members come from a static list, a members file (`up`, tests) or
//! Kubernetes EndpointSlices (the operator's data-plane side). A source only reports what it
//! is told; liveness as seen by this node is the replication client's business.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

/// A storage member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Member {
    /// Stable identity (the pod name in Kubernetes): ring placement depends on it.
    pub id: String,
    /// `host:port` of the member's cluster (internal) API.
    pub addr: String,
    /// Whether the member reports ready. Not-ready members keep their ring position; writes
    /// to them go to fallbacks with a hint.
    #[serde(default = "default_true")]
    pub ready: bool,
    /// Set when the member is being removed: it leaves the ring, hands its data to the new
    /// owners, and reports drained.
    #[serde(default)]
    pub leaving: bool,
}

fn default_true() -> bool {
    true
}

/// A snapshot of the membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberList {
    pub members: Vec<Member>,
}

impl MemberList {
    pub fn new(mut members: Vec<Member>) -> MemberList {
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members.dedup_by(|a, b| a.id == b.id);
        MemberList { members }
    }

    /// Ids of the members that own data: every member not leaving.
    pub fn ring_ids(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| !m.leaving)
            .map(|m| m.id.clone())
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Whether member `id` is listed and marked leaving.
    pub fn is_leaving(&self, id: &str) -> bool {
        self.get(id).is_some_and(|m| m.leaving)
    }

    /// Parses a members file: YAML `members: [{id, addr, ready?, leaving?}]`.
    pub fn from_yaml(text: &str) -> Result<MemberList, MembershipError> {
        let list: MemberList = serde_yaml::from_str(text).map_err(MembershipError::Parse)?;
        for member in &list.members {
            if member.id.is_empty() {
                return Err(MembershipError::Invalid("a member has an empty id".into()));
            }
            if member.addr.rsplit_once(':').is_none() {
                return Err(MembershipError::Invalid(format!(
                    "member {}: addr {:?} is not host:port",
                    member.id, member.addr
                )));
            }
        }
        Ok(MemberList::new(list.members))
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot read members file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("members file is not valid YAML")]
    Parse(#[source] serde_yaml::Error),
    #[error("members file: {0}")]
    Invalid(String),
}

/// The receiving end every consumer holds.
pub type Members = watch::Receiver<Arc<MemberList>>;

/// A fixed member list (flags or configuration).
pub fn static_members(list: MemberList) -> (watch::Sender<Arc<MemberList>>, Members) {
    watch::channel(Arc::new(list))
}

/// Reads a members file once.
pub fn read_members_file(path: &Path) -> Result<MemberList, MembershipError> {
    let text = std::fs::read_to_string(path).map_err(|source| MembershipError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    MemberList::from_yaml(&text)
}

/// Watches a members file: publishes its content now and whenever it changes. A file that
/// cannot be read or parsed keeps the last good list (and says so once per change).
pub fn watch_members_file(
    path: PathBuf,
    poll: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Members, MembershipError> {
    // One read gives both the first list and the baseline for change detection, so a change
    // made right after this call is never mistaken for the baseline.
    let text = std::fs::read_to_string(&path).map_err(|source| MembershipError::Read {
        path: path.clone(),
        source,
    })?;
    let initial = MemberList::from_yaml(&text)?;
    let (tx, rx) = watch::channel(Arc::new(initial));
    tokio::spawn(async move {
        tokio::pin!(stop);
        let mut last_text = text;
        let mut ticker = tokio::time::interval(poll);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = &mut stop => return,
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if text == last_text {
                continue;
            }
            last_text = text;
            match MemberList::from_yaml(&last_text) {
                Ok(list) => {
                    if **tx.borrow() != list {
                        info!(members = list.members.len(), path = %path.display(), "membership changed");
                        tx.send_replace(Arc::new(list));
                    }
                }
                Err(error) => {
                    warn!(%error, path = %path.display(), "members file ignored; keeping the last good list")
                }
            }
        }
    });
    Ok(rx)
}

/// Writes a members file atomically (write to a temporary file, then rename), so a watcher
/// never reads half a file.
pub fn write_members_file(path: &Path, list: &MemberList) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, list.to_yaml())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, port: u16) -> Member {
        Member {
            id: id.into(),
            addr: format!("127.0.0.1:{port}"),
            ready: true,
            leaving: false,
        }
    }

    #[test]
    fn members_file_round_trips_and_leaving_members_leave_the_ring() {
        let mut list = MemberList::new(vec![member("b", 2), member("a", 1)]);
        list.members[1].leaving = true;
        let parsed = MemberList::from_yaml(&list.to_yaml()).expect("round trip");
        assert_eq!(parsed, list);
        assert_eq!(parsed.ring_ids(), vec!["a".to_string()]);
        let minimal = MemberList::from_yaml("members:\n- {id: s-0, addr: '127.0.0.1:7000'}\n")
            .expect("defaults");
        assert!(minimal.members[0].ready && !minimal.members[0].leaving);
    }

    #[test]
    fn bad_members_files_are_refused_with_the_reason() {
        let error =
            MemberList::from_yaml("members:\n- {id: s-0, addr: nowhere}\n").expect_err("no port");
        assert!(error.to_string().contains("not host:port"), "{error}");
        assert!(MemberList::from_yaml("members: [{id: x}]").is_err());
        assert!(MemberList::from_yaml("members:\n- {id: x, addr: 'h:1', color: red}\n").is_err());
    }

    #[tokio::test]
    async fn a_watched_file_publishes_changes_and_keeps_the_last_good_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("members.yaml");
        write_members_file(&path, &MemberList::new(vec![member("a", 1)])).expect("write");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut rx = watch_members_file(path.clone(), Duration::from_millis(20), async move {
            let _ = stop_rx.await;
        })
        .expect("watch");
        assert_eq!(rx.borrow().members.len(), 1);
        write_members_file(
            &path,
            &MemberList::new(vec![member("a", 1), member("b", 2)]),
        )
        .expect("write");
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("change seen")
            .expect("sender alive");
        assert_eq!(
            rx.borrow().ring_ids(),
            vec!["a".to_string(), "b".to_string()]
        );
        std::fs::write(&path, "members: [{{{").expect("write garbage");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            rx.borrow().members.len(),
            2,
            "garbage keeps the last good list"
        );
        let _ = stop_tx.send(());
    }
}
