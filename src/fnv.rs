//! FNV-1a, 64 bits: a stable hash for names (GraphiQL's asset names, its
//! saved-state key). `build.rs` includes this same file, so the names it
//! writes and the test that checks them hash alike.

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
