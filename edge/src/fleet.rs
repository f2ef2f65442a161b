//! Fleet files: many gateways' configurations in one file. `[defaults]` holds what
//! they share (cloud endpoints, streams, retention, replication priorities) and
//! `[gateway.ID]` what one gateway adds or changes (its identity, sensors, serial
//! ports). A gateway's effective config is its defaults merged with its own section:
//!
//! - a table merges key by key, the gateway's values winning (`[gateway.pi-17.cloud]`
//!   with only `cert` and `key` keeps the shared endpoints);
//! - an array of tables (`[[stream]]`, `[[sensor]]`, `[[replicate]]`...) is the
//!   defaults' entries followed by the gateway's;
//! - any other value (a string, a number, a plain array) is replaced;
//! - `{gateway}` in any string becomes the gateway's id (`client_id = "{gateway}"`,
//!   `cert = "/etc/tributary/{gateway}.pem"`).
//!
//! `tributary-edge render-config --fleet FILE --gateway ID` prints the effective
//! config; `tributary-edge check-config FILE` on a fleet file validates every gateway's
//! and names each error's gateway and key.
//!
//! ```toml
//! [defaults]
//! data_dir = "/var/lib/tributary-edge"
//! [defaults.cloud]
//! endpoints = ["cloud.example.net:9190"]
//! ca = "/etc/tributary/ca.pem"
//! cert = "/etc/tributary/{gateway}.pem"
//! key = "/etc/tributary/{gateway}.key"
//! [[defaults.stream]]
//! name = "factory-3/sensors"
//!
//! [gateway.pi-17]
//! [[gateway.pi-17.mqtt]]
//! broker = "127.0.0.1:1883"
//! client_id = "{gateway}"
//! ```

use std::path::Path;

use tributary::node::config::ConfigError;

use crate::config::EdgeConfig;

/// Whether `text` is a fleet file (it has `[gateway.…]` sections) rather than one
/// gateway's config.
pub fn is_fleet(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("gateway"))
}

/// A parsed fleet file.
#[derive(Debug, Clone)]
pub struct Fleet {
    defaults: toml::Table,
    gateways: toml::Table,
}

impl Fleet {
    /// Parses a fleet file's structure (each gateway's config is checked by
    /// [`check`]).
    pub fn parse(text: &str) -> Result<Fleet, Vec<ConfigError>> {
        let error = |line, key: &str, message: String| {
            vec![ConfigError {
                line,
                key: key.into(),
                message,
            }]
        };
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            error(line, "(file)", e.message().to_string())
        })?;
        let mut defaults = toml::Table::new();
        let mut gateways = toml::Table::new();
        for (k, v) in doc {
            match (k.as_str(), v) {
                ("defaults", toml::Value::Table(t)) => defaults = t,
                ("gateway", toml::Value::Table(t)) => gateways = t,
                ("defaults" | "gateway", _) => {
                    return Err(error(None, &k, "must be a table".into()));
                }
                _ => {
                    return Err(error(
                        None,
                        &k,
                        "unknown key: a fleet file has [defaults] and [gateway.ID] sections".into(),
                    ))
                }
            }
        }
        if gateways.is_empty() {
            return Err(error(None, "gateway", "no [gateway.ID] section".into()));
        }
        for (id, g) in &gateways {
            if !g.is_table() {
                return Err(error(
                    None,
                    &format!("gateway.{id}"),
                    "must be a table".into(),
                ));
            }
        }
        Ok(Fleet { defaults, gateways })
    }

    /// The gateways' ids, sorted.
    pub fn gateways(&self) -> impl Iterator<Item = &str> {
        self.gateways.keys().map(String::as_str)
    }

    /// The effective config of `gateway`, as TOML text.
    pub fn render(&self, gateway: &str) -> Result<String, String> {
        let Some(toml::Value::Table(own)) = self.gateways.get(gateway) else {
            return Err(format!(
                "no gateway {gateway:?} in the fleet (it has: {})",
                self.gateways().collect::<Vec<_>>().join(", ")
            ));
        };
        let mut merged = self.defaults.clone();
        merge(&mut merged, own.clone());
        substitute(&mut merged, gateway);
        toml::to_string(&merged).map_err(|e| format!("rendering {gateway}: {e}"))
    }
}

