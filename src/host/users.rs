//! The node's user database: a Marathon task runs as a user named in its definition, and
//! the volume it is given must be that user's to write (as Mesos makes persistent volumes).

use nix::unistd::User;

use super::HostError;

/// A user's uid and primary gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// Looks `name` up through the C library (`/etc/passwd`, NSS); `None` when no such user
/// exists on this node.
pub fn account(name: &str) -> Result<Option<Account>, HostError> {
    match User::from_name(name) {
        Ok(found) => Ok(found.map(|u| Account {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })),
        Err(e) => Err(HostError::Unsupported(format!(
            "looking up user {name:?}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_a_missing_user() {
        assert_eq!(account("root").unwrap(), Some(Account { uid: 0, gid: 0 }));
        assert_eq!(account("no-such-user-berth-test").unwrap(), None);
    }
}
