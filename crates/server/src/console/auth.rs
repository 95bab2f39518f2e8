//! Who may use the console: the administrators file (`admin.toml`, argon2id hashes), login
//! sessions held in memory (a random token in an HttpOnly, SameSite=Strict cookie), and the
//! CSRF token every changing request must echo in a header.
//!
//! On first start with no administrators file, the account `admin` is created with a random
//! password that is printed once in the log; `tern admin passwd` sets another.

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::access::{hash_password, verify_password};

/// One administrator.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Login name.
    pub name: String,
    /// argon2id hash in PHC form.
    pub password: String,
}

/// The administrators file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// The administrators.
    #[serde(default, rename = "admin")]
    pub admins: Vec<Admin>,
}

impl AdminFile {
    /// Reads the file; `None` if it does not exist.
    pub fn load(path: &Path) -> Result<Option<AdminFile>, String> {
        match fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the file, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = toml::to_string(self).map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension("toml.tmp");
        fs::write(&tmp, format!("# tern console administrators\n{text}"))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600));
        }
        fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Sets `name`'s password, adding the administrator if new.
    pub fn set_password(&mut self, name: &str, password: &str) -> Result<(), String> {
        let hash = hash_password(password)?;
        match self.admins.iter_mut().find(|a| a.name == name) {
            Some(a) => a.password = hash,
            None => self.admins.push(Admin {
                name: name.to_owned(),
                password: hash,
            }),
        }
        Ok(())
    }
}

/// Creates the administrators file with `admin` and a random password if there is none;
/// returns the password to show once.
pub fn create_first_admin(path: &Path) -> Result<Option<String>, String> {
    if AdminFile::load(path)?.is_some() {
        return Ok(None);
    }
    let password = random_password(20);
    let mut file = AdminFile::default();
    file.set_password("admin", &password)?;
    file.save(path)?;
    Ok(Some(password))
}

/// `n` letters and digits, from the operating system's random source.
pub fn random_password(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut byte = [0u8; 1];
        OsRng.fill_bytes(&mut byte);
        // Rejection keeps every character equally likely.
        let limit = 256 - 256 % ALPHABET.len();
        if usize::from(byte[0]) < limit {
            out.push(char::from(ALPHABET[usize::from(byte[0]) % ALPHABET.len()]));
        }
    }
    out
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A logged-in administrator.
#[derive(Debug, Clone)]
pub struct Login {
    /// The administrator's name.
    pub name: String,
    /// The token changing requests must carry in `X-CSRF-Token`.
    pub csrf: String,
    last_used: Instant,
}

/// Most login sessions kept; the least recently used goes first.
const MAX_LOGINS: usize = 1000;

/// How long failures from an address are remembered.
const FAILURE_MEMORY: Duration = Duration::from_secs(300);

/// Login sessions and failed-login bookkeeping.
pub struct Logins {
    idle: Duration,
    sessions: Mutex<HashMap<String, Login>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Logins {
    /// Sessions that end after `idle` without use.
    pub fn new(idle: Duration) -> Logins {
        Logins {
            idle,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Checks `name` and `password` against the administrators file (slow on purpose: call
    /// it off the async workers). An unknown name costs as much as a wrong password.
    pub fn verify(path: &Path, name: &str, password: &str) -> bool {
        let file = AdminFile::load(path).ok().flatten().unwrap_or_default();
        match file.admins.iter().find(|a| a.name == name) {
            Some(a) => verify_password(password.as_bytes(), &a.password),
            None => {
                static DECOY: OnceLock<String> = OnceLock::new();
                let decoy = DECOY.get_or_init(|| hash_password("decoy").unwrap_or_default());
                let _ = verify_password(password.as_bytes(), decoy);
                false
            }
        }
    }

    /// Opens a session for `name`; returns its token.
    pub fn open(&self, name: &str) -> (String, Login) {
        let token = random_token();
        let login = Login {
            name: name.to_owned(),
            csrf: random_token(),
            last_used: Instant::now(),
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.len() >= MAX_LOGINS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, l)| l.last_used)
                .map(|(t, _)| t.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(token.clone(), login.clone());
        (token, login)
    }

    /// The session of `token`, if it is open and not idle too long; marks it used.
    pub fn check(&self, token: &str) -> Option<Login> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let login = sessions.get_mut(token)?;
        if login.last_used.elapsed() > self.idle {
            sessions.remove(token);
            return None;
        }
        login.last_used = Instant::now();
        Some(login.clone())
    }

    /// Ends the session of `token`.
    pub fn close(&self, token: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// How long to hold a login from `ip`: 0 without recent failures, then 250 ms doubling
    /// per failure up to 10 s.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&ip) {
            Some((n, last)) if last.elapsed() < FAILURE_MEMORY && *n > 0 => {
                Duration::from_millis(250u64 << (*n).min(6)).min(Duration::from_secs(10))
            }
            _ => Duration::ZERO,
        }
    }

    /// Records a login's outcome from `ip`.
    pub fn record(&self, ip: IpAddr, ok: bool) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            failures.remove(&ip);
            return;
        }
        if failures.len() > 10_000 {
            failures.retain(|_, (_, last)| last.elapsed() < FAILURE_MEMORY);
        }
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_admin_is_created_once_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.toml");
        let password = create_first_admin(&path).unwrap().unwrap();
        assert_eq!(password.len(), 20);
        assert!(create_first_admin(&path).unwrap().is_none());
        assert!(Logins::verify(&path, "admin", &password));
        assert!(!Logins::verify(&path, "admin", "wrong"));
        assert!(!Logins::verify(&path, "nobody", &password));
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&password));
    }

    #[test]
    fn sessions_expire_when_idle_and_close() {
        let logins = Logins::new(Duration::from_millis(0));
        let (token, _) = logins.open("admin");
        std::thread::sleep(Duration::from_millis(2));
        assert!(logins.check(&token).is_none());
        let logins = Logins::new(Duration::from_secs(60));
        let (token, login) = logins.open("admin");
        assert_eq!(logins.check(&token).unwrap().csrf, login.csrf);
        logins.close(&token);
        assert!(logins.check(&token).is_none());
        assert!(logins.check("forged").is_none());
    }

    #[test]
    fn failures_slow_down_an_address() {
        let logins = Logins::new(Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(logins.delay(ip), Duration::ZERO);
        logins.record(ip, false);
        logins.record(ip, false);
        assert_eq!(logins.delay(ip), Duration::from_millis(1000));
        logins.record(ip, true);
        assert_eq!(logins.delay(ip), Duration::ZERO);
    }
}