/// Checks every gateway's effective config; `Err` lists each problem with its
/// gateway and key (`gateway.pi-17: stream[0].name: …`).
pub fn check(text: &str, base: &Path) -> Result<Vec<(String, EdgeConfig)>, Vec<ConfigError>> {
    let fleet = Fleet::parse(text)?;
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for id in fleet.gateways() {
        let rendered = match fleet.render(id) {
            Ok(r) => r,
            Err(message) => {
                errors.push(ConfigError {
                    line: None,
                    key: format!("gateway.{id}"),
                    message,
                });
                continue;
            }
        };
        match crate::config::parse(&rendered, base) {
            Ok(c) => ok.push((id.to_string(), c)),
            Err(es) => errors.extend(es.into_iter().map(|e| ConfigError {
                line: None,
                key: format!("gateway.{id}: {}", e.key),
                message: e.message,
            })),
        }
    }
    errors.extend(shared_mirrors(&ok));
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(errors)
    }
}

/// Two gateways replicating into one cloud stream: a mirror has one source, so the
/// cloud would refuse all but the first to connect (and, before it recorded sources,
/// mixed their bytes). A cloud is known by its certificate's name (`server_name`).
fn shared_mirrors(gateways: &[(String, EdgeConfig)]) -> Vec<ConfigError> {
    let mut feeds: std::collections::BTreeMap<(&str, String), (&str, String)> = Default::default();
    let mut errors = Vec::new();
    for (id, c) in gateways {
        let Some(cloud) = &c.cloud else { continue };
        for (i, r) in c.replicate.iter().enumerate() {
            let local = c.streams[r.stream].name();
            let key = (cloud.server_name.as_str(), r.to());
            match feeds.get(&key) {
                Some((first, first_local)) => errors.push(ConfigError {
                    line: None,
                    key: format!("gateway.{id}: replicate[{i}].to"),
                    message: format!(
                        "{id}'s {local} and {first}'s {first_local} both replicate to {} in \
                         the cloud {}: a cloud stream mirrors one gateway's stream; give each \
                         its own (e.g. to = \"{}-{{gateway}}\") and read them together as a \
                         stream set",
                        key.1, key.0, key.1
                    ),
                }),
                None => {
                    feeds.insert(key, (id, local));
                }
            }
        }
    }
    errors
}

fn merge(into: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(base)), toml::Value::Table(t)) => merge(base, t),
            (Some(toml::Value::Array(base)), toml::Value::Array(more))
                if base.iter().chain(&more).all(toml::Value::is_table) =>
            {
                base.extend(more)
            }
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn substitute(t: &mut toml::Table, gateway: &str) {
    fn value(v: &mut toml::Value, gateway: &str) {
        match v {
            toml::Value::String(s) if s.contains("{gateway}") => {
                *s = s.replace("{gateway}", gateway);
            }
            toml::Value::Array(a) => a.iter_mut().for_each(|v| value(v, gateway)),
            toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| value(v, gateway)),
            _ => {}
        }
    }
    t.iter_mut().for_each(|(_, v)| value(v, gateway));
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = r#"
[defaults]
data_dir = "/var/lib/tributary-edge"
[defaults.cloud]
endpoints = ["cloud.example.net:9190"]
ca = "/etc/tributary/ca.pem"
cert = "/etc/tributary/{gateway}.pem"
key = "/etc/tributary/{gateway}.key"
[[defaults.stream]]
name = "site/sensors"
[[defaults.replicate]]
stream = "site/sensors"
to = "site/sensors-{gateway}"
priority = 10

[gateway.pi-1]
[[gateway.pi-1.mqtt]]
broker = "127.0.0.1:1883"
client_id = "{gateway}"
[[gateway.pi-1.mqtt.route]]
filter = "sensors/#"
stream = "site/sensors"

