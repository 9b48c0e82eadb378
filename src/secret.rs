//! Secrets that redact themselves, and the platform token that follows its
//! mounted file (a Kubernetes Secret rotates by swapping a symlink, so the file
//! is re-read by content, not watched by inode).

use std::path::PathBuf;
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

/// The platform token, fixed or re-read from its file.
#[derive(Clone, Debug)]
pub struct TokenSource {
    current: Arc<RwLock<Secret>>,
    file: Option<PathBuf>,
}

impl TokenSource {
    pub fn fixed(token: Secret) -> Self {
        Self {
            current: Arc::new(RwLock::new(token)),
            file: None,
        }
    }

    pub fn from_file(path: PathBuf) -> Result<Self, String> {
        let token = read_secret_file(&path)?;
        Ok(Self {
            current: Arc::new(RwLock::new(token)),
            file: Some(path),
        })
    }

    pub fn get(&self) -> Secret {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the file every `every` until the process ends. A failed read
    /// keeps the last good token: a rotation in progress must not take the
    /// gateway down.
    pub fn spawn_reload(&self, every: Duration) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let current = self.current.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match read_secret_file(&path) {
                    Ok(token) => {
                        let mut guard = current.write().unwrap_or_else(|p| p.into_inner());
                        if *guard != token {
                            *guard = token;
                            tracing::info!(file = %path.display(), "upstream token reloaded");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "upstream token file unreadable; keeping the previous token")
                    }
                }
            }
        });
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
        source.spawn_reload(Duration::from_secs(10));
        std::fs::write(&f, "new\n").unwrap();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            tokio::task::yield_now().await;
        }
        assert_eq!(source.get().expose(), "new");
    }
}
