//! A typed wrapper over the abx-wasm-abi module's exports (docs/wasm-abi.md), as any host
//! would write one: copy input into buffers the module allocates, call, copy output back.

use anyhow::{Context as _, Result, anyhow, bail};
use wasmtime::{Engine, Instance, Memory, Module, Store, TypedFunc};

/// Context encodings (`context_format`).
#[derive(Clone, Copy, Debug)]
pub enum ContextFormat {
    Json = 0,
    Postcard = 1,
}

/// Result encodings of `abx_evaluate` (`result_format`).
#[derive(Clone, Copy, Debug)]
pub enum ResultFormat {
    Json = 0,
    Packed = 1,
}

/// An error the module reported through `abx_error_ptr`/`abx_error_len`.
#[derive(Debug, PartialEq, Eq)]
pub struct AbiError(pub String);

impl std::fmt::Display for AbiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "module error {}", self.0)
    }
}

impl std::error::Error for AbiError {}

/// A buffer allocated inside the module.
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    pub ptr: u32,
    pub len: u32,
}

type Fn7 = TypedFunc<(u32, u32, u32, u32, u32, u32, i64), u32>;

pub struct AbxModule {
    store: Store<()>,
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    free: TypedFunc<u32, u32>,
    load: TypedFunc<(u32, u32, u32, u32), u32>,
    unload: TypedFunc<u32, u32>,
    version: TypedFunc<u32, i64>,
    describe: TypedFunc<u32, u32>,
    evaluate: TypedFunc<(u32, u32, u32, u32, i64, u32), u32>,
    experiment: Fn7,
    flag: Fn7,
    result_ptr: TypedFunc<(), u32>,
    result_len: TypedFunc<(), u32>,
    error_ptr: TypedFunc<(), u32>,
    error_len: TypedFunc<(), u32>,
}

