"""Running a make: the plan, the steps (through doit for full builds), restores from the cache, and
the events the UI renders. The only code that imports doit (engine.py, doit_adapter.py)."""
