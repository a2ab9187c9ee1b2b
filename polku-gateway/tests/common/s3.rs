//! A real S3-compatible server for the tests: s3proxy (filesystem backend,
//! signatures checked), run by Java from the jar that `scripts/s3-lib.sh`
//! fetches (`POLKU_S3PROXY_JAR`, else `target/s3`, fetched on first use).
//! Each server has its own port and directory; it stops at drop, and dies
//! with the test process if that dies first.
//!
//! Another server can be swapped in: with `POLKU_TEST_S3_ENDPOINT`,
//! `POLKU_TEST_S3_ACCESS_KEY`, `POLKU_TEST_S3_SECRET_KEY` and
//! `POLKU_TEST_S3_BUCKET` (an existing bucket) set, the tests use it, and
//! those that stop and start the server say so and pass over that part.
#![allow(unreachable_pub, dead_code)]

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore as _, ObjectStoreExt as _};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

const VERSION: &str = "4.1.0";

/// The s3proxy jar, fetched once for every test binary.
fn jar() -> PathBuf {
    if let Ok(j) = std::env::var("POLKU_S3PROXY_JAR") {
        return PathBuf::from(j);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/s3");
    let jar = dir.join(format!("s3proxy-{VERSION}-jar-with-dependencies.jar"));
    crate::common::fetch_once(&jar, &dir, "s3-lib.sh", "s3proxy");
    jar
}

/// One S3-compatible server, running or stopped.
pub struct S3Server {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// A bucket that exists.
    pub bucket: String,
    /// The bundled s3proxy's port and directory (None: a server swapped in).
    local: Option<(u16, PathBuf)>,
    child: Option<Child>,
}

impl S3Server {
    /// The server swapped in, else a fresh s3proxy with one bucket; returns
    /// once it answers.
    pub fn start() -> S3Server {
        Self::start_with("")
    }

    /// As [`start`](Self::start), with more s3proxy properties (lines).
    pub fn start_with(extra: &str) -> S3Server {
        if let Ok(endpoint) = std::env::var("POLKU_TEST_S3_ENDPOINT") {
            let var = |v: &str| std::env::var(v).unwrap_or_else(|_| panic!("{v} must be set too"));
            return S3Server {
                endpoint,
                access_key: var("POLKU_TEST_S3_ACCESS_KEY"),
                secret_key: var("POLKU_TEST_S3_SECRET_KEY"),
                bucket: var("POLKU_TEST_S3_BUCKET"),
                local: None,
                child: None,
            };
        }
        let port = crate::common::free_port();
        let dir = std::env::temp_dir().join(format!("polku-s3-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A bucket is a directory of the filesystem backend.
        std::fs::create_dir_all(dir.join("data/polku-test")).unwrap();
        let props = format!(
            "s3proxy.endpoint=http://127.0.0.1:{port}\n\
             s3proxy.authorization=aws-v2-or-v4\n\
             s3proxy.identity=polku\n\
             s3proxy.credential=polku-secret\n\
             jclouds.provider=filesystem-nio2\n\
             jclouds.filesystem.basedir={}\n{extra}",
            dir.join("data").display()
        );
        std::fs::write(dir.join("s3proxy.properties"), props).unwrap();
        let mut s = S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key: "polku".into(),
            secret_key: "polku-secret".into(),
            bucket: "polku-test".into(),
            local: Some((port, dir)),
            child: None,
        };
        s.start_again();
        s
    }

    /// Whether this server can be stopped and started (the bundled one).
    pub fn can_restart(&self) -> bool {
        self.local.is_some()
    }

    /// Starts the bundled server again, on its data; returns once it answers.
    pub fn start_again(&mut self) {
        let Some((port, dir)) = &self.local else {
            return;
        };
        assert!(self.child.is_none(), "already running");
        let child = crate::common::spawn_jvm(
            "LOG_LEVEL=warn",
            &format!(
                "-Xmx256m -XX:+UseSerialGC -jar '{}' --properties '{}'",
                jar().display(),
                dir.join("s3proxy.properties").display()
            ),
            &dir.join("s3proxy.log"),
        );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            let log = std::fs::read_to_string(dir.join("s3proxy.log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "s3proxy did not listen within 60 s:\n{}",
                &log[log.len().saturating_sub(3000)..]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sets the bundled server's extra properties for its next start.
    pub fn set_extra(&self, extra: &str) {
        let Some((_, dir)) = &self.local else {
            return;
        };
        let path = dir.join("s3proxy.properties");
        let props = std::fs::read_to_string(&path).unwrap();
        let base: String = props
            .lines()
            .filter(|l| l.starts_with("s3proxy.") || l.starts_with("jclouds."))
            .filter(|l| !l.starts_with("s3proxy.latency"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(path, format!("{base}{extra}")).unwrap();
    }

    /// Stops the bundled server (SIGTERM), and waits.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            crate::common::stop_jvm(c);
        }
    }

    /// A client of the bucket, for reading what was written.
    pub fn client(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_http_connector(polku_gateway::S3HttpConnector::new(reqwest::Client::new()))
            .build()
            .unwrap()
    }

    /// Every object under `prefix`: its key and its lines, decompressed.
    pub async fn objects(&self, prefix: &str) -> Vec<(String, Vec<String>)> {
        use futures_util::TryStreamExt as _;
        let client = self.client();
        let metas: Vec<_> = client
            .list(Some(&ObjectPath::from(prefix)))
            .try_collect()
            .await
            .unwrap();
        let mut out = Vec::new();
        for m in metas {
            let body = client
                .get(&m.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let key = m.location.to_string();
            let text = if key.ends_with(".gz") {
                let mut s = String::new();
                flate2::read::MultiGzDecoder::new(&body[..])
                    .read_to_string(&mut s)
                    .unwrap();
                s
            } else if key.ends_with(".zst") {
                String::from_utf8(zstd::decode_all(&body[..]).unwrap()).unwrap()
            } else {
                String::from_utf8(body.to_vec()).unwrap()
            };
            out.push((key, text.lines().map(str::to_owned).collect()));
        }
        out.sort();
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        if let Some((_, dir)) = &self.local {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The ids of the JSON lines of these objects, in order.
pub fn ids(objects: &[(String, Vec<String>)]) -> Vec<String> {
    objects
        .iter()
        .flat_map(|(_, lines)| lines.iter())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect()
}
