//! gate-sync: merges the scan logs of every gate and flags tickets admitted
//! twice. Not built yet: this crate holds the place in the workspace until the
//! sync issue lands (see `ARCHITECTURE.md`).
