//! wasmtime host: load a module (checking its imports and exports against the ABI, compiling it
//! once and caching the artifact), and evaluate it in a fresh instance with fuel, a memory limit
//! and an output cap. Nothing here trusts the module.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{
    Caller, Config, Engine, ExternType, Linker, Module, Store, StoreLimits, StoreLimitsBuilder,
    Trap, ValType,
};

use super::{ABI_VERSIONS, Verdict};
use crate::model::fs::create_private_dir;

/// The largest module file kiln loads.
const MAX_MODULE_BYTES: usize = 16 << 20;
/// The largest output (and metadata) kiln reads from a module.
const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// What kiln keeps of one evaluation's `kiln.log`.
const MAX_LOG_BYTES: usize = 64 << 10;

/// Limits of one evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub fuel: u64,
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 1_000_000_000,
            memory_bytes: 64 << 20,
        }
    }
}

/// Why the policy engine could not start: the machine's fault (exit 3).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot start the wasm engine: {0:#}")]
    Engine(wasmtime::Error),
    #[error("cannot make the policy cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// kiln loads native code from the cache: only a folder kiln's user alone controls will do.
    #[error(
        "the policy cache {path} {why}; kiln loads compiled code from it, so it must be a folder of kiln's user that no other user can write (KILN_CACHE_DIR chooses another)"
    )]
    UnsafeCache { path: PathBuf, why: String },
}

/// Why a module gave no verdict. Each becomes a `deny` finding.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PolicyFailure {
    #[error("module is {0} bytes, over the 16 MiB limit")]
    TooLarge(usize),
    #[error("module does not compile: {0}")]
    Invalid(String),
    #[error("module imports `{0}`; only `kiln.log` is allowed")]
    ForbiddenImport(String),
    #[error("module lacks the export `{0}` the ABI requires, or it has the wrong type")]
    MissingExport(&'static str),
    #[error("module speaks ABI version {0}; kiln speaks {first} and {last}", first = ABI_VERSIONS[0], last = ABI_VERSIONS[1])]
    AbiMismatch(i32),
    #[error("module ran out of fuel (an endless loop, or more work than the limit allows)")]
    OutOfFuel,
    #[error("module trapped: {0}")]
    Trap(String),
    #[error("module could not be instantiated: {0}")]
    Instantiate(String),
    #[error("module returned output outside its memory")]
    OutputOutOfBounds,
    #[error("module returned {0} bytes of output, over the 1 MiB limit")]
    OutputTooLarge(usize),
    #[error("module returned malformed output: {0}")]
    MalformedOutput(String),
}

/// The module's own description (the `kiln_metadata` export).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub config_schema: serde_json::Value,
    /// How much of the diff the policy reads; kiln sends no more.
    #[serde(default)]
    pub reads: Reads,
}

/// How much of the diff a policy reads (ABI metadata `reads`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reads {
    /// Everything: files, hunks and lines.
    #[default]
    Lines,
    /// Files with their paths, status, modes and counts; no hunks.
    Files,
    /// Only `diff.stats`; no files.
    Stats,
}

/// A loaded module: compiled, checked against the ABI, with its sha256 and ABI version.
#[derive(Clone)]
pub struct Policy {
    pub sha256: String,
    module: Module,
    abi: i32,
}

impl Policy {
    /// The ABI version the module speaks (one of [`ABI_VERSIONS`]): how its input is encoded.
    pub fn abi(&self) -> i32 {
        self.abi
    }

    pub fn imports(&self) -> Vec<String> {
        self.module
            .imports()
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect()
    }

    pub fn exports(&self) -> Vec<String> {
        self.module
            .exports()
            .map(|e| e.name().to_string())
            .collect()
    }
}

/// The engine every policy runs on, and where compiled modules are cached.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
}

struct HostState {
    limits: StoreLimits,
    log: Vec<u8>,
}

/// sha256 of a module's bytes, as hex: what bundles pin.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

