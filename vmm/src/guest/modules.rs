//! Kernel module selection: which `.ko` files the guest needs and the
//! order to load them in, worked out from each module's `.modinfo` since
//! Debian's kernel package ships no `modules.dep`.
//!
//! A requested module pulls in its `depends=` entries (hard: missing ones
//! are an error) and its `softdep=` entries (`pre:` loaded before it,
//! `post:` after; missing ones are skipped, as modprobe does). Names are
//! looked up as modprobe does: module name first, then built-in module
//! name, then `alias=` entries of modules, then aliases of built-ins.
//! Built-in modules need no file and are left out.
//!
//! Limitations:
//! - Aliases match exactly; wildcard aliases (`pci:v*...`) are not matched,
//!   which is fine for the crypto and module names used in dependencies.

use std::collections::{BTreeMap, BTreeSet};

use super::elf;

/// Errors from module selection.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// A requested module or hard dependency is neither a file nor built in.
    #[error("Module {0} is neither in the kernel package nor built into the kernel")]
    Missing(String),
    /// A module file has no readable `.modinfo`.
    #[error("Cannot read module {0}")]
    Modinfo(String, #[source] elf::ElfError),
}

/// One loadable module.
#[derive(Debug, Clone)]
pub struct Module {
    /// Normalised module name (`-` replaced by `_`).
    pub name: String,
    /// Uncompressed `.ko` contents.
    pub data: Vec<u8>,
    /// `depends=` names.
    pub depends: Vec<String>,
    /// `softdep=` names to load before this module.
    pub pre: Vec<String>,
    /// `softdep=` names to load after this module.
    pub post: Vec<String>,
    /// `alias=` entries.
    pub aliases: Vec<String>,
}

impl Module {
    /// Reads a module's dependencies and aliases from its `.modinfo`.
    pub fn from_ko(file_name: &str, data: Vec<u8>) -> Result<Module, ModuleError> {
        let name = normalize(file_name.split('.').next().unwrap_or(file_name));
        let info = elf::modinfo(&data).map_err(|e| ModuleError::Modinfo(name.clone(), e))?;
        let mut module = Module {
            name,
            data,
            depends: Vec::new(),
            pre: Vec::new(),
            post: Vec::new(),
            aliases: Vec::new(),
        };
        for (key, value) in info {
            match key.as_str() {
                "depends" => module
                    .depends
                    .extend(value.split(',').filter(|s| !s.is_empty()).map(normalize)),
                "softdep" => module.add_softdep(&value),
                "alias" => module.aliases.push(value),
                _ => {}
            }
        }
        Ok(module)
    }

    /// Adds one `softdep=` value (`pre: a b post: c`).
    fn add_softdep(&mut self, value: &str) {
        let mut post = false;
        for word in value.split_whitespace() {
            match word {
                "pre:" => post = false,
                "post:" => post = true,
                name if post => self.post.push(name.to_string()),
                name => self.pre.push(name.to_string()),
            }
        }
    }
}

/// Module names treat `-` and `_` alike; this is the `_` form.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// All modules of one kernel, and its built-in modules.
#[derive(Debug, Default)]
pub struct ModuleSet {
    modules: BTreeMap<String, Module>,
    builtin: BTreeSet<String>,
    builtin_aliases: BTreeSet<String>,
}

/// One module to load, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// Module name (also the file name without `.ko`).
    pub name: String,
    /// Reached from a requested module through hard dependencies only; a
    /// module reached through a soft dependency may fail to load (e.g. a
    /// CPU-specific crypto driver) without harm.
    pub required: bool,
}

/// The outcome of [`ModuleSet::plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Modules in load order: every module after its hard and `pre:` soft
    /// dependencies.
    pub order: Vec<Load>,
    /// Soft dependency names that match no module, built-in or alias.
    pub unresolved_softdeps: BTreeSet<String>,
}

impl ModuleSet {
    /// Adds a module.
    pub fn insert(&mut self, module: Module) {
        self.modules.insert(module.name.clone(), module);
    }

    /// Reads `modules.builtin` (one `kernel/.../name.ko` path per line).
    pub fn add_builtin_list(&mut self, text: &str) {
        for line in text.lines() {
            let file = line.rsplit('/').next().unwrap_or(line);
            if let Some(name) = file.strip_suffix(".ko") {
                self.builtin.insert(normalize(name));
            }
        }
    }

