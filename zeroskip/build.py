"""A build directory: what ``zeroskip compile`` writes, checked whenever it is read.

A build holds ``<top>.v`` (the Verilog), :data:`MANIFEST_FILE` (what the Verilog is: ports,
layers, the compile's options, and under ``files`` the SHA-256 of every other file of the
build), :data:`REPORT_FILE` (the compile report) and :data:`GRAPH_FILE` (the graph, so the
design can be compiled again). Later commands add their results beside them: :data:`SIM_FILE`,
``synth-<target>.json`` and ``synth-<target>/``, ``board-<board>/``.

Writing (:func:`write_build`) is all or nothing: the files go into a hidden temporary sibling
directory that is renamed into place, so a reader finds the old build whole or the new one
whole. The target must be absent, an empty directory or a zeroskip build, which is then
replaced whole (its results go with it); anything else is refused. A result a command adds
(:func:`write_result`, :func:`replace_directory`) is written aside and renamed into place too,
replacing a symbolic link rather than following it.

The cocotb testbench (:mod:`zeroskip.testbench.build_tb`) lives in the subdirectory
:data:`TESTBENCH_DIR` (``tb/``); its files are listed as ``tb/<name>`` and checked like the
others. Files the manifest does not list (a user's own tests beside the generated ones, the
caches pytest writes) are never read, so they do not fail the check; a build written again
replaces the whole directory, and them with it.

Reading (:func:`open_build`) is one check that every command reading a build shares: the
manifest is bounded (``json_bytes`` of :class:`zeroskip.ir.Limits`) before it is parsed, its
``top`` is a Verilog identifier, every file it names is a plain name inside the directory, or
inside one of its :data:`SUBDIRECTORIES` (no other path separator, no ``..``, not hidden, not a
symbolic link, a regular file; the subdirectory a real directory) and has the SHA-256 the
manifest lists. Files are created with the usual modes (``0666`` less the umask).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import ir
from .errors import ZeroskipError

__all__ = ["BUILD_FORMAT", "Build", "GRAPH_FILE", "MANIFEST_FILE", "REPORT_FILE", "SIM_FILE",
           "SUBDIRECTORIES", "TESTBENCH_DIR", "check_build_file_name", "check_build_target",
           "check_file_name", "check_output_path", "digests", "open_build",
           "read_json", "replace_directory", "scratch_directory", "write_build", "write_file",
           "write_result"]

MANIFEST_FILE, REPORT_FILE, GRAPH_FILE = "manifest.json", "report.txt", "graph.zsg"
SIM_FILE = "sim.json"

#: The subdirectory holding the build's cocotb testbench.
TESTBENCH_DIR = "tb"
#: The subdirectories a build's files may be in (one level, no deeper).
SUBDIRECTORIES = (TESTBENCH_DIR,)

#: ``zeroskip_build`` in a manifest: the version of this layout (1 had no ``files``).
BUILD_FORMAT = 2

#: A file name a manifest may use: letters, digits, ``_``, ``.``, ``-``, not starting with a dot
#: or a dash (no hidden files, no options), at most 255 characters.
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


def _where(path):
    return repr(str(path))


def _os_error(error, what, path):
    """A ZeroskipError for an OSError met while doing ``what`` at ``path``: one line."""
    reason = error.strerror or type(error).__name__
    return ZeroskipError(f"cannot {what} {_where(path)}: {reason}")


def umask():
    """The process's umask (reading it means setting it; it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- writing ---------------------------------------------------------------------------------