impl PolicyEngine {
    /// `cache_dir`: where precompiled modules are kept (made 0700); `None` compiles every time.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, EngineError> {
        let mut config = Config::new();
        config.consume_fuel(true);
        let engine = Engine::new(&config).map_err(EngineError::Engine)?;
        if let Some(dir) = &cache_dir {
            create_private_dir(dir).map_err(|source| EngineError::Cache {
                path: dir.clone(),
                source,
            })?;
            if let Some(why) = crate::model::fs::not_kilns_own(dir, true) {
                return Err(EngineError::UnsafeCache {
                    path: dir.clone(),
                    why,
                });
            }
        }
        Ok(PolicyEngine { engine, cache_dir })
    }

    /// Compiles (or loads from the cache) and checks a module. The cache key is the module's
    /// sha256 and the engine's compatibility hash (wasmtime version and configuration).
    pub fn load(&self, bytes: &[u8]) -> Result<Policy, PolicyFailure> {
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(PolicyFailure::TooLarge(bytes.len()));
        }
        let sha256 = sha256_hex(bytes);
        let cached = self.cache_dir.as_ref().map(|dir| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            self.engine
                .precompile_compatibility_hash()
                .hash(&mut hasher);
            dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
        });
        // A cached file anyone but kiln's user could have written is compiled afresh instead.
        let module = match cached
            .as_deref()
            .filter(|p| p.is_file() && crate::model::fs::not_kilns_own(p, false).is_none())
        {
            // SAFETY: the cache folder is kiln's own (0700) and its files are written only by
            // `Module::serialize` below, keyed by the source's sha256 and the engine's config.
            Some(path) => match unsafe { Module::deserialize_file(&self.engine, path) } {
                Ok(module) => module,
                Err(_) => self.compile(bytes, cached.as_deref())?,
            },
            None => self.compile(bytes, cached.as_deref())?,
        };
        check_abi(&module)?;
        // Asked once here: the encoding of every input the module is given depends on it.
        let (_, _, abi) = self.instantiate(&module, Limits::default())?;
        Ok(Policy {
            sha256,
            module,
            abi,
        })
    }

    fn compile(&self, bytes: &[u8], cache: Option<&Path>) -> Result<Module, PolicyFailure> {
        let module = Module::new(&self.engine, bytes)
            .map_err(|e| PolicyFailure::Invalid(format!("{e:#}")))?;
        if let (Some(path), Ok(artifact)) = (cache, module.serialize()) {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut file| file.write_all(&artifact));
            if written.is_err() || std::fs::rename(&tmp, path).is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(module)
    }

    /// Runs the module on `input` (encoded for its ABI version, [`Policy::abi`]) in a fresh
    /// instance.
    pub fn evaluate(
        &self,
        policy: &Policy,
        input: &[u8],
        limits: Limits,
    ) -> Result<Verdict, PolicyFailure> {
        self.evaluate_logged(policy, input, limits).0
    }

    /// [`PolicyEngine::evaluate`], and what the module wrote to `kiln.log` (at most 64 KiB,
    /// lossily UTF-8), also when it failed.
    pub fn evaluate_logged(
        &self,
        policy: &Policy,
        input: &[u8],
        limits: Limits,
    ) -> (Result<Verdict, PolicyFailure>, String) {
        let (mut store, instance) = match self.instantiate(&policy.module, limits) {
            Ok((store, instance, _)) => (store, instance),
            Err(failure) => return (Err(failure), String::new()),
        };
        let verdict = Self::call_evaluate(&mut store, &instance, input);
        (
            verdict,
            String::from_utf8_lossy(&store.data().log).into_owned(),
        )
    }

    fn call_evaluate(
        store: &mut Store<HostState>,
        instance: &wasmtime::Instance,
        input: &[u8],
    ) -> Result<Verdict, PolicyFailure> {
        let memory = instance
            .get_memory(&mut *store, "memory")
            .ok_or(PolicyFailure::MissingExport("memory"))?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut *store, "kiln_alloc")
            .map_err(|_| PolicyFailure::MissingExport("kiln_alloc"))?;
        let evaluate = instance
            .get_typed_func::<(i32, i32), i64>(&mut *store, "kiln_evaluate")
            .map_err(|_| PolicyFailure::MissingExport("kiln_evaluate"))?;
        let len = i32::try_from(input.len())
            .map_err(|_| PolicyFailure::Trap("input over 2 GiB".into()))?;
        let ptr = alloc.call(&mut *store, len).map_err(trap)?;
        memory
            .write(&mut *store, ptr as u32 as usize, input)
            .map_err(|_| {
                PolicyFailure::Trap("kiln_alloc returned memory the input does not fit in".into())
            })?;
        let packed = evaluate.call(&mut *store, (ptr, len)).map_err(trap)?;
        let bytes = read_packed(memory.data(&*store), packed)?;
        serde_json::from_slice(bytes).map_err(|e| PolicyFailure::MalformedOutput(e.to_string()))
    }

    /// The module's metadata (`kiln_metadata`), under the same limits as an evaluation.
    pub fn metadata(&self, policy: &Policy) -> Result<Metadata, PolicyFailure> {
        let (mut store, instance, _) = self.instantiate(&policy.module, Limits::default())?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or(PolicyFailure::MissingExport("memory"))?;
        let metadata = instance
            .get_typed_func::<(), i64>(&mut store, "kiln_metadata")
            .map_err(|_| PolicyFailure::MissingExport("kiln_metadata"))?;
        let packed = metadata.call(&mut store, ()).map_err(trap)?;
        let bytes = read_packed(memory.data(&store), packed)?;
        serde_json::from_slice(bytes)
            .map_err(|e| PolicyFailure::MalformedOutput(format!("metadata: {e}")))
    }

    /// A fresh instance of `module` under `limits`, and the ABI version it reports.
    fn instantiate(
        &self,
        module: &Module,
        limits: Limits,
    ) -> Result<(Store<HostState>, wasmtime::Instance, i32), PolicyFailure> {
        let state = HostState {
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(1)
                .memories(1)
                .tables(4)
                .table_elements(100_000)
                // A grow past the limit traps instead of returning -1: a module cannot ignore
                // the limit and answer anyway.
                .trap_on_grow_failure(true)
                .build(),
            log: Vec::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(limits.fuel)
            .map_err(|e| PolicyFailure::Instantiate(e.to_string()))?;
        let mut linker = Linker::new(&self.engine);
        linker
            .func_wrap(
                "kiln",
                "log",
                |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| {
                    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory())
                    else {
                        return;
                    };
                    let (data, state) = memory.data_and_store_mut(&mut caller);
                    let start = ptr as u32 as usize;
                    let room = MAX_LOG_BYTES.saturating_sub(state.log.len());
                    let end = start.saturating_add((len as u32 as usize).min(room));
                    if let Some(bytes) = data.get(start..end) {
                        state.log.extend_from_slice(bytes);
                    }
                },
            )
            .map_err(|e| PolicyFailure::Instantiate(e.to_string()))?;
        let instance =
            linker
                .instantiate(&mut store, module)
                .map_err(|e| match e.downcast_ref::<Trap>() {
                    Some(_) => trap(e),
                    None => PolicyFailure::Instantiate(format!("{e:#}")),
                })?;
        let version = instance
            .get_typed_func::<(), i32>(&mut store, "kiln_abi_version")
            .map_err(|_| PolicyFailure::MissingExport("kiln_abi_version"))?
            .call(&mut store, ())
            .map_err(trap)?;
        if !ABI_VERSIONS.contains(&version) {
            return Err(PolicyFailure::AbiMismatch(version));
        }
        Ok((store, instance, version))
    }
}

