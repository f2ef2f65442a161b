//! A client profile: where a node is and the TLS identity to reach it with, kept as a
//! TOML file (`profile.toml`) that a standalone node writes for its local clients.
//!
//! ```toml
//! endpoint = "127.0.0.1:9190"
//! server_name = "localhost"
//! ca = "ca.pem"          # relative paths are relative to the profile's directory
//! cert = "client.pem"
//! key = "client.key"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tls::Identity;

/// What loading or saving a profile can fail with; every error names the file.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The profile file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid profile.
    #[error("{path}: {message}")]
    Parse {
        /// The profile file.
        path: PathBuf,
        /// What is wrong, with the line where toml can tell.
        message: String,
    },
}

/// How a client reaches a node: its address, the name in its certificate, and the
/// client's TLS identity (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientProfile {
    /// The node's QUIC address.
    pub endpoint: SocketAddr,
    /// A name in the node's certificate (DNS name or IP address).
    pub server_name: String,
    /// The CA that signed the node's certificate.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// The client certificate's private key.
    pub key: PathBuf,
}

impl ClientProfile {
    /// Reads the profile at `path`. Relative certificate paths are taken relative to
    /// the profile file's directory; unknown keys are refused.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ProfileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut p: ClientProfile = toml::from_str(&text).map_err(|e| ProfileError::Parse {
            path: path.to_path_buf(),
            message: match e.span() {
                Some(span) => format!("line {}: {}", line_of(&text, span.start), e.message()),
                None => e.message().to_string(),
            },
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for f in [&mut p.ca, &mut p.cert, &mut p.key] {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        Ok(p)
    }

    /// Writes the profile to `path` (creating its directory), replacing the file
    /// atomically so a reader never sees half of it.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ProfileError> {
        let path = path.as_ref();
        let io = |source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = toml::to_string(self).map_err(|e| ProfileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(io)
    }

    /// The client's TLS identity, for [`crate::tls::client_config`].
    pub fn identity(&self) -> Identity {
        Identity {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// The 1-based line of byte `offset` in `text`: where configuration errors point
/// (toml reports byte spans).
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Where a standalone node keeps its data by default: `$TRIBUTARY_DATA_DIR` if set,
/// else `$XDG_DATA_HOME/tributary/standalone`, else
/// `$HOME/.local/share/tributary/standalone` (relative to the working directory if
/// `HOME` is not set either).
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = env_path("TRIBUTARY_DATA_DIR") {
        return d;
    }
    data_home().join("tributary").join("standalone")
}

/// `$XDG_DATA_HOME`, else `~/.local/share`: where a user's nodes keep their data by
/// default (`tributary/standalone`, `tributary/edge`).
pub fn data_home() -> PathBuf {
    env_path("XDG_DATA_HOME").unwrap_or_else(|| {
        env_path("HOME")
            .unwrap_or_default()
            .join(".local")
            .join("share")
    })
}

/// Where clients look for their profile by default: `$TRIB_PROFILE` if set, else
/// `client/profile.toml` in [`default_data_dir`] (where a standalone node writes it).
pub fn default_profile_path() -> PathBuf {
    env_path("TRIB_PROFILE")
        .unwrap_or_else(|| default_data_dir().join("client").join("profile.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> ClientProfile {
        ClientProfile {
            endpoint: ([127, 0, 0, 1], 9190).into(),
            server_name: "localhost".into(),
            ca: dir.join("ca.pem"),
            cert: dir.join("client.pem"),
            key: dir.join("client.key"),
        }
    }

    #[test]
    fn save_then_load_gives_the_same_profile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = sample(dir.path());
        let path = dir.path().join("client").join("profile.toml");
        p.save(&path).expect("save");
        assert_eq!(ClientProfile::load(&path).expect("load"), p);
        assert_eq!(
            p.identity(),
            Identity {
                ca: p.ca.clone(),
                cert: p.cert.clone(),
                key: p.key.clone()
            }
        );
    }

    #[test]
    fn relative_paths_are_relative_to_the_profile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("profile.toml");
        std::fs::write(
            &path,
            "endpoint = \"[::1]:9\"\nserver_name = \"n\"\nca = \"ca.pem\"\n\
             cert = \"sub/c.pem\"\nkey = \"/abs/c.key\"\n",
        )
        .expect("write");
        let p = ClientProfile::load(&path).expect("load");
        assert_eq!(p.endpoint, "[::1]:9".parse().expect("addr"));
        assert_eq!(p.ca, dir.path().join("ca.pem"));
        assert_eq!(p.cert, dir.path().join("sub/c.pem"));
        assert_eq!(p.key, PathBuf::from("/abs/c.key"));
    }

    #[test]
    fn unknown_keys_are_refused_naming_file_key_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("profile.toml");
        sample(dir.path()).save(&path).expect("save");
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("colour = \"blue\"\n");
        std::fs::write(&path, &text).expect("write");
        let err = ClientProfile::load(&path).expect_err("unknown key accepted");
        let msg = err.to_string();
        assert!(msg.contains("profile.toml"), "{msg}");
        assert!(msg.contains("colour"), "{msg}");
        assert!(msg.contains("line 6"), "{msg}");
    }

    #[test]
    fn default_paths_follow_the_environment() {
        // The only test touching these variables; restored at the end.
        let vars = [
            "TRIBUTARY_DATA_DIR",
            "XDG_DATA_HOME",
            "HOME",
            "TRIB_PROFILE",
        ];
        let saved: Vec<_> = vars.iter().map(std::env::var_os).collect();
        for v in vars {
            std::env::remove_var(v);
        }
        std::env::set_var("HOME", "/home/u");
        assert_eq!(
            default_data_dir(),
            PathBuf::from("/home/u/.local/share/tributary/standalone")
        );
        std::env::set_var("XDG_DATA_HOME", "/xdg");
        assert_eq!(
            default_data_dir(),
            PathBuf::from("/xdg/tributary/standalone")
        );
        std::env::set_var("TRIBUTARY_DATA_DIR", "/data");
        assert_eq!(default_data_dir(), PathBuf::from("/data"));
        assert_eq!(
            default_profile_path(),
            PathBuf::from("/data/client/profile.toml")
        );
        std::env::set_var("TRIB_PROFILE", "/p.toml");
        assert_eq!(default_profile_path(), PathBuf::from("/p.toml"));
        for (v, old) in vars.iter().zip(saved) {
            match old {
                Some(o) => std::env::set_var(v, o),
                None => std::env::remove_var(v),
            }
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = ClientProfile::load("/nonexistent/profile.toml").expect_err("loaded");
        assert!(
            err.to_string().contains("/nonexistent/profile.toml"),
            "{err}"
        );
    }
}
