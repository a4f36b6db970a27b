//! A PostgreSQL cluster of a test's own: Debian's `initdb` in a temporary folder, run as an
//! unprivileged user (`nobody` when the tests run as root), listening on a free loopback port
//! only, trusting loopback connections; stopped and removed when dropped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (.ci/setup installs Debian's postgresql)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .expect("initdb is under /usr/lib/postgresql/*/bin");
        let dir = tempfile::Builder::new()
            .prefix("kiln-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let sockets = dir.path().join("run");
        std::fs::create_dir(&sockets).unwrap();
        if nix::unistd::geteuid().is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            for path in [&data, &sockets] {
                Command::new("chown")
                    .args(["nobody:nogroup"])
                    .arg(path)
                    .status()
                    .unwrap();
            }
        }
        let port = free_port();
        let pg = Postgres { dir, bin, port };
        pg.as_owner(pg.bin.join("initdb"))
            .args(["-A", "trust", "-U", "kiln", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .map(|s| assert!(s.success(), "initdb failed"))
            .unwrap();
        pg.run();
        let created = Command::new(pg.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "kiln",
                "kiln",
            ])
            .status()
            .unwrap();
        assert!(created.success());
        pg
    }

    /// Starts the cluster's server (again, after [`Postgres::stop`], on the same port) and waits
    /// until it takes connections.
    pub fn run(&self) {
        let port = self.port;
        let data = self.dir.path().join("data");
        let sockets = self.dir.path().join("run");
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            sockets.display()
        );
        let log = self.dir.path().join("run/log");
        let started = self
            .as_owner(self.bin.join("pg_ctl"))
            .args(["-w", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &options, "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(
            started.success(),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            if ready.success() {
                break;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server at once: the store is lost until [`Postgres::run`].
    pub fn stop(&self) {
        let stopped = self
            .as_owner(self.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(stopped.success(), "pg_ctl stop failed");
    }

    /// The store's URL.
    pub fn url(&self) -> String {
        format!("postgres://kiln@127.0.0.1:{}/kiln", self.port)
    }

    /// `psql -c sql`, its rows as text.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "kiln",
            ])
            .args(["-d", "kiln", "-At", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn as_owner(&self, program: PathBuf) -> Command {
        if nix::unistd::geteuid().is_root() {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
                .arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .as_owner(self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