fn trap(e: wasmtime::Error) -> PolicyFailure {
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PolicyFailure::OutOfFuel,
        Some(t) => PolicyFailure::Trap(t.to_string()),
        None => PolicyFailure::Trap(format!("{e:#}")),
    }
}

/// The bytes at the `(ptr << 32) | len` a module returned, bounds-checked and capped.
fn read_packed(memory: &[u8], packed: i64) -> Result<&[u8], PolicyFailure> {
    let packed = packed as u64;
    let (ptr, len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
    if len > MAX_OUTPUT_BYTES {
        return Err(PolicyFailure::OutputTooLarge(len));
    }
    memory
        .get(ptr..ptr.saturating_add(len))
        .ok_or(PolicyFailure::OutputOutOfBounds)
}

/// Refuses any import but `kiln.log (i32, i32) -> ()` and any module missing an ABI export.
fn check_abi(module: &Module) -> Result<(), PolicyFailure> {
    for import in module.imports() {
        let allowed = import.module() == "kiln"
            && import.name() == "log"
            && matches!(import.ty(), ExternType::Func(f) if types(f.params()) == ["i32", "i32"] && f.results().len() == 0);
        if !allowed {
            return Err(PolicyFailure::ForbiddenImport(format!(
                "{}.{}",
                import.module(),
                import.name()
            )));
        }
    }
    let exports: [(&'static str, &[&str], &[&str]); 4] = [
        ("kiln_abi_version", &[], &["i32"]),
        ("kiln_alloc", &["i32"], &["i32"]),
        ("kiln_evaluate", &["i32", "i32"], &["i64"]),
        ("kiln_metadata", &[], &["i64"]),
    ];
    for (name, params, results) in exports {
        match module.get_export(name) {
            Some(ExternType::Func(f))
                if types(f.params()) == params && types(f.results()) == results => {}
            _ => return Err(PolicyFailure::MissingExport(name)),
        }
    }
    if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        return Err(PolicyFailure::MissingExport("memory"));
    }
    Ok(())
}

fn types(types: impl Iterator<Item = ValType>) -> Vec<&'static str> {
    types
        .map(|t| match t {
            ValType::I32 => "i32",
            ValType::I64 => "i64",
            ValType::F32 => "f32",
            ValType::F64 => "f64",
            _ => "other",
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a module returns as its output's place, kiln reads inside its memory and
        /// within the cap, or refuses.
        #[test]
        fn any_packed_output_is_read_in_bounds_or_refused(
            packed in any::<i64>(),
            memory in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            if let Ok(bytes) = read_packed(&memory, packed) {
                prop_assert!(bytes.len() <= MAX_OUTPUT_BYTES);
                let start = bytes.as_ptr() as usize - memory.as_ptr() as usize;
                prop_assert!(start + bytes.len() <= memory.len());
            }
        }

    }
}
