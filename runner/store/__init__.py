"""The results store: DuckDB, append-only, schema by ordered migrations. The only module that writes SQL.

Connections are opened per operation and closed at once, so the file is locked only while a statement
runs; a writer that finds the file locked by another process retries with back-off for up to
``$EMBX_LOCK_TIMEOUT`` seconds. Read-only connections never write: not the schema (an older store is read
through an upgraded temporary copy), not the stale-run sweep, not even a lock file. A run's end that cannot be
written (the store stays locked, or is not writable) is saved to a recovery file beside the store,
``<db>.recovery/<run_id>.json``, which the next connection that writes imports.

The package, bottom up (a module imports only those before it): ``base`` (schema, errors, clock, row helpers),
``writes`` (a run's record and rows, the transaction that ends it), ``recovery`` (ends saved beside the store and
imported later), ``connection`` (opening, locking, creating, migrating), ``liveness`` (the stale-run check),
``runs`` (a run's lifecycle), ``reads`` (runs read back) and ``artifacts`` (studies, saved models, exports, index
evaluations, texts). Callers use the names re-exported here: ``from runner import store; store.get_run(...)``.
"""

from runner.store.artifacts import (  # noqa: F401
    dataset_texts,
    forget_saved_model,
    list_exports,
    load_studies,
    record_export,
    record_index_eval,
    save_study,
    saved_models,
)
from runner.store.base import (  # noqa: F401
    DEFAULT_DB,
    DEFAULT_LOCK_TIMEOUT,
    LOCK_TIMEOUT_ENV,
    MIGRATIONS,
    StoreError,
    StoreLocked,
    StoreMissing,
    default_db,
    lock_timeout,
    now,
)
from runner.store.connection import (  # noqa: F401
    connect,
)
from runner.store.liveness import (  # noqa: F401
    process_alive,
    process_identity,
)
from runner.store.reads import (  # noqa: F401
    experiment_names,
    find_baseline,
    find_ok_run,
    get_run,
    list_runs,
    load_experiment,
    saved_model_of,
)
from runner.store.recovery import (  # noqa: F401
    pending_recoveries,
    recovery_dir,
)
from runner.store.runs import (  # noqa: F401
    end_run,
    finish_run,
    reap_stale,
    start_run,
)
from runner.store.writes import (  # noqa: F401
    RunRecord,
    RunResults,
)
