"""Jobs, schedules, sensors and the one Definitions (pipelines.definitions.defs)."""
