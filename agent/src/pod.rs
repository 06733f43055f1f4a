//! The containers of one VM: one, or a pod's sandbox (the first created)
//! and its members. Requests that name no container mean the first; only
//! members can be removed (the first goes with the VM).

use std::collections::HashMap;

use crate::error::StepError;

/// Most containers one VM holds (the sandbox and its members): the host
/// has fewer layer-disk slots than this; it bounds what a host can make
/// the agent hold.
pub const MAX_CONTAINERS: usize = 16;

pub struct Containers<C> {
    first: Option<String>,
    by_id: HashMap<String, C>,
}

impl<C> Default for Containers<C> {
    fn default() -> Self {
        Self {
            first: None,
            by_id: HashMap::new(),
        }
    }
}

impl<C> Containers<C> {
    /// Whether a container `id` may be created now: the first names no
    /// sandbox; every later one is a member of the first.
    pub fn check_create(&self, id: &str, sandbox: Option<&str>) -> Result<(), StepError> {
        if self.by_id.contains_key(id) {
            return Err(StepError::new(
                "create",
                format!("container {id} already exists"),
            ));
        }
        match (&self.first, sandbox) {
            (None, None) => Ok(()),
            (None, Some(sandbox)) => Err(StepError::new(
                "create",
                format!("no sandbox {sandbox} in this VM to join"),
            )),
            (Some(_), None) => Err(StepError::new("create", "a container already exists")),
            (Some(first), Some(sandbox)) if first != sandbox => Err(StepError::new(
                "create",
                format!("{sandbox} is not this VM's sandbox ({first} is)"),
            )),
            (Some(_), Some(_)) if self.by_id.len() >= MAX_CONTAINERS => Err(StepError::new(
                "create",
                format!("a VM holds at most {MAX_CONTAINERS} containers"),
            )),
            (Some(_), Some(_)) => Ok(()),
        }
    }

    /// Adds a container that passed [`Self::check_create`].
    pub fn insert(&mut self, id: String, container: C) {
        if self.first.is_none() {
            self.first = Some(id.clone());
        }
        self.by_id.insert(id, container);
    }

    /// The id `name` stands for (`None`: the first container).
    pub fn resolve<'a>(&'a self, name: Option<&'a str>) -> Option<&'a str> {
        match name {
            Some(id) => self.by_id.contains_key(id).then_some(id),
            None => self.first.as_deref(),
        }
    }

    pub fn get(&self, name: Option<&str>, step: &str) -> Result<&C, StepError> {
        let id = self.resolve(name).map(str::to_owned);
        id.and_then(|id| self.by_id.get(&id))
            .ok_or_else(|| not_found(name, step))
    }

    pub fn get_mut(&mut self, name: Option<&str>, step: &str) -> Result<&mut C, StepError> {
        let id = self.resolve(name).map(str::to_owned);
        match id {
            Some(id) => self.by_id.get_mut(&id).ok_or_else(|| not_found(name, step)),
            None => Err(not_found(name, step)),
        }
    }

    /// Checks that `id` is a member (not the first container).
    pub fn check_member(&self, id: &str) -> Result<(), StepError> {
        if self.first.as_deref() == Some(id) {
            return Err(StepError::new(
                "remove container",
                "the VM's first container goes with the VM (shut it down)",
            ));
        }
        if !self.by_id.contains_key(id) {
            return Err(not_found(Some(id), "remove container"));
        }
        Ok(())
    }

    /// Takes a member out (see [`Self::check_member`]).
    pub fn remove_member(&mut self, id: &str) -> Result<C, StepError> {
        self.check_member(id)?;
        self.by_id
            .remove(id)
            .ok_or_else(|| not_found(Some(id), "remove container"))
    }

    pub fn values(&self) -> impl Iterator<Item = &C> {
        self.by_id.values()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

fn not_found(name: Option<&str>, step: &str) -> StepError {
    match name {
        Some(id) => StepError::new(step, format!("no container {id}")),
        None => StepError::new(step, "no container"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_container_is_the_default_and_members_join_it() {
        let mut pod = Containers::default();
        assert!(pod.get(None, "start").is_err());
        assert!(
            pod.check_create("app", Some("pod")).is_err(),
            "no sandbox yet"
        );
        pod.check_create("pod", None).unwrap();
        pod.insert("pod".into(), 1);
        assert_eq!(*pod.get(None, "stats").unwrap(), 1);
        assert!(
            pod.check_create("other", None).is_err(),
            "a second lone container"
        );
        assert!(
            pod.check_create("app", Some("nope")).is_err(),
            "wrong sandbox"
        );
        assert!(
            pod.check_create("pod", Some("pod")).is_err(),
            "duplicate id"
        );
        pod.check_create("app", Some("pod")).unwrap();
        pod.insert("app".into(), 2);
        assert_eq!(*pod.get(Some("app"), "stats").unwrap(), 2);
        assert_eq!(*pod.get(None, "stats").unwrap(), 1);
        *pod.get_mut(Some("app"), "start").unwrap() = 3;
        assert_eq!(*pod.get(Some("app"), "stats").unwrap(), 3);
        let err = pod.get(Some("gone"), "stats").unwrap_err();
        assert!(err.to_string().contains("no container gone"), "{err}");
    }

    #[test]
    fn only_members_are_removed_and_their_ids_come_free() {
        let mut pod = Containers::default();
        pod.insert("pod".into(), 1);
        pod.insert("app".into(), 2);
        assert!(pod.remove_member("pod").is_err());
        assert!(pod.remove_member("nope").is_err());
        assert_eq!(pod.remove_member("app").unwrap(), 2);
        assert_eq!(pod.len(), 1);
        assert!(pod.get(Some("app"), "stats").is_err());
        pod.check_create("app", Some("pod")).unwrap();
    }

    #[test]
    fn a_vm_holds_a_bounded_number_of_containers() {
        let mut pod = Containers::default();
        pod.insert("pod".into(), 0);
        for i in 1..MAX_CONTAINERS {
            let id = format!("m{i}");
            pod.check_create(&id, Some("pod")).unwrap();
            pod.insert(id, i);
        }
        let err = pod.check_create("one-more", Some("pod")).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
    }
}
