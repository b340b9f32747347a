"""The gate: plans, probes, reload and telemetry between the facade and the analysis."""