def write_file(path, data):
    """Create ``path`` (which must not exist) holding ``data``, with the usual file mode."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    with open(descriptor, "wb") as handle:
        handle.write(data)


def _json_limit(limits):
    return (ir.Limits.from_environment() if limits is None else limits).json_bytes


def scratch_directory(parent, prefix):
    """A fresh hidden directory in ``parent`` with the usual mode (``tempfile.mkdtemp`` makes
    it private, and what is renamed out of it should not be)."""
    try:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        path.chmod(0o777 & ~umask())
    except OSError as error:
        raise _os_error(error, "write in", parent) from None
    return path


def replace_directory(work, target):
    """Rename the finished directory ``work`` to ``target``, replacing what was there (a
    directory whole; a file or a symbolic link itself, never what it points to).

    Readers see the old ``target`` or the new one; if the process dies between the two
    renames, ``target`` is missing and the old one waits in a hidden sibling.
    """
    work, target = Path(work), Path(target)
    old = None
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()
    elif target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
    try:
        os.rename(work, target)
    except BaseException:
        if old is not None:
            os.rename(old / target.name, target)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_result(directory, name, data):
    """Write ``data`` as ``directory/name``, aside first and renamed into place: a reader sees
    the old file or the new one, and a symbolic link there is replaced, not followed."""
    directory = Path(directory)
    target = directory / name
    if target.is_dir() and not target.is_symlink():
        raise ZeroskipError(f"cannot write {_where(target)}: it is a directory")
    aside = None
    try:
        descriptor, aside = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial",
                                             dir=directory)
        with open(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~umask())
            handle.write(data)
        os.replace(aside, target)
    except OSError as error:
        raise _os_error(error, "write", target) from None
    finally:
        if aside is not None and os.path.lexists(aside):
            os.unlink(aside)


def check_output_path(path, option):
    """Refuse an output file path that cannot be written (empty, its directory missing or not
    a directory, a directory itself) before any work is done."""
    text = os.fspath(path)
    if not text:
        raise ZeroskipError(f"{option}: the path is empty")
    path = Path(text)
    if path.is_dir():
        raise ZeroskipError(f"{option}: {_where(path)} is a directory, not a file path")
    if not path.parent.is_dir():
        raise ZeroskipError(f"{option}: directory {_where(path.parent)} does not exist")


def digests(files):
    """``{name: SHA-256 hex}`` of ``files`` (name -> bytes): the manifest's ``files``."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}


def check_build_target(directory, limits=None):
    """The absolute path of ``directory`` if a build may be written there: absent, an empty
    directory or a zeroskip build; a ZeroskipError says why not otherwise."""
    if not os.fspath(directory):
        raise ZeroskipError("the build directory's path is empty")
    directory = Path(os.path.abspath(directory))
    if directory.is_symlink():
        raise ZeroskipError(f"build directory {_where(directory)} is a symbolic link: give the "
                            "directory it points to")
    if not directory.exists():
        existing = next(parent for parent in directory.parents if os.path.lexists(parent))
        if not existing.is_dir():
            raise ZeroskipError(f"cannot write the build directory {_where(directory)}: "
                                f"{_where(existing)} is not a directory")
        return directory
    if not directory.is_dir():
        raise ZeroskipError(f"build directory {_where(directory)} exists and is not a directory")
    try:
        with os.scandir(directory) as entries:
            empty = next(entries, None) is None
    except OSError as error:
        raise _os_error(error, "read", directory) from None
    if empty:
        return directory
    try:
        manifest = read_json(directory / MANIFEST_FILE, limits)
    except ZeroskipError:
        manifest = None
    if not isinstance(manifest, dict) or "zeroskip_build" not in manifest:
        raise ZeroskipError(f"{_where(directory)} exists and is neither empty nor a zeroskip "
                            f"build (no zeroskip {MANIFEST_FILE}): refusing to replace it")
    return directory


def write_build(directory, files, *, limits=None):
    """Write a build directory holding ``files`` (name -> bytes), all or nothing.

    The files are written into a hidden temporary sibling, which then replaces ``directory``
    (see the module doc; missing parent directories are made). Refused, writing nothing:
    an empty path, a symbolic link, a file, a directory that is neither empty nor a zeroskip
    build. Returns the directory's path.
    """
    directory = check_build_target(directory, limits)
    for name in files:
        check_build_file_name(name, "build file")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _os_error(error, "make the directory", directory.parent) from None
    work = scratch_directory(directory.parent, f".{directory.name}.tmp-")
    try:
        for subdirectory in sorted({name.partition("/")[0] for name in files if "/" in name}):
            (work / subdirectory).mkdir()
        for name, data in files.items():
            write_file(work / name, data)
        replace_directory(work, directory)
    except OSError as error:
        raise _os_error(error, "write the build directory", directory) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return directory


# --- reading ---------------------------------------------------------------------------------


