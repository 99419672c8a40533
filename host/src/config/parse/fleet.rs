//! The fleet keys of a `[plugins.NAME]` table: `endpoints` or `discovery`, the `tls_*` files,
//! `call_timeout`.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::Cx;
use crate::Error;

impl Cx<'_> {
    /// The fleet keys of `[plugins.NAME]` (`endpoints` or `discovery`, the `tls_*` files,
    /// `call_timeout`), taken out of `table`; `None` when it has neither `endpoints` nor
    /// `discovery`.
    pub(super) fn fleet(
        &self,
        name: &str,
        table: &mut BTreeMap<String, Spanned<crate::config::raw::PluginValue>>,
        command: Option<Range<usize>>,
    ) -> Result<Option<crate::fleet::FleetOptions>, Error> {
        use crate::config::raw::PluginValue;
        use crate::fleet::{ClientTls, FleetOptions, Targets};
        let key = |key: &str| format!("plugins.{name}.{key}");
        let mut scalar = |item: &str| match table.remove(item) {
            None => Ok(None),
            Some(value) => {
                let span = value.span();
                match value.into_inner() {
                    PluginValue::Scalar(text) => Ok(Some(Spanned::new(span, text))),
                    PluginValue::List(_) => Err(self.fail(
                        span,
                        &key(item),
                        "expected a string, found an array".to_owned(),
                    )),
                }
            }
        };
        let discovery = scalar("discovery")?;
        let ca = scalar("tls_ca")?;
        let cert = scalar("tls_cert")?;
        let tls_key = scalar("tls_key")?;
        let server_name = scalar("tls_server_name")?;
        let call_timeout = scalar("call_timeout")?;
        let endpoints = table.remove("endpoints");
        let targets = match (endpoints, discovery) {
            (Some(endpoints), Some(discovery)) => {
                let _ = endpoints;
                return Err(self.fail(
                    discovery.span(),
                    &key("discovery"),
                    "either `endpoints` or `discovery`, not both".to_owned(),
                ));
            }
            (Some(endpoints), None) => {
                let span = endpoints.span();
                let usage = "expected the instances' addresses, an array of strings: \
                             endpoints = [\"https://10.0.0.5:7443\", \"https://10.0.0.6:7443\"]";
                let urls = match endpoints.into_inner() {
                    PluginValue::List(urls) if !urls.is_empty() => urls,
                    _ => return Err(self.fail(span, &key("endpoints"), usage.to_owned())),
                };
                if let Some(bad) =
                    urls.iter().find(|u| !u.starts_with("https://") && !u.starts_with("http://"))
                {
                    return Err(self.fail(
                        span,
                        &key("endpoints"),
                        format!("{bad:?}: an endpoint starts with https:// or http://"),
                    ));
                }
                (Targets::Endpoints(urls), span)
            }
            (None, Some(discovery)) => {
                if !discovery.get_ref().starts_with("dns:///") {
                    return Err(self.fail(
                        discovery.span(),
                        &key("discovery"),
                        format!(
                            "expected dns:///HOST:PORT (e.g. dns:///calc.plugins.svc.cluster.local:7443), found {:?}",
                            discovery.get_ref()
                        ),
                    ));
                }
                (Targets::Dns(discovery.get_ref().clone()), discovery.span())
            }
            (None, None) => {
                let stray = [
                    ("tls_ca", &ca),
                    ("tls_cert", &cert),
                    ("tls_key", &tls_key),
                    ("tls_server_name", &server_name),
                    ("call_timeout", &call_timeout),
                ]
                .into_iter()
                .find_map(|(item, value)| value.as_ref().map(|v| (item, v.span())));
                if let Some((item, span)) = stray {
                    return Err(self.fail(
                        span,
                        &key(item),
                        "is for a fleet (`endpoints` or `discovery`)".to_owned(),
                    ));
                }
                return Ok(None);
            }
        };
        let (targets, span) = targets;
        if let Some(command) = command {
            let _ = span;
            return Err(self.fail(
                command,
                &key("command"),
                "a plugin is an executable (`command`) or a fleet (`endpoints`/`discovery`), not both".to_owned(),
            ));
        }
        let identity =
            match (cert, tls_key) {
                (Some(cert), Some(tls_key)) => {
                    Some((self.resolve(cert.get_ref()), self.resolve(tls_key.get_ref())))
                }
                (None, None) => None,
                (Some(one), None) | (None, Some(one)) => return Err(self.fail(
                    one.span(),
                    &key("tls_cert"),
                    "`tls_cert` and `tls_key` go together (the host's certificate for mutual TLS)"
                        .to_owned(),
                )),
            };
        let tls = match ca {
            Some(ca) => Some(ClientTls {
                ca: self.resolve(ca.get_ref()),
                identity,
                server_name: server_name.map(Spanned::into_inner),
            }),
            None if identity.is_some() || server_name.is_some() => {
                return Err(self.fail(
                    span,
                    &key("tls_ca"),
                    "TLS settings need `tls_ca`, the CA that signs the servers' certificates"
                        .to_owned(),
                ))
            }
            None => None,
        };
        let secure = match &targets {
            Targets::Endpoints(urls) => urls.iter().any(|u| u.starts_with("https://")),
            Targets::Dns(_) => tls.is_some(),
        };
        if secure && tls.is_none() {
            return Err(self.fail(
                span,
                &key("tls_ca"),
                "https:// endpoints need `tls_ca` (and `tls_cert`/`tls_key` for mutual TLS)"
                    .to_owned(),
            ));
        }
        let mut options = FleetOptions::new(targets, tls);
        options.call_timeout =
            self.duration(call_timeout, &key("call_timeout"), options.call_timeout)?;
        Ok(Some(options))
    }
}
