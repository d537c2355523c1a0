"""The run history in SQLite: `RunStore` (`history`), its tables (`schema`), rows and CSV (`rows`),
where the file lives and what is wrong with it (`files`), and which process owns a run (`owner`)."""
from .files import StoreUnavailableError
from .history import RunNotFoundError, RunRecord, RunStore, default_db_path

__all__ = ["RunNotFoundError", "RunRecord", "RunStore", "StoreUnavailableError", "default_db_path"]
