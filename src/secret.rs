//! Secrets that redact themselves, and the platform token that follows its
//! mounted file (a Kubernetes Secret rotates by swapping a symlink, so the file
//! is re-read by content, not watched by inode).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A string that never shows itself in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Reads a secret file: surrounding whitespace ignored, empty refused.
pub fn read_secret_file(path: &std::path::Path) -> Result<Secret, String> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value = raw.trim();
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(value))
}

/// A value read from a mounted file and re-read every so often. A Kubernetes
/// Secret rotates by swapping a symlink, so the file is read again by path and
/// compared by content rather than watched by inode. A failed read keeps the
/// last good value: a rotation in progress must not take the gateway down.
pub struct Watched<T> {
    current: Arc<RwLock<Arc<T>>>,
    source: Option<(PathBuf, Reader<T>)>,
}

/// Reads and validates the file's content.
type Reader<T> = fn(&Path) -> Result<T, String>;

impl<T> Clone for Watched<T> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
            source: self.source.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("file", &self.source.as_ref().map(|s| &s.0))
            .finish_non_exhaustive()
    }
}

impl<T: PartialEq + Send + Sync + 'static> Watched<T> {
    pub fn fixed(value: T) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(value))),
            source: None,
        }
    }

    pub fn load(path: PathBuf, read: Reader<T>) -> Result<Self, String> {
        let value = read(&path)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(value))),
            source: Some((path, read)),
        })
    }

    pub fn get(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the file every `every` until the process ends; `what` names
    /// the value in logs (never the value itself).
    pub fn spawn_reload(&self, every: Duration, what: &'static str) {
        let Some((path, read)) = self.source.clone() else {
            return;
        };
        let current = self.current.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match read(&path) {
                    Ok(fresh) => {
                        let mut guard = current.write().unwrap_or_else(|p| p.into_inner());
                        if **guard != fresh {
                            *guard = Arc::new(fresh);
                            tracing::info!(file = %path.display(), "{what} reloaded");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "{what} file unreadable or invalid; keeping the previous one")
                    }
                }
            }
        });
    }
}

/// The platform token, fixed or following its file.
pub type TokenSource = Watched<Secret>;

impl TokenSource {
    pub fn from_file(path: PathBuf) -> Result<Self, String> {
        Self::load(path, read_secret_file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("s3cr3t-token");
        assert!(!format!("{s:?}").contains("s3cr3t"));
        assert!(!format!("{:?}", TokenSource::fixed(s)).contains("s3cr3t"));
    }

    #[test]
    fn token_files_are_trimmed_and_empty_ones_refused() {
        let dir = std::env::temp_dir().join(format!("vg-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "  abc\n").unwrap();
        assert_eq!(read_secret_file(&f).unwrap().expose(), "abc");
        std::fs::write(&f, " \n").unwrap();
        assert!(read_secret_file(&f).unwrap_err().contains("empty"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rotated_file_is_picked_up() {
        let dir = std::env::temp_dir().join(format!("vg-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "old").unwrap();
        let source = TokenSource::from_file(f.clone()).unwrap();
        source.spawn_reload(Duration::from_secs(10), "token");
        std::fs::write(&f, "new\n").unwrap();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            tokio::task::yield_now().await;
        }
        assert_eq!(source.get().expose(), "new");
    }
}
