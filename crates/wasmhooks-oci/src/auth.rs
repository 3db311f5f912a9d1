//! Registry credentials: the operator's `[registry."HOST"]` table, else the
//! standard Docker config file (`$DOCKER_CONFIG/config.json`, or
//! `~/.docker/config.json`), else anonymous. Only a file's `auths` entries
//! are read: a credential helper would be a command to run, and the host
//! runs none.

use std::path::PathBuf;

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::RegistryConfig;

/// The most of a Docker config file read.
const MAX_DOCKER_CONFIG: u64 = 1 << 20;

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// `host`'s entry in the Docker config, matched as Docker matches it: the
/// host itself, or a URL whose host it is.
fn from_docker(host: &str) -> Option<RegistryAuth> {
    let bytes = wasmhooks::read_regular(&docker_config_path()?, MAX_DOCKER_CONFIG).ok()?;
    let config: DockerConfig = serde_json::from_slice(&bytes).ok()?;
    let entry = config.auths.iter().find_map(|(key, auth)| {
        let bare = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        (bare == host).then_some(auth)
    })?;
    if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
        return Some(RegistryAuth::Basic(user.clone(), pass.clone()));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.auth.as_deref()?.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some(RegistryAuth::Basic(user.to_owned(), pass.to_owned()))
}

/// The credentials for `host`.
pub(crate) fn for_host(host: &str, config: &RegistryConfig) -> RegistryAuth {
    if let (Some(user), Some(pass)) = (&config.username, &config.password) {
        return RegistryAuth::Basic(user.clone(), pass.clone());
    }
    from_docker(host).unwrap_or(RegistryAuth::Anonymous)
}
