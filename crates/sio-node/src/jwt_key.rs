//! The key JWTs are checked against, and the algorithm it pins, chosen at start-up.
//!
//! The algorithm comes from the configuration (`--jwt-algorithm`, else from which of
//! `--jwt-secret` / `--jwt-public-key` is given and the key's type), never from a token's
//! header, so neither `alg: none` nor an HS256 token "signed" with the public key can pass.
//! A public key file is checked when the node starts: a PEM public key (SPKI, or PKCS#1 for
//! RSA), RSA of 2048 to 8192 bits for RS256, an EC key on P-256 for ES256.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey};
use simple_asn1::{ASN1Block, oid};

use crate::config::{Config, ConfigError, JwtAlgorithm};

/// Shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: a key as long as the hash).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// The pinned algorithm and its key.
#[derive(Clone)]
pub struct JwtKey {
    /// The only algorithm tokens may use.
    pub algorithm: JwtAlgorithm,
    /// The key their signatures are checked with.
    pub key: DecodingKey,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl JwtAlgorithm {
    /// The jsonwebtoken algorithm.
    pub fn jsonwebtoken(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        }
    }

    /// Its name as tokens write it.
    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }
}

/// What a public key file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyKind {
    Rsa { bits: u64 },
    EcP256,
    EcOtherCurve,
    Other,
}

impl KeyKind {
    fn describe(&self) -> String {
        match self {
            KeyKind::Rsa { bits } => format!("an RSA key of {bits} bits"),
            KeyKind::EcP256 => "an EC P-256 key".to_owned(),
            KeyKind::EcOtherCurve => "an EC key on another curve than P-256".to_owned(),
            KeyKind::Other => "a key of an unsupported type".to_owned(),
        }
    }
}

/// Chooses the algorithm and loads its key from the configuration (`--auth jwt`).
pub fn load(config: &Config) -> Result<JwtKey, ConfigError> {
    let secret = config.jwt_secret.as_ref().filter(|s| !s.is_empty());
    let algorithm = match (config.jwt_algorithm, secret, &config.jwt_public_key) {
        (Some(a), _, _) => a,
        (None, Some(_), Some(_)) => return Err(ConfigError::AmbiguousJwtKey),
        (None, Some(_), None) => JwtAlgorithm::Hs256,
        (None, None, Some(path)) => {
            let (kind, _) = read_public_key(path)?;
            match kind {
                KeyKind::Rsa { .. } => JwtAlgorithm::Rs256,
                KeyKind::EcP256 => JwtAlgorithm::Es256,
                other => {
                    return Err(ConfigError::BadPublicKey {
                        path: path.display().to_string(),
                        why: format!(
                            "it is {}; RS256 needs an RSA key, ES256 an EC P-256 key",
                            other.describe()
                        ),
                    });
                }
            }
        }
        (None, None, None) => return Err(ConfigError::MissingJwtKey),
    };
    match algorithm {
        JwtAlgorithm::Hs256 => {
            if config.jwt_public_key.is_some() {
                return Err(ConfigError::KeyForOtherAlgorithm(
                    "--jwt-public-key is for RS256 and ES256; HS256 uses --jwt-secret",
                ));
            }
            let secret = secret.ok_or(ConfigError::MissingJwtKey)?;
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err(ConfigError::ShortSecret(secret.len()));
            }
            Ok(JwtKey {
                algorithm,
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
            })
        }
        JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
            let path = config
                .jwt_public_key
                .as_ref()
                .ok_or(ConfigError::MissingPublicKey(algorithm.name()))?;
            let (kind, pem) = read_public_key(path)?;
            let bad = |why: String| ConfigError::BadPublicKey {
                path: path.display().to_string(),
                why,
            };
            let key = match (algorithm, &kind) {
                (JwtAlgorithm::Rs256, KeyKind::Rsa { bits }) if (2048..=8192).contains(bits) => {
                    DecodingKey::from_rsa_pem(pem.as_bytes())
                }
                (JwtAlgorithm::Rs256, KeyKind::Rsa { bits }) => {
                    return Err(bad(format!(
                        "RS256 needs an RSA key of 2048 to 8192 bits; it has {bits}"
                    )));
                }
                (JwtAlgorithm::Es256, KeyKind::EcP256) => DecodingKey::from_ec_pem(pem.as_bytes()),
                (alg, kind) => {
                    return Err(bad(format!(
                        "it is {} but --jwt-algorithm is {}",
                        kind.describe(),
                        alg.name()
                    )));
                }
            }
            .map_err(|e| bad(format!("unreadable key ({e})")))?;
            Ok(JwtKey { algorithm, key })
        }
    }
}

