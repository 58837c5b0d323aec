//! The certificates and keys a configuration gives the console and its
//! servers, and the TLS configurations made from them.
use std::sync::Arc;

use rustls::sign::{CertifiedKey, SingleCertAndKey};
use sealtls_endpoint::settings::{Anchors, ClientSettings, ServerSettings, ServerTls};
use sealtls_endpoint::{ClientAuthMode, TlsVersions};
use sealtls_failure::{Failure, FailureClass};

/// BitVisor's `.tls` section, loaded and checked.
#[derive(Clone)]
pub struct TlsMaterial {
    /// Where it came from (the config file, or that there was none), for messages.
    pub origin: String,
    /// `srv_cert` + `srv_key`: the echo servers' identity.
    pub server: Option<Arc<CertifiedKey>>,
    /// `ca_cert`: trusted to sign servers (for `client connect`) and clients.
    pub ca: Option<Anchors>,
    /// `cli_cert` + `cli_key`: offered by `client connect` when a server asks.
    pub client: Option<Arc<CertifiedKey>>,
    /// Accept server leaves the way BitVisor does (signature and validity only).
    pub legacy_v1_leaf: bool,
}

impl TlsMaterial {
    /// A server configuration. Without a CA there is nothing to check client
    /// certificates against, so none are asked for.
    pub fn server_tls(&self, client_auth: ClientAuthMode, versions: TlsVersions) -> Result<ServerTls, Failure> {
        let identity = self.server.clone().ok_or_else(|| {
            Failure::new(
                FailureClass::Config,
                format!("no server certificate configured ({})", self.origin),
                "give srv_cert and srv_key (or srv_cert_file and srv_key_file) in the [tls] table of the file passed with --config",
            )
        })?;
        let client_auth = if self.ca.is_none() && client_auth == ClientAuthMode::Optional { ClientAuthMode::None } else { client_auth };
        let identity = Arc::new(SingleCertAndKey::from(Arc::unwrap_or_clone(identity)));
        ServerTls::new(ServerSettings { identity, client_ca: self.ca.clone(), client_auth, versions }).map_err(Failure::config)
    }

    /// The client configuration of `client connect`.
    pub fn client_settings(&self) -> Result<ClientSettings, Failure> {
        let trust = self.ca.clone().ok_or_else(|| {
            Failure::new(
                FailureClass::Config,
                format!("no ca_cert configured ({}): the server's certificate cannot be verified", self.origin),
                "give ca_cert (or ca_cert_file), the CA that signed the server, in the [tls] table of the file passed with --config",
            )
        })?;
        Ok(ClientSettings {
            trust,
            identity: self.client.clone(),
            versions: TlsVersions::Any,
            legacy_v1_leaf: self.legacy_v1_leaf,
            name_check: true,
        })
    }
}