impl AbxModule {
    /// Compiles and instantiates the module. It must import nothing: that is the point of the
    /// plain build, and instantiating with an empty import list checks it.
    pub fn load(wasm: &[u8]) -> Result<AbxModule> {
        let engine = Engine::default();
        let module = Module::new(&engine, wasm)
            .map_err(anyhow::Error::from)
            .context("compiling the module")?;
        let imports: Vec<String> = module
            .imports()
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect();
        if !imports.is_empty() {
            bail!("the ABI module must have no imports, it has {imports:?}");
        }
        let mut store = Store::new(&engine, ());
        let instance = Instance::new(&mut store, &module, &[])
            .map_err(anyhow::Error::from)
            .context("instantiating")?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| anyhow!("the module exports no memory"))?;
        macro_rules! export {
            ($name:literal) => {
                instance
                    .get_typed_func(&mut store, $name)
                    .map_err(anyhow::Error::from)
                    .with_context(|| format!("export {}", $name))?
            };
        }
        Ok(AbxModule {
            alloc: export!("abx_alloc"),
            free: export!("abx_free"),
            load: export!("abx_load"),
            unload: export!("abx_unload"),
            version: export!("abx_snapshot_version"),
            describe: export!("abx_describe"),
            evaluate: export!("abx_evaluate"),
            experiment: export!("abx_experiment"),
            flag: export!("abx_flag"),
            result_ptr: export!("abx_result_ptr"),
            result_len: export!("abx_result_len"),
            error_ptr: export!("abx_error_ptr"),
            error_len: export!("abx_error_len"),
            memory,
            store,
        })
    }

    fn read(&mut self, ptr: u32, len: u32) -> Result<Vec<u8>> {
        let mut out = vec![0; len as usize];
        self.memory
            .read(&self.store, ptr as usize, &mut out)
            .context("reading module memory")?;
        Ok(out)
    }

    /// The last error code the module recorded.
    pub fn last_error(&mut self) -> Result<String> {
        let ptr = self.error_ptr.call(&mut self.store, ())?;
        let len = self.error_len.call(&mut self.store, ())?;
        Ok(String::from_utf8(self.read(ptr, len)?)?)
    }

    fn check(&mut self, status: u32) -> Result<u32> {
        if status == 0 {
            return Err(AbiError(self.last_error()?).into());
        }
        Ok(status)
    }

    /// Copies `bytes` into a new module buffer.
    pub fn write(&mut self, bytes: &[u8]) -> Result<Buffer> {
        let len = u32::try_from(bytes.len())?;
        let ptr = self.alloc.call(&mut self.store, len)?;
        let ptr = self.check(ptr)?;
        self.memory.write(&mut self.store, ptr as usize, bytes)?;
        Ok(Buffer { ptr, len })
    }

    pub fn free(&mut self, buffer: Buffer) -> Result<()> {
        let status = self.free.call(&mut self.store, buffer.ptr)?;
        self.check(status).map(drop)
    }

    /// The output of the last successful call.
    pub fn result(&mut self) -> Result<Vec<u8>> {
        let ptr = self.result_ptr.call(&mut self.store, ())?;
        let len = self.result_len.call(&mut self.store, ())?;
        self.read(ptr, len)
    }

    /// Packed words of the last `abx_evaluate` with `ResultFormat::Packed`, into `out`.
    pub fn result_words(&mut self, out: &mut Vec<u32>) -> Result<()> {
        let ptr = self.result_ptr.call(&mut self.store, ())? as usize;
        let len = self.result_len.call(&mut self.store, ())? as usize;
        let bytes = self
            .memory
            .data(&self.store)
            .get(ptr..ptr + len)
            .ok_or_else(|| anyhow!("result outside memory"))?;
        out.clear();
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
        );
        Ok(())
    }

    /// Loads a snapshot, verified when `public_key` is given; returns its handle.
    pub fn load_snapshot(&mut self, snapshot: &[u8], public_key: Option<&[u8]>) -> Result<u32> {
        let bytes = self.write(snapshot)?;
        let key = match public_key {
            Some(key) => Some(self.write(key)?),
            None => None,
        };
        let outcome = self.load_raw(bytes, key.unwrap_or(Buffer { ptr: 0, len: 0 }));
        self.free(bytes)?;
        if let Some(key) = key {
            self.free(key)?;
        }
        outcome
    }

    /// `abx_load` on buffers as given (`key.len == 0`: unverified).
    pub fn load_raw(&mut self, snapshot: Buffer, key: Buffer) -> Result<u32> {
        let args = (snapshot.ptr, snapshot.len, key.ptr, key.len);
        let handle = self.load.call(&mut self.store, args)?;
        self.check(handle)
    }

    pub fn unload(&mut self, handle: u32) -> Result<()> {
        let status = self.unload.call(&mut self.store, handle)?;
        self.check(status).map(drop)
    }

    pub fn snapshot_version(&mut self, handle: u32) -> Result<i64> {
        Ok(self.version.call(&mut self.store, handle)?)
    }

    pub fn describe(&mut self, handle: u32) -> Result<Vec<u8>> {
        let status = self.describe.call(&mut self.store, handle)?;
        self.check(status)?;
        self.result()
    }

    /// Evaluates a context already copied into the module; the output stays in the module.
    pub fn evaluate_in_place(
        &mut self,
        handle: u32,
        context: Buffer,
        format: ContextFormat,
        now_ms: i64,
        result: ResultFormat,
    ) -> Result<()> {
        let args = (
            handle,
            context.ptr,
            context.len,
            format as u32,
            now_ms,
            result as u32,
        );
        self.evaluate_raw(args)
    }

    /// `abx_evaluate` with arguments as given, formats included.
    pub fn evaluate_raw(&mut self, args: (u32, u32, u32, u32, i64, u32)) -> Result<()> {
        let status = self.evaluate.call(&mut self.store, args)?;
        self.check(status).map(drop)
    }

    fn single(
        &mut self,
        flag: bool,
        handle: u32,
        key: &str,
        context: Buffer,
        format: ContextFormat,
        now_ms: i64,
    ) -> Result<Vec<u8>> {
        let key = self.write(key.as_bytes())?;
        let outcome = self.single_raw(
            flag,
            (
                handle,
                key.ptr,
                key.len,
                context.ptr,
                context.len,
                format as u32,
                now_ms,
            ),
        );
        self.free(key)?;
        outcome?;
        self.result()
    }

    /// `abx_flag` (or `abx_experiment`) with arguments as given.
    pub fn single_raw(
        &mut self,
        flag: bool,
        args: (u32, u32, u32, u32, u32, u32, i64),
    ) -> Result<()> {
        let function = if flag {
            self.flag.clone()
        } else {
            self.experiment.clone()
        };
        let status = function.call(&mut self.store, args)?;
        self.check(status).map(drop)
    }

    /// `abx_experiment`: one experiment as JSON.
    pub fn experiment(
        &mut self,
        handle: u32,
        key: &str,
        context: Buffer,
        format: ContextFormat,
        now_ms: i64,
    ) -> Result<Vec<u8>> {
        self.single(false, handle, key, context, format, now_ms)
    }

    /// `abx_flag`: one flag as JSON.
    pub fn flag(
        &mut self,
        handle: u32,
        key: &str,
        context: Buffer,
        format: ContextFormat,
        now_ms: i64,
    ) -> Result<Vec<u8>> {
        self.single(true, handle, key, context, format, now_ms)
    }
}