/// Reads and classifies a PEM public key file.
fn read_public_key(path: &Path) -> Result<(KeyKind, String), ConfigError> {
    let bad = |why: String| ConfigError::BadPublicKey {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let block = pem::parse(text.as_bytes())
        .map_err(|_| bad("it is not a PEM file (-----BEGIN PUBLIC KEY-----)".to_owned()))?;
    let kind = match block.tag() {
        "PUBLIC KEY" => classify_spki(block.contents()),
        "RSA PUBLIC KEY" => rsa_bits(block.contents()).map(|bits| KeyKind::Rsa { bits }),
        tag if tag.contains("PRIVATE KEY") => {
            return Err(bad(
                "it is a private key; give the node only the public key \
                 (openssl pkey -in KEY -pubout -out public.pem)"
                    .to_owned(),
            ));
        }
        "CERTIFICATE" => {
            return Err(bad("it is a certificate; extract its public key \
                 (openssl x509 -in CERT -pubkey -noout > public.pem)"
                .to_owned()));
        }
        other => return Err(bad(format!("unexpected PEM block {other:?}"))),
    }
    .ok_or_else(|| bad("the public key cannot be parsed".to_owned()))?;
    Ok((kind, text))
}

/// `SubjectPublicKeyInfo ::= SEQUENCE { SEQUENCE { algorithm OID, parameters }, BIT STRING }`.
fn classify_spki(der: &[u8]) -> Option<KeyKind> {
    let blocks = simple_asn1::from_der(der).ok()?;
    let ASN1Block::Sequence(_, spki) = blocks.first()? else {
        return None;
    };
    let (ASN1Block::Sequence(_, alg), ASN1Block::BitString(_, _, key)) =
        (spki.first()?, spki.get(1)?)
    else {
        return None;
    };
    let ASN1Block::ObjectIdentifier(_, oid) = alg.first()? else {
        return None;
    };
    if *oid == oid!(1, 2, 840, 113_549, 1, 1, 1) {
        return rsa_bits(key).map(|bits| KeyKind::Rsa { bits });
    }
    if *oid == oid!(1, 2, 840, 10_045, 2, 1) {
        let p256 = oid!(1, 2, 840, 10_045, 3, 1, 7);
        return Some(match alg.get(1) {
            Some(ASN1Block::ObjectIdentifier(_, curve)) if *curve == p256 => KeyKind::EcP256,
            _ => KeyKind::EcOtherCurve,
        });
    }
    Some(KeyKind::Other)
}

/// Modulus size of `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_bits(der: &[u8]) -> Option<u64> {
    let blocks = simple_asn1::from_der(der).ok()?;
    let ASN1Block::Sequence(_, fields) = blocks.first()? else {
        return None;
    };
    match fields.first()? {
        ASN1Block::Integer(_, n) => Some(n.bits()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Keys made once with `openssl genpkey` (test material only).
    const RSA_2048_PUB: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA1oG1v+ZsjYUIzvsrRzMq
CWweOfDFRQIvEAib22rQ+BtI2ATFIIJ3Kdkiyzhuv0BNBANSb1C/1XZHkwWuK4vD
hmajHRYUmQxPZuqw/F0pBrCWLmiqWtD3kld2s89t5NOtrlXaLCKWc9XjiQxDuWXS
+OBmz+qp8atMzUuk5u4ST3d+3r8uvXrw7xgaFs9nV4zv/Rk0NY/qALs63Im6lwl8
yYyv9WfYEEMciZTH/TgJF2tUt+sSeqBs57VNrX8a5irqKmZw+KBuSnOabQyUohfK
+nBlTv+X8e3G2PjK8TsUNSw6U+bvpYOLjBvqZwF4vmNtU757WpfZ42d20cU80xnf
EQIDAQAB
-----END PUBLIC KEY-----
";
    const EC_P256_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEQRHLHBDkOoNSwmI0kbXdCFtnMZTI
1fo4PwQF0eQ1gcIwbHNyWKtxIGcPjP7IZ9uqX+i+QrRYUkhuXt5NQuSGbg==
-----END PUBLIC KEY-----
";
    const EC_P384_PUB: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEoqdH/GjVONcm25aSSIy2G0UWbeUtjiUJ
4QgYc0bw/+aq449UXaVIkzocTtAfXIQoEWBuuvO851Ysynd4rWo6ffzThy7S54s9
4dcdoXD8S5JLgOhnBPdc1/FW0HCTdM35
-----END PUBLIC KEY-----
";

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["sio-node"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("parse")
    }

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sio-jwt-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn hs256_secrets_must_be_long() {
        let e = load(&config(&["--jwt-secret", "short"])).unwrap_err();
        assert!(matches!(e, ConfigError::ShortSecret(5)), "{e}");
        assert!(!e.to_string().contains("short"), "{e}");
        let k = load(&config(&["--jwt-secret", &"x".repeat(32)])).unwrap();
        assert_eq!(k.algorithm, JwtAlgorithm::Hs256);
    }

    #[test]
    fn the_algorithm_follows_the_key() {
        let path = write("rsa.pub", RSA_2048_PUB);
        let p = path.to_str().unwrap();
        let k = load(&config(&["--jwt-public-key", p])).unwrap();
        assert_eq!(k.algorithm, JwtAlgorithm::Rs256);
        let e = load(&config(&[
            "--jwt-public-key",
            p,
            "--jwt-algorithm",
            "ES256",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("RSA key of 2048 bits"), "{e}");
        let e = load(&config(&[
            "--jwt-public-key",
            p,
            "--jwt-secret",
            &"x".repeat(40),
        ]))
        .unwrap_err();
        assert!(matches!(e, ConfigError::AmbiguousJwtKey), "{e}");
        let e = load(&config(&["--jwt-algorithm", "RS256"])).unwrap_err();
        assert!(matches!(e, ConfigError::MissingPublicKey("RS256")), "{e}");
    }

    #[test]
    fn ec_keys_must_be_on_p256() {
        let p256 = write("ec256.pub", EC_P256_PUB);
        let k = load(&config(&["--jwt-public-key", p256.to_str().unwrap()])).unwrap();
        assert_eq!(k.algorithm, JwtAlgorithm::Es256);
        let e = load(&config(&[
            "--jwt-public-key",
            p256.to_str().unwrap(),
            "--jwt-algorithm",
            "rs256",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("EC P-256 key but"), "{e}");
        let p384 = write("ec384.pub", EC_P384_PUB);
        let e = load(&config(&["--jwt-public-key", p384.to_str().unwrap()])).unwrap_err();
        assert!(e.to_string().contains("another curve"), "{e}");
        let e = load(&config(&[
            "--jwt-public-key",
            p384.to_str().unwrap(),
            "--jwt-algorithm",
            "ES256",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("another curve"), "{e}");
    }

    #[test]
    fn files_that_are_not_public_keys_are_refused() {
        let garbage = write("garbage.pem", "hello");
        let e = load(&config(&["--jwt-public-key", garbage.to_str().unwrap()])).unwrap_err();
        assert!(e.to_string().contains("not a PEM file"), "{e}");
        let private = write(
            "private.pem",
            "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
        );
        let e = load(&config(&["--jwt-public-key", private.to_str().unwrap()])).unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
        let e = load(&config(&["--jwt-public-key", "/nonexistent/key.pem"])).unwrap_err();
        assert!(e.to_string().contains("cannot read it"), "{e}");
    }
}
