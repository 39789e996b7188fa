"""`latentreason demo`, the embedded default job: plan.py (rows and their commands), scheduler.py (rows
run side by side), run.py (`run_demo`: the task, the rows, the evaluation and the report)."""
