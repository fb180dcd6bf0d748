"""Task sources: one class per task turns raw rows of any schema into preference triples (see base.py); a task
config names its class by `task.source._target_`."""