def check_file_name(name, what):
    """``name`` if it is a plain file name (see :data:`_FILE_NAME`), else a ZeroskipError."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise ZeroskipError(f"{what} {shown} is not a plain file name (letters, digits, '_', "
                            "'.', '-', not starting with '.' or '-', at most 255 characters)")
    return name


def check_build_file_name(name, what):
    """``name`` if it names a file of a build: a plain file name (:func:`check_file_name`), or
    ``<subdirectory>/<plain file name>`` with a subdirectory of :data:`SUBDIRECTORIES`."""
    if isinstance(name, str) and name.partition("/")[0] in SUBDIRECTORIES:
        check_file_name(name.partition("/")[2], f"{what} {name.partition('/')[0]}/")
        return name
    return check_file_name(name, what)


def _real_subdirectory(directory, name):
    """Refuse ``directory/<subdirectory>`` of a ``name`` that is not a real directory (a
    symbolic link to one would take the build's files from elsewhere)."""
    if "/" not in name:
        return
    path = directory / name.partition("/")[0]
    if not stat.S_ISDIR(_lstat(path, "build subdirectory").st_mode):
        raise ZeroskipError(f"build subdirectory {_where(path)} is not a directory (a "
                            "symbolic link is not: a build's files must be its own)")


def _lstat(path, what):
    """``os.lstat`` of ``path``; a ZeroskipError naming ``what`` if it is missing or
    unreadable."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        raise ZeroskipError(f"{what} {_where(path)} is missing") from None
    except OSError as error:
        raise _os_error(error, "read", path) from None


def _regular_file(path, what):
    """``os.lstat`` of ``path``, which must be a regular file (not a link, not missing)."""
    info = _lstat(path, what)
    if stat.S_ISLNK(info.st_mode):
        raise ZeroskipError(f"{what} {_where(path)} is a symbolic link: a build's files "
                            "must be its own")
    if not stat.S_ISREG(info.st_mode):
        raise ZeroskipError(f"{what} {_where(path)} is not a regular file")
    return info


def read_bounded(path, limit, what):
    """The bytes of the regular file ``path`` (not a symbolic link), refused above ``limit``
    bytes before any is read."""
    size = _regular_file(path, what).st_size
    if size > limit:
        raise ZeroskipError(f"{what} {_where(path)} is {size:,} bytes, above the limit "
                            f"json_bytes={limit:,} (raise it with "
                            f"{ir.LIMITS_VARIABLE}=\"json_bytes=N\")")
    try:
        with open(path, "rb", opener=_no_follow) as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise _os_error(error, "read", path) from None
    if len(data) > limit:
        raise ZeroskipError(f"{what} {_where(path)} grew above the limit json_bytes={limit:,}")
    return data


def _no_follow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW)


def read_json(path, limits=None, what=None):
    """The JSON value in ``path``, bounded (``json_bytes``) before it is read; a ZeroskipError
    names the file if it is missing, a link, too big, not UTF-8 or not JSON."""
    what = what or Path(path).name
    return _parse_json(read_bounded(path, _json_limit(limits), what), path, what)


def _parse_json(data, path, what):
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ZeroskipError(f"{what} {_where(path)} is not UTF-8 text: byte "
                            f"{error.start}") from None
    except (ValueError, RecursionError) as error:
        raise ZeroskipError(f"{what} {_where(path)} is not JSON: "
                            f"{' '.join(str(error).split())}") from None


def _sha256(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb", opener=_no_follow) as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise _os_error(error, "read", path) from None
    return digest.hexdigest()


@dataclass(frozen=True)
class Build:
    """A build directory whose manifest and files passed :func:`open_build`'s checks.

    Attributes
    ----------
    path : pathlib.Path
    manifest : dict
        ``manifest.json`` as parsed.
    digest : str
        SHA-256 of ``manifest.json``'s bytes: names this build (results record it).
    """

    path: Path
    manifest: dict
    digest: str

    @property
    def top(self):
        return self.manifest["top"]

    @property
    def verilog_path(self):
        return self.path / self.manifest["verilog"]

    @property
    def graph_path(self):
        return self.path / self.manifest["graph_file"]

    def read_text(self, name):
        """A file the manifest lists, as text (its hash was checked; it must be UTF-8)."""
        if name not in self.manifest["files"]:
            raise ZeroskipError(f"{MANIFEST_FILE} in {_where(self.path)} lists no {name!r}")
        path = self.path / name
        try:
            with open(path, "rb", opener=_no_follow) as handle:
                return handle.read().decode("utf-8")
        except UnicodeDecodeError as error:
            raise ZeroskipError(f"{_where(path)} is not UTF-8 text: byte "
                                f"{error.start}") from None
        except OSError as error:
            raise _os_error(error, "read", path) from None

    def read_result(self, name, limits=None):
        """A result file a command added (:data:`SIM_FILE`), or None if there is none: JSON
        bounded before it is read, refused if it was written for another build."""
        path = self.path / name
        if not os.path.lexists(path):
            return None
        data = read_json(path, limits)
        if not isinstance(data, dict) or data.get("manifest_sha256") != self.digest:
            raise ZeroskipError(f"{name} {_where(path)} was not written for this build (its "
                                f"manifest_sha256 is not the SHA-256 of {MANIFEST_FILE}): "
                                f"delete it or run the command again")
        return {key: value for key, value in data.items() if key != "manifest_sha256"}

    def write_result(self, name, data):
        """Add a JSON result (a dict) to the build, marked as this build's (see
        :meth:`read_result`); written aside and renamed into place."""
        record = {"manifest_sha256": self.digest, **data}
        write_result(self.path, name, (json.dumps(record, indent=2) + "\n").encode())


def _manifest_fields(manifest, where):
    """Check the fields that name files and the top; a ZeroskipError names the first bad one."""
    if manifest.get("zeroskip_build") != BUILD_FORMAT:
        raise ZeroskipError(f"{where} is of build format {manifest.get('zeroskip_build')!r}, "
                            f"not {BUILD_FORMAT}: run `zeroskip compile` again")
    top = manifest.get("top")
    if not isinstance(top, str) or not _IDENTIFIER.fullmatch(top):
        shown = repr(top) if len(repr(top)) <= 80 else repr(top)[:77] + "..."
        raise ZeroskipError(f"{where}: 'top' {shown} is not a Verilog identifier (a letter or "
                            "'_', then letters, digits or '_', at most 255)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ZeroskipError(f"{where}: 'files' must map each file of the build to its SHA-256")
    for name, digest in files.items():
        check_build_file_name(name, f"{where}: file")
        if name == MANIFEST_FILE:
            raise ZeroskipError(f"{where}: 'files' lists {MANIFEST_FILE} itself")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ZeroskipError(f"{where}: the SHA-256 of {name!r} is not 64 lowercase hex "
                                "digits")
    for key, expected in (("verilog", f"{top}.v"), ("graph_file", GRAPH_FILE)):
        value = manifest.get(key)
        if not isinstance(value, str):
            raise ZeroskipError(f"{where}: {key!r} must be a file name (a string), got "
                                f"{type(value).__name__}")
        check_file_name(value, f"{where}: {key!r}")
        if value != expected or value not in files:
            raise ZeroskipError(f"{where}: {key!r} must be {expected!r} and listed in 'files', "
                                f"got {value!r}")


def open_build(directory, *, limits=None):
    """The :class:`Build` in ``directory``, once its manifest and every file it lists are
    checked (see the module doc). A ZeroskipError names the directory or file and what is
    wrong; nothing is written."""
    if not os.fspath(directory):
        raise ZeroskipError("the build directory's path is empty")
    directory = Path(directory)
    if not directory.is_dir():
        raise ZeroskipError(f"{_where(directory)} is not a zeroskip build directory: it is "
                            "not a directory (make one with `zeroskip compile`)")
    manifest_path = directory / MANIFEST_FILE
    if not os.path.lexists(manifest_path):
        raise ZeroskipError(f"{_where(directory)} is not a zeroskip build directory: it has "
                            f"no {MANIFEST_FILE} (make one with `zeroskip compile`)")
    data = read_bounded(manifest_path, _json_limit(limits), MANIFEST_FILE)
    manifest = _parse_json(data, manifest_path, MANIFEST_FILE)
    where = _where(manifest_path)
    if not isinstance(manifest, dict):
        raise ZeroskipError(f"{where} is not a zeroskip manifest: not a JSON object")
    _manifest_fields(manifest, where)
    for name, expected in manifest["files"].items():
        path = directory / name
        _real_subdirectory(directory, name)
        _regular_file(path, "build file")
        if _sha256(path) != expected:
            raise ZeroskipError(f"{_where(path)} differs from the one {MANIFEST_FILE} was "
                                "written with (its SHA-256 does not match): run `zeroskip "
                                "compile` again")
    return Build(directory, manifest, hashlib.sha256(data).hexdigest())
