"""The only code that reads a ``Recipe``: the schema (``config``), what it resolves to
(``steps``), the run directory and its lock (``rundir``), preflight, the school a teaching mode
is given (``school``), the pipeline, its summary, and tuning."""
