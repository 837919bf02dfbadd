"""Where a ``moderncnn tune`` study lives, and what it was made from.

A study is named and kept in a storage (a journal file or a database, :class:`StudyStorage`).
It records, in Optuna's study user attributes, the config its trials train (the base config
with the command line's ``--KEY VALUE``s) and its search space: a worker that would join it
with another config, space or overrides is refused, so that ``best.yaml`` never pairs one
config with a score measured on another. The default study name carries a hash of that
record, so two configs named alike (``cifar10/resnet18.yaml``, ``fashion_mnist/resnet18.yaml``)
make two studies.

A journal file is checked before Optuna opens it: a file that is not a journal (``--storage
notes.yaml``) is refused untouched; a last record cut short by a kill or a full disk during
an append is removed (a later append after it would make the whole journal unreadable).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderncnn.io.errors import ConfigError, DataError, MissingFileError

from .trials import config_differences, describe_differences

if TYPE_CHECKING:
    import optuna

__all__ = [
    "RECORD_ATTR",
    "StudyStorage",
    "check_record",
    "check_study_name",
    "check_trial_folders",
    "default_study_name",
    "load_study",
    "study_record",
]

RECORD_ATTR = "moderncnn_study"  # the study user attribute holding the record
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_RECORD_START = b'{"op_code":'  # how Optuna's JournalFileBackend starts every record


def check_study_name(name: str) -> str:
    """A study name is a folder name under ``OUT/trials/``: a plain name, never a path."""
    if not _PLAIN_NAME.fullmatch(name):
        raise ConfigError(
            f"--study_name {name!r}: give a plain name (letters, digits, '.', '_', '-', at most "
            "100, no '/' or '..'): it names the folder OUT/trials/NAME"
        )
    return name


def study_record(config: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """What a study was made from: the trials' config and the search space, with their hash."""
    record = json.loads(json.dumps({"config": config, "space": space}, default=str))
    text = json.dumps(record, sort_keys=True)
    return {"key": hashlib.sha256(text.encode()).hexdigest(), **record}


def default_study_name(config_path: str | Path, record: dict[str, Any]) -> str:
    """``<config stem>-<8 hex digits of the record's hash>``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(config_path).stem).lstrip("._-")[:80]
    return f"{stem or 'study'}-{record['key'][:8]}"


@dataclass(frozen=True)
class StudyStorage:
    """A journal file (``journal``) or a database URL (``url``); ``text`` names it."""

    text: str
    journal: Path | None = None
    url: str | None = None
    explicit: bool = True  # given as --storage (False: the default OUT/study.journal)

    @classmethod
    def resolve(cls, out: Path, storage: str | None) -> StudyStorage:
        """``--storage`` as given (None: ``OUT/study.journal``); nothing is opened yet."""
        if storage is not None and "://" in storage:
            return cls(text=storage, url=storage)
        path = out / "study.journal" if storage is None else Path(storage)
        return cls(text=str(path), journal=path, explicit=storage is not None)

    def check(self) -> None:
        """A journal file: :func:`check_journal` (a database is checked when opened)."""
        if self.journal is not None:
            check_journal(self.journal, explicit=self.explicit)

    @property
    def is_database(self) -> bool:
        return self.url is not None

    def exists(self) -> bool:
        """Whether opening it may find a study (a journal file not made yet holds none)."""
        return self.journal is None or self.journal.is_file()

    def open(self) -> optuna.storages.BaseStorage:
        """Optuna's storage; a URL it cannot open is one ConfigError naming it."""
        import sqlalchemy.exc
        from optuna.storages import JournalStorage, RDBStorage
        from optuna.storages.journal import JournalFileBackend

        if self.journal is not None:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(self.journal)))
        try:
            return RDBStorage(self.url)
        except (ValueError, ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"--storage {self.url}: {reason}; give a URL Optuna can open "
                "(sqlite:///tune.db, postgresql://user@host/db) or a journal file's path"
            ) from err