    /// Reads `modules.builtin.modinfo` (NUL-separated `module.key=value`)
    /// for the aliases of built-in modules.
    pub fn add_builtin_modinfo(&mut self, bytes: &[u8]) {
        for entry in bytes.split(|b| *b == 0) {
            let text = String::from_utf8_lossy(entry);
            if let Some((_, alias)) = text.split_once(".alias=") {
                self.builtin_aliases.insert(alias.to_string());
            }
        }
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// The module called `name`, if it is a file.
    pub fn get(&self, name: &str) -> Option<&Module> {
        self.modules.get(&normalize(name))
    }

    /// Names of the built-in modules.
    pub fn builtin(&self) -> &BTreeSet<String> {
        &self.builtin
    }

    /// Resolves a name as modprobe would: `Ok(names)` of module files to
    /// load (empty when built in), `Err(())` when nothing matches.
    fn lookup(&self, name: &str) -> Result<Vec<String>, ()> {
        let normal = normalize(name);
        if self.modules.contains_key(&normal) {
            return Ok(vec![normal]);
        }
        if self.builtin.contains(&normal) {
            return Ok(Vec::new());
        }
        let by_alias: Vec<String> = self
            .modules
            .values()
            .filter(|m| m.aliases.iter().any(|a| a == name))
            .map(|m| m.name.clone())
            .collect();
        if !by_alias.is_empty() {
            return Ok(by_alias);
        }
        if self.builtin_aliases.contains(name) {
            return Ok(Vec::new());
        }
        Err(())
    }

    /// The load order for `wanted` and everything it depends on.
    pub fn plan(&self, wanted: &[&str]) -> Result<Plan, ModuleError> {
        let mut walk = Walk {
            set: self,
            state: BTreeMap::new(),
            plan: Plan::default(),
            required: BTreeSet::new(),
        };
        for name in wanted {
            let names = self
                .lookup(name)
                .map_err(|()| ModuleError::Missing(name.to_string()))?;
            for n in names {
                walk.mark_required(&n)?;
                walk.visit(&n)?;
            }
        }
        let required = walk.required;
        let mut plan = walk.plan;
        for load in &mut plan.order {
            load.required = required.contains(&load.name);
        }
        Ok(plan)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Visiting,
    Done,
}

/// Depth-first walk producing a dependency-respecting order.
struct Walk<'a> {
    set: &'a ModuleSet,
    state: BTreeMap<String, Mark>,
    plan: Plan,
    required: BTreeSet<String>,
}

impl Walk<'_> {
    /// Marks `name` and its hard dependencies as required.
    fn mark_required(&mut self, name: &str) -> Result<(), ModuleError> {
        if !self.required.insert(name.to_string()) {
            return Ok(());
        }
        let module = &self.set.modules[name];
        for dep in &module.depends {
            if self.set.is_builtin(dep) {
                continue;
            }
            let found = self
                .set
                .get(dep)
                .ok_or_else(|| ModuleError::Missing(dep.clone()))?;
            self.mark_required(&found.name.clone())?;
        }
        Ok(())
    }

    fn visit(&mut self, name: &str) -> Result<(), ModuleError> {
        if self.state.contains_key(name) {
            // Done, or a cycle through soft dependencies: nothing to add.
            return Ok(());
        }
        self.state.insert(name.to_string(), Mark::Visiting);
        let module = &self.set.modules[name];
        for soft in &module.pre {
            self.visit_soft(soft)?;
        }
        for dep in &module.depends {
            if self.set.is_builtin(dep) {
                continue;
            }
            if self.set.get(dep).is_none() {
                return Err(ModuleError::Missing(dep.clone()));
            }
            self.visit(&normalize(dep))?;
        }
        self.plan.order.push(Load {
            name: name.to_string(),
            required: false,
        });
        self.state.insert(name.to_string(), Mark::Done);
        for soft in &module.post {
            self.visit_soft(soft)?;
        }
        Ok(())
    }

