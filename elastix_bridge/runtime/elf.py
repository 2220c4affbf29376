"""A minimal reader of an ELF shared library's dynamic section: what the dynamic loader reads from it.

The reader follows the program headers as glibc's loader does, so stripped libraries without
section headers are read too, and never loads the library (no static initialisers run). It serves
the checks of a native IMPACT plugin before it is preloaded
(:func:`elastix_bridge.runtime.native_plugins.inspect_native_plugin`) and the search of
itk-elastix's elastix library (:mod:`elastix_bridge.runtime.installed_elastix`). Besides the
loader's entries it reports what the dynamic strings tell about the C++ ABI (the libstdc++ string
ABI, LibTorch symbols), which decides whether a library can share a process with the installed torch.

Linux ELF only; importing this module imports neither torch nor itk.
"""
from __future__ import annotations

import mmap
import os
import platform
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

__all__ = ["ElfDynamic", "ElfError", "host_machine", "read_elf_dynamic", "section_range"]

_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
_PT_LOAD, _PT_DYNAMIC = 1, 2
_ET_DYN = 3
_MACHINES = {3: "x86 (i386)", 21: "ppc64", 22: "s390", 40: "arm", 62: "x86-64", 183: "aarch64", 243: "riscv"}
_HOST_MACHINES = {"x86_64": 62, "amd64": 62, "i386": 3, "i686": 3, "aarch64": 183, "arm64": 183, "ppc64le": 21,
                  "ppc64": 21, "s390x": 22, "riscv64": 243}


class ElfError(ValueError):
    """A file is not a readable ELF shared library; the message says why (the caller adds what to do)."""


def host_machine() -> Optional[int]:
    """The ELF ``e_machine`` of the machine this Python runs on (62 = x86-64), or None when unknown."""
    return _HOST_MACHINES.get(platform.machine().lower())


@dataclass(frozen=True)
class ElfDynamic:
    """What the dynamic loader reads from a shared library's dynamic section.

    Attributes:
        path: The file read.
        bits: 32 or 64 (ELF class).
        machine: ``e_machine`` (62 = x86-64, 183 = aarch64, ...).
        soname: ``DT_SONAME``, or None when the library has none.
        needed: ``DT_NEEDED`` entries, in file order (the libraries it links against).
        rpath: ``DT_RPATH`` directories (``$ORIGIN`` not expanded).
        runpath: ``DT_RUNPATH`` directories (``$ORIGIN`` not expanded).
        mentions: those of the names asked for (``look_for`` of :func:`read_elf_dynamic`) that the dynamic
            string table holds (a library that exports a symbol must hold its name; one without it
            certainly does not export it).
        cxx11_abi: True when the dynamic strings hold ``__cxx11`` names (the new libstdc++ string
            ABI), False when they hold only old-ABI ``const std::string &`` names (``RKSs``), None
            when the strings do not tell.
        uses_libtorch: whether the dynamic strings hold ``c10``/``torch``/``at`` C++ symbols.
    """

    path: Path
    bits: int
    machine: int
    soname: Optional[str]
    needed: tuple
    rpath: tuple
    runpath: tuple
    mentions: frozenset
    cxx11_abi: Optional[bool]
    uses_libtorch: bool

    @property
    def machine_name(self) -> str:
        return _MACHINES.get(self.machine, f"machine {self.machine}")