def check_journal(path: Path, explicit: bool) -> None:
    """Refuses a file that is not an Optuna journal (left untouched); removes a torn last record.

    Every complete line must be a journal record. Bytes after the last newline are a record
    cut short by a kill or a full disk during an append: removed, under Optuna's own journal
    lock (a worker appending now holds it), with a warning.
    """
    if path.is_dir():
        raise ConfigError(f"--storage {path} is a folder; give a journal file's path in it")
    if not path.exists():
        if explicit and not path.parent.is_dir():
            raise MissingFileError(
                f"--storage {path}: the folder {path.parent} does not exist; make it, or give "
                "another path"
            )
        return
    data = path.read_bytes()
    complete, _, tail = data.rpartition(b"\n")
    lines = complete.split(b"\n") if b"\n" in data else []
    for number, line in enumerate(lines, start=1):
        if not _is_record(line):
            raise DataError(
                f"--storage {path} is not an Optuna journal (line {number} is not a journal "
                "record); it was left as it was: give a new file's path, or the journal tune wrote"
            )
    if tail and not (lines or tail.startswith(_RECORD_START)):
        raise DataError(
            f"--storage {path} is not an Optuna journal (it holds no journal record); it was "
            "left as it was: give a new file's path, or the journal tune wrote"
        )
    if tail:
        _cut_torn_record(path)


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and "op_code" in record


def _cut_torn_record(path: Path) -> None:
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))  # the lock JournalFileBackend appends under
    lock.acquire()
    try:
        with path.open("rb+") as file:
            data = file.read()
            keep = data.rfind(b"\n") + 1
            if keep == len(data):
                return  # a worker finished its record while we waited for the lock
            file.truncate(keep)
    finally:
        lock.release()
    warnings.warn(
        f"{path}: its last record was cut short (a worker killed, or the disk full, while "
        f"writing it): removed those {len(data) - keep} bytes; the records before it are kept",
        stacklevel=2,
    )


def load_study(
    storage: StudyStorage, name: str, **kwargs: Any
) -> tuple[optuna.Study | None, optuna.storages.BaseStorage | None]:
    """The study ``name`` in ``storage`` and the opened storage, or ``(None, None)`` where a
    journal file does not exist yet (nothing is created); ``(None, opened)`` where the
    storage holds no such study. ``kwargs``: ``optuna.load_study``'s sampler and pruner."""
    import optuna

    if not storage.exists():
        return None, None
    opened = storage.open()
    try:
        return optuna.load_study(study_name=name, storage=opened, **kwargs), opened
    except KeyError:
        return None, opened


def check_record(study: optuna.Study, record: dict[str, Any], storage: StudyStorage) -> bool:
    """Refuses to join a study made from another config, search space or ``--KEY VALUE``s.

    Returns whether the study holds the record already (False: a study just made, or one
    without trials, which takes this record).
    """
    stored = study.user_attrs.get(RECORD_ATTR)
    where = f"study {study.study_name!r} in {storage.text}"
    if stored is None and not study.get_trials(deepcopy=False):
        return False
    if not isinstance(stored, dict):
        raise ConfigError(
            f"{where} holds trials but no record of the config they trained (made by "
            "another program or an older moderncnn), so joining it could mix configs; "
            "give another --study"
        )
    if stored.get("key") == record["key"]:
        return True
    differences = config_differences(stored.get("config"), record["config"])
    differences += config_differences({"space": stored.get("space")}, {"space": record["space"]})
    raise ConfigError(
        f"{where} was made from another config, search space or --KEY VALUEs "
        f"({describe_differences(differences)}); run it with the same ones, or give another "
        "--study_name (without it the name follows the config)"
    )


def check_trial_folders(folders: list[Path], numbers: set[int], where: str) -> None:
    """Refuses trial folders that the study does not have: they hold another storage's trials
    (a deleted journal, another ``--storage``), which the next trial numbers would overwrite."""
    for folder in folders:
        match = re.fullmatch(r"trial(\d+)", folder.name)
        if match and int(match[1]) not in numbers:
            raise ConfigError(
                f"{folder} holds a trial that {where} does not have (its journal deleted, or "
                "another --storage?); it is left as it was: give another --out or --study, "
                "or the storage it was made with"
            )
