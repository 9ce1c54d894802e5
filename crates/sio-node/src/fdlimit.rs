//! Open-files limit: every connection holds a descriptor, so raise the soft limit to the hard
//! one at start-up and say what the ceiling is.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns `(soft, hard)` after the change.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    let (soft_after, hard_after) = rlimit::Resource::NOFILE.get()?;
    tracing::info!(
        soft_before = soft,
        soft = soft_after,
        hard = hard_after,
        "open-files limit (each connection holds one descriptor)"
    );
    Ok((soft_after, hard_after))
}
