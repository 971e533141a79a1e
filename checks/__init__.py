"""Data contracts (Great Expectations suites), schema-drift checks and the plan gate, and the
Dagster asset checks that report them next to the assets they check."""
