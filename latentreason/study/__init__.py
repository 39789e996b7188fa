"""`latentreason study`: the records of finished runs, their statistics, the report and the model cards."""
