//! The registry calls, on a runtime of their own: a pull (manifest, then
//! the one layer, streamed and bounded) and a push.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::{
    OciError, OciRef, Pulled, Pushed, RegistryConfig, WASM_LAYER_MEDIA_TYPE,
    WASM_MANIFEST_CONFIG_MEDIA_TYPE, auth, deadline,
};
use wasmhooks::sha256_hex;

/// Runs one registry operation under the registry's settings and deadline,
/// on a current-thread runtime in a thread of its own, so a caller already
/// inside an async runtime (a server's) is not nested into another.
pub(crate) fn run<T, F, Fut>(oci: &OciRef, config: &RegistryConfig, op: F) -> Result<T, OciError>
where
    T: Send,
    F: FnOnce(Client, RegistryAuth) -> Fut + Send,
    Fut: Future<Output = Result<T, OciError>>,
{
    let limit = deadline(config);
    let client = Client::new(ClientConfig {
        protocol: if config.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(Duration::from_secs(10).min(limit)),
        // The whole operation's deadline governs (and names the setting);
        // the client's own read timeout is only a backstop behind it.
        read_timeout: Some(limit + Duration::from_secs(1)),
        ..Default::default()
    });
    let auth = auth::for_host(oci.host(), config);
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| OciError::new(&oci.text, format!("no async runtime: {e}")))?;
                runtime.block_on(async {
                    match tokio::time::timeout(limit, op(client, auth)).await {
                        Ok(result) => result,
                        Err(_) => Err(OciError::new(
                            &oci.text,
                            format!(
                                "the registry did not finish within {}s (timeout_s)",
                                limit.as_secs()
                            ),
                        )),
                    }
                })
            })
            .join()
            .unwrap_or_else(|_| Err(OciError::new(&oci.text, "the registry client crashed")))
    })
}

fn registry_error(oci: &OciRef, what: &str, e: impl std::fmt::Display) -> OciError {
    let text = wasmhooks::clean_text(&e.to_string(), 400);
    OciError::new(&oci.text, format!("{what}: {text}"))
}

/// The manifest `oci` names, checked to be a Wasm artifact: the Wasm
/// config type and one `application/wasm` layer.
async fn wasm_manifest(
    client: &Client,
    auth: &RegistryAuth,
    oci: &OciRef,
) -> Result<(OciImageManifest, String), OciError> {
    let (manifest, digest) = client
        .pull_image_manifest(&oci.reference, auth)
        .await
        .map_err(|e| registry_error(oci, "pulling its manifest", e))?;
    if manifest.config.media_type != WASM_MANIFEST_CONFIG_MEDIA_TYPE {
        return Err(OciError::new(
            &oci.text,
            format!(
                "not a Wasm artifact: its config is {:?}, not {WASM_MANIFEST_CONFIG_MEDIA_TYPE}",
                wasmhooks::clean_text(&manifest.config.media_type, 100)
            ),
        ));
    }
    let wasm = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == WASM_LAYER_MEDIA_TYPE)
        .count();
    if manifest.layers.len() != 1 || wasm != 1 {
        return Err(OciError::new(
            &oci.text,
            format!(
                "a Wasm artifact has one {WASM_LAYER_MEDIA_TYPE} layer; this one has {} layer(s), {wasm} of them Wasm",
                manifest.layers.len()
            ),
        ));
    }
    Ok((manifest, digest))
}

pub(crate) async fn pull(
    client: Client,
    auth: RegistryAuth,
    oci: &OciRef,
    pin: Option<&str>,
    max_bytes: u64,
) -> Result<Pulled, OciError> {
    let (manifest, manifest_digest) = wasm_manifest(&client, &auth, oci).await?;
    let layer = &manifest.layers[0];
    if let Some(pin) = pin
        && layer.digest != format!("sha256:{pin}")
    {
        return Err(OciError::new(
            &oci.text,
            format!(
                "its layer is {}, but the operator pinned sha256:{pin}: the reference \
                 names other bytes (a tag moved?); refused",
                wasmhooks::clean_text(&layer.digest, 100)
            ),
        ));
    }
    let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
    if size > max_bytes {
        return Err(OciError::new(
            &oci.text,
            format!(
                "its layer is {size} bytes, over the {max_bytes} a plugin may be \
                 (max_plugin_mib); not downloaded"
            ),
        ));
    }
    let mut stream = client
        .pull_blob_stream(&oci.reference, layer)
        .await
        .map_err(|e| registry_error(oci, "pulling its layer", e))?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while let Some(chunk) = stream.stream.next().await {
        let chunk = chunk.map_err(|e| registry_error(oci, "reading its layer", e))?;
        if bytes.len() as u64 + chunk.len() as u64 > size {
            return Err(OciError::new(
                &oci.text,
                format!("the registry sent more than the {size} bytes its manifest gives"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    let sha256 = sha256_hex(&bytes);
    if layer.digest != format!("sha256:{sha256}") {
        return Err(OciError::new(
            &oci.text,
            format!(
                "the layer's bytes hash to sha256:{sha256}, not the {} its manifest gives; refused",
                wasmhooks::clean_text(&layer.digest, 100)
            ),
        ));
    }
    Ok(Pulled {
        bytes,
        manifest_digest,
        sha256,
    })
}

pub(crate) async fn push(
    client: Client,
    auth: RegistryAuth,
    oci: &OciRef,
    bytes: &[u8],
) -> Result<Pushed, OciError> {
    let (config, layer) = oci_wasm::WasmConfig::from_raw_component(bytes.to_vec(), None)
        .map_err(|e| registry_error(oci, "not a component", format!("{e:#}")))?;
    let reference: &Reference = &oci.reference;
    oci_wasm::WasmClient::new(client.clone())
        .push(reference, &auth, layer, config, None)
        .await
        .map_err(|e| registry_error(oci, "pushing", format!("{e:#}")))?;
    let manifest_digest = client
        .fetch_manifest_digest(reference, &auth)
        .await
        .map_err(|e| registry_error(oci, "reading back the pushed manifest's digest", e))?;
    Ok(Pushed {
        manifest_digest,
        sha256: sha256_hex(bytes),
    })
}
