"""From a finished run to deployable files: latency, ONNX export and its checks (``onnx``), and
the export of a run directory (``run_export``), which reads the roles in ``summary.json``."""
