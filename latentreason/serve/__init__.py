"""`latentreason serve`: an OpenAI-compatible server on the step engine, batching requests continuously."""
