//! The data plane's Kubernetes side: ring membership from the EndpointSlices of the storage
//! headless Service ([`members`]), LogSchema resources into the schema registry
//! ([`schemas`]), and Lease leader election ([`lease`], shared with the operator).
//!
//! Everything else in the data plane is independent of where members and schemas come from:
//! these sources feed the same `watch` channel and the same registry path as the members file
//! and the schema folder.

pub mod lease;
pub mod members;
pub mod schemas;

use std::collections::BTreeMap;

use kube::runtime::watcher::Event;

/// The objects a watch has seen, keyed by namespace/name, kept complete across re-lists: a
/// re-list is buffered and swapped in at `InitDone`, so a consumer never sees a half-listed
/// set. (kube's reflector plus `touched_objects` hides `InitDone`, so a consumer recomputing
/// on each touched object would see the empty store of the initial list and nothing after.)
#[derive(Debug)]
pub struct WatchedSet<K> {
    objects: BTreeMap<String, K>,
    relisting: Option<BTreeMap<String, K>>,
    /// Whether a first complete list has arrived.
    pub synced: bool,
}

impl<K> Default for WatchedSet<K> {
    fn default() -> Self {
        WatchedSet {
            objects: BTreeMap::new(),
            relisting: None,
            synced: false,
        }
    }
}

impl<K: kube::ResourceExt> WatchedSet<K> {
    fn key(object: &K) -> String {
        format!(
            "{}/{}",
            object.namespace().unwrap_or_default(),
            object.name_any()
        )
    }

    /// Applies one watch event; true when the complete set changed (or became known).
    pub fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                if let Some(buffer) = self.relisting.as_mut() {
                    buffer.insert(Self::key(&object), object);
                }
                false
            }
            Event::InitDone => {
                if let Some(buffer) = self.relisting.take() {
                    self.objects = buffer;
                }
                self.synced = true;
                true
            }
            Event::Apply(object) => {
                self.objects.insert(Self::key(&object), object);
                self.synced
            }
            Event::Delete(object) => {
                self.objects.remove(&Self::key(&object));
                self.synced
            }
        }
    }

    pub fn objects(&self) -> impl Iterator<Item = &K> {
        self.objects.values()
    }
}