[gateway.pi-2]
data_dir = "/data/tributary"
[gateway.pi-2.cloud]
endpoints = ["backup.example.net:9190"]
[[gateway.pi-2.stream]]
name = "site/video"
"#;

    #[test]
    fn gateways_get_defaults_merged_with_their_own() {
        let fleet = Fleet::parse(FLEET).expect("fleet");
        assert_eq!(fleet.gateways().collect::<Vec<_>>(), ["pi-1", "pi-2"]);
        let c = check(FLEET, Path::new("/etc")).expect("valid");
        let (id, pi1) = &c[0];
        assert_eq!(id, "pi-1");
        assert_eq!(pi1.mqtt[0].client_id, "pi-1");
        let cloud = pi1.cloud.as_ref().expect("cloud");
        assert_eq!(
            cloud.identity.cert,
            std::path::PathBuf::from("/etc/tributary/pi-1.pem")
        );
        let (_, pi2) = &c[1];
        assert_eq!(pi2.streams.len(), 2, "the defaults' stream, then its own");
        assert_eq!(
            pi2.node.data_dir.as_deref(),
            Some(Path::new("/data/tributary"))
        );
        let cloud = pi2.cloud.as_ref().expect("cloud");
        assert_eq!(cloud.endpoints.len(), 1);
        assert!(fleet
            .render("pi-2")
            .expect("render")
            .contains("backup.example.net"));
        assert!(fleet
            .render("pi-9")
            .expect_err("unknown")
            .contains("it has: pi-1, pi-2"));
    }

    #[test]
    fn the_shipped_fleet_is_valid() {
        let c = check(
            include_str!("../../config/fleet-factory-3.toml"),
            Path::new("/etc"),
        )
        .expect("fleet-factory-3.toml");
        let ids: Vec<&str> = c.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["camera-3", "line-4", "pi-17"]);
        assert_eq!(c[0].1.streams.len(), 2);
        assert_eq!(c[0].1.replicate.len(), 2);
        assert_eq!(c[1].1.sensors[0].id, "line-4-flow-1");
        assert_eq!(c[1].1.serial[0].key, "line-4-gps");
        assert_eq!(c[2].1.mqtt[0].client_id, "tributary-pi-17");
    }

    #[test]
    fn the_fleet_file_shipped_before_mirror_sources_is_refused() {
        // Every gateway replicated its site/sensors into factory-3/sensors.
        let e: Vec<String> = check(
            include_str!("../tests/data/fleet-factory-3-before-sources.toml"),
            Path::new("/etc"),
        )
        .expect_err("three gateways into one cloud stream")
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            e,
            ["line-4", "pi-17"].map(|g| format!(
                "gateway.{g}: replicate[0].to: {g}'s site/sensors and camera-3's site/sensors \
                 both replicate to factory-3/sensors in the cloud cloud.factory-3.example.net: \
                 a cloud stream mirrors one gateway's stream; give each its own (e.g. to = \
                 \"factory-3/sensors-{{gateway}}\") and read them together as a stream set"
            ))
        );
    }

    #[test]
    fn errors_name_the_gateway_and_key() {
        let bad = format!(
            "{FLEET}\n[gateway.pi-3]\n[[gateway.pi-3.sensor]]\nid = \"x\"\ndriver = \"sht3x\"\nstream = \"site/nope\"\nbus = \"/dev/i2c-1\"\n"
        );
        let e: Vec<String> = check(&bad, Path::new("/etc"))
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("gateway.pi-3: sensor[0].stream: \"site/nope\" is not a configured"),
            "{e:?}"
        );
        // Two gateways into one cloud stream (the old shipped fleet file did this).
        let shared = FLEET.replace("to = \"site/sensors-{gateway}\"", "to = \"f/sensors\"");
        let e: Vec<String> = check(&shared, Path::new("/etc"))
            .expect_err("one cloud stream, two gateways")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("gateway.pi-2: replicate[0].to: pi-2's site/sensors and pi-1's site/sensors both replicate to f/sensors"),
            "{e:?}"
        );
        let e = Fleet::parse("[gateway.a]\n[colour]\n").expect_err("unknown key");
        assert_eq!(e[0].key, "colour");
        assert!(!is_fleet("[[stream]]\nname = \"a/b\"\n"));
        assert!(is_fleet(FLEET));
    }
}
