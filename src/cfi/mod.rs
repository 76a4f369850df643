//! DWARF call-frame information (feature `dwarf`: adds gimli, object, memmap2): prepared CFI
//! tables, the Dwarf and Hybrid walk modes, and the loaded modules' tables.

pub mod dwarf;
pub(crate) mod gopclntab;
pub mod module_watch;
pub mod modules;
pub mod safe_open;
pub(crate) mod section_names;
