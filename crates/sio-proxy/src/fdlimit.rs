//! Open-files limit: every proxied session holds two descriptors (client and backend), so the
//! soft limit is raised to the hard limit at start-up.

/// The soft and hard limits before and after [`raise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimits {
    /// Soft limit found at start-up.
    pub soft_before: u64,
    /// Soft limit now in force.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and logs both.
pub fn raise() -> std::io::Result<FdLimits> {
    let (soft_before, hard) = rlimit::Resource::NOFILE.get()?;
    let soft = if soft_before < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
        rlimit::Resource::NOFILE.get()?.0
    } else {
        soft_before
    };
    tracing::info!(soft_before, soft, hard, "open files limit");
    Ok(FdLimits {
        soft_before,
        soft,
        hard,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn soft_limit_reaches_the_hard_limit() {
        let limits = super::raise().expect("rlimit");
        assert_eq!(limits.soft, limits.hard);
        assert!(limits.soft >= limits.soft_before);
    }
}