    fn visit_soft(&mut self, name: &str) -> Result<(), ModuleError> {
        match self.set.lookup(name) {
            Ok(names) => {
                for n in names {
                    if self.state.get(&n) != Some(&Mark::Visiting) {
                        self.visit(&n)?;
                    }
                }
            }
            Err(()) => {
                tracing::debug!("soft dependency {name} matches no module");
                self.plan.unresolved_softdeps.insert(name.to_string());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, depends: &[&str], pre: &[&str], aliases: &[&str]) -> Module {
        Module {
            name: name.into(),
            data: Vec::new(),
            depends: depends.iter().map(|s| s.to_string()).collect(),
            pre: pre.iter().map(|s| s.to_string()).collect(),
            post: Vec::new(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn set() -> ModuleSet {
        let mut s = ModuleSet::default();
        s.insert(module(
            "cifs",
            &["fscache", "cifs_arc4"],
            &["gcm", "sha512", "aes", "aead2"],
            &[],
        ));
        s.insert(module("fscache", &["netfs"], &[], &[]));
        s.insert(module("netfs", &[], &[], &[]));
        s.insert(module("cifs_arc4", &[], &[], &[]));
        s.insert(module("gcm", &["crypto_null"], &[], &["crypto-gcm"]));
        s.insert(module("sha512_generic", &[], &[], &["sha512"]));
        s.insert(module(
            "sha512_ssse3",
            &["sha512_generic"],
            &[],
            &["sha512"],
        ));
        s.insert(module("vfat", &["fat"], &[], &[]));
        s.insert(module("fat", &[], &[], &[]));
        s.add_builtin_list("kernel/crypto/crypto_null.ko\nkernel/crypto/aes_generic.ko\n");
        s.add_builtin_modinfo(b"aes_generic.alias=aes\0aes_generic.license=GPL\0");
        s
    }

    fn position(plan: &Plan, name: &str) -> usize {
        plan.order.iter().position(|l| l.name == name).unwrap()
    }

    #[test]
    fn dependencies_and_pre_softdeps_load_first() {
        let plan = set().plan(&["cifs", "vfat"]).unwrap();
        let cifs = position(&plan, "cifs");
        for dep in [
            "fscache",
            "netfs",
            "cifs_arc4",
            "gcm",
            "sha512_generic",
            "sha512_ssse3",
        ] {
            assert!(position(&plan, dep) < cifs, "{dep} after cifs: {plan:?}");
        }
        assert!(position(&plan, "netfs") < position(&plan, "fscache"));
        assert!(position(&plan, "sha512_generic") < position(&plan, "sha512_ssse3"));
        assert!(position(&plan, "fat") < position(&plan, "vfat"));
        assert_eq!(plan.order.len(), 9);
    }

    #[test]
    fn builtins_are_left_out_and_unknown_softdeps_reported() {
        let plan = set().plan(&["cifs"]).unwrap();
        assert!(plan
            .order
            .iter()
            .all(|l| l.name != "crypto_null" && l.name != "aes_generic"));
        assert_eq!(
            plan.unresolved_softdeps,
            BTreeSet::from(["aead2".to_string()])
        );
    }

    #[test]
    fn only_hard_dependency_chains_are_required() {
        let plan = set().plan(&["cifs"]).unwrap();
        let required: BTreeSet<&str> = plan
            .order
            .iter()
            .filter(|l| l.required)
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(
            required,
            BTreeSet::from(["cifs", "fscache", "netfs", "cifs_arc4"])
        );
    }

    #[test]
    fn missing_module_or_hard_dependency_is_an_error() {
        let mut s = set();
        assert!(
            matches!(s.plan(&["virtio_rng"]), Err(ModuleError::Missing(n)) if n == "virtio_rng")
        );
        s.insert(module("broken", &["nowhere"], &[], &[]));
        assert!(matches!(s.plan(&["broken"]), Err(ModuleError::Missing(n)) if n == "nowhere"));
        assert!(s.plan(&["crypto_null"]).unwrap().order.is_empty());
    }

    #[test]
    fn softdep_cycles_terminate() {
        let mut s = ModuleSet::default();
        s.insert(module("a", &[], &["b"], &[]));
        s.insert(module("b", &[], &["a"], &[]));
        let plan = s.plan(&["a"]).unwrap();
        let names: Vec<&str> = plan.order.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
    }

    #[test]
    fn softdep_parsing_splits_pre_and_post() {
        let mut m = module("x", &[], &[], &[]);
        m.add_softdep("pre: a b post: c");
        m.add_softdep("pre: d");
        assert_eq!(m.pre, ["a", "b", "d"]);
        assert_eq!(m.post, ["c"]);
        assert_eq!(normalize("virtio-rng"), "virtio_rng");
    }
}
