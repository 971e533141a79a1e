"""The asset graph: per domain, extract (per system) -> staged -> matched -> golden -> plan ->
writeback, then one report across domains. Assets are thin: they call resources and the engine
and describe what they produced."""