def read_elf_dynamic(path: str | Path, look_for: Iterable[str] = ()) -> ElfDynamic:
    """Read the dynamic section of an ELF shared library, without loading it.

    Follows the program headers as the loader does (``PT_DYNAMIC``, with ``DT_STRTAB`` mapped to a
    file offset through the ``PT_LOAD`` segments), so stripped libraries without section headers
    are read too. ELF32/ELF64, either byte order.

    Args:
        path: A shared library file.
        look_for: Symbol names to look for in the dynamic string table (:attr:`ElfDynamic.mentions`).

    Returns:
        The :class:`ElfDynamic` of the file.

    Raises:
        ElfError: unreadable file, not an ELF shared library, or a damaged dynamic section.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size < 64:
                raise ElfError(f"{path} is not an ELF shared library (too short)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:  # large libraries: no full read
                return _parse_elf_dynamic(path, data, tuple(look_for))
    except OSError as exc:
        raise ElfError(f"cannot read {path} ({exc.strerror or exc})") from exc



def _parse_elf_dynamic(path: Path, data, look_for: tuple) -> ElfDynamic:
    if data[:4] != b"\x7fELF":
        raise ElfError(f"{path} is not an ELF shared library (no ELF header)")
    bits = {1: 32, 2: 64}.get(data[4])
    order = {1: "<", 2: ">"}.get(data[5])
    if bits is None or order is None:
        raise ElfError(f"{path} has an invalid ELF class/byte order")
    try:
        e_type, e_machine = struct.unpack_from(order + "HH", data, 16)
        if bits == 64:
            e_phoff, = struct.unpack_from(order + "Q", data, 32)
            e_phentsize, e_phnum = struct.unpack_from(order + "HH", data, 54)
            ph_fmt, dyn_fmt = order + "IIQQQQQQ", order + "qQ"
        else:
            e_phoff, = struct.unpack_from(order + "I", data, 28)
            e_phentsize, e_phnum = struct.unpack_from(order + "HH", data, 42)
            ph_fmt, dyn_fmt = order + "IIIIIIII", order + "iI"
        if e_type != _ET_DYN:
            raise ElfError(f"{path} is an ELF file but not a shared library (e_type {e_type})")
        loads, dynamic = [], None
        for i in range(e_phnum):
            fields = struct.unpack_from(ph_fmt, data, e_phoff + i * e_phentsize)
            if bits == 64:
                p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = fields[:6]
            else:
                p_type, p_offset, p_vaddr, _paddr, p_filesz = fields[:5]
            if p_type == _PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == _PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
        if dynamic is None:
            raise ElfError(f"{path} has no dynamic section (a static object?)")
        entries, step = [], struct.calcsize(dyn_fmt)
        for offset in range(dynamic[0], dynamic[0] + dynamic[1] - step + 1, step):
            tag, value = struct.unpack_from(dyn_fmt, data, offset)
            if tag == _DT_NULL:
                break
            entries.append((tag, value))
    except struct.error as exc:
        raise ElfError(f"{path} is truncated or damaged (ELF headers out of range: {exc})") from exc
    tags = dict(entries)
    if _DT_STRTAB not in tags:
        raise ElfError(f"{path} has a dynamic section without a string table")
    strtab = next((off + tags[_DT_STRTAB] - vaddr for vaddr, off, size in loads
                   if vaddr <= tags[_DT_STRTAB] < vaddr + size), None)
    if strtab is None:
        raise ElfError(f"{path}: its dynamic string table lies outside the loaded segments")
    strings = bytes(data[strtab:strtab + tags.get(_DT_STRSZ, len(data) - strtab)])

    def string(offset: int) -> str:
        end = strings.find(b"\0", offset)
        return strings[offset:end if end >= 0 else len(strings)].decode("utf-8", "replace")

    def paths(tag: int) -> tuple:
        return tuple(p for t, v in entries if t == tag for p in string(v).split(":") if p)

    return ElfDynamic(
        path=path,
        bits=bits,
        machine=e_machine,
        soname=string(tags[_DT_SONAME]) if _DT_SONAME in tags else None,
        needed=tuple(string(v) for t, v in entries if t == _DT_NEEDED),
        rpath=paths(_DT_RPATH),
        runpath=paths(_DT_RUNPATH),
        mentions=frozenset(name for name in look_for if name.encode() + b"\0" in strings),
        cxx11_abi=True if b"__cxx11" in strings else (False if b"RKSs" in strings else None),
        uses_libtorch=any(s in strings for s in (b"_ZN3c10", b"_ZN5torch", b"_ZN2at", b"_ZNK3c10")),
    )


def section_range(data, name: bytes) -> Optional[tuple]:
    """(file offset, size) of ELF64/ELF32 section `name`, or None (no section headers / not found)."""
    try:
        order = {1: "<", 2: ">"}[data[5]]
        if data[4] == 2:
            e_shoff, = struct.unpack_from(order + "Q", data, 40)
            e_shentsize, e_shnum, e_shstrndx = struct.unpack_from(order + "HHH", data, 58)
            fmt = order + "IIQQQQ"
        else:
            e_shoff, = struct.unpack_from(order + "I", data, 32)
            e_shentsize, e_shnum, e_shstrndx = struct.unpack_from(order + "HHH", data, 46)
            fmt = order + "IIIIII"
        if not e_shoff or e_shstrndx >= e_shnum:
            return None
        headers = [struct.unpack_from(fmt, data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
        names_offset = headers[e_shstrndx][4]
        for sh_name, _type, _flags, _addr, offset, size in headers:
            start = names_offset + sh_name
            if data[start:start + len(name) + 1] == name + b"\0":
                return offset, size
    except (KeyError, struct.error, IndexError):
        return None
    return None

